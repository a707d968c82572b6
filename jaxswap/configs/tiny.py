"""A small 64 px network for CPU tests and the demo: trains visibly in minutes on 2 cores."""

from jaxswap.configs import default


def get_config():
  c = default.get_config()
  c.model.name = "tiny"
  c.image_size = 64
  c.batch_size = 16
  c.steps = 2000
  c.optimizer.learning_rate = 5e-4
  c.optimizer.b1 = 0.9
  c.loss.mae = 1.0
  c.loss.dssim = 1.0
  c.augment.warp_sigma = 3.0 / 256.0
  c.checkpoint_every = 500
  c.log_every = 25
  c.preview_every = 500
  return c
