"""The CPU recipe: a df model at 128 px (`quick128`), trained for `steps` (the recommended count).

`liae128`'s loss and augmentation (masked DSSIM + MSE, eyes/mouth x3, Reinhard colour transfer,
a learned mask) plus an edge term (`loss.laplacian`), on the df architecture: one shared
encoder, a decoder per person. At equal steps on a CPU, df moved the swap's identity to A faster
than LIAE did (README "How good, how fast"), and identity is what an hour of two cores is short
of. See that section for what it reaches and how long it takes.
"""

from jaxswap.configs import liae128


def get_config():
  c = liae128.get_config()
  c.model.name = "quick128"
  c.steps = 7000
  c.optimizer.learning_rate = 2e-4
  # The edge (Laplacian L1) term: on pairs 1 and 3 (README) it placed eyes, mouth and nose more
  # exactly (pose error 3.2 -> 2.9 and 3.1 -> 2.4 deg) at ~9 % more time a step.
  c.loss.laplacian = 10.0
  c.checkpoint_every = 500
  c.preview_every = 500
  c.log_every = 50
  return c
