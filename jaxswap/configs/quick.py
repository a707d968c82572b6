"""The CPU recipe: LIAE at 128 px, trained for `steps` (the recommended count) on 2 cores.

See README "How good, how fast" for what it reaches and how long it takes.
"""

from jaxswap.configs import liae128


def get_config():
  c = liae128.get_config()
  c.steps = 3000
  c.optimizer.learning_rate = 2e-4
  c.checkpoint_every = 500
  c.preview_every = 500
  c.log_every = 50
  return c
