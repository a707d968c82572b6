"""DeepFaceLab SAEHD 'df'-like at 128 px: residual decoders, learned mask, DSSIM + MSE loss."""

from jaxswap.configs import default


def get_config():
  c = default.get_config()
  c.model.name = "sae128"
  c.model.learn_mask = True
  c.image_size = 128
  c.batch_size = 16
  c.optimizer.learning_rate = 5e-5
  c.optimizer.b1 = 0.5
  c.optimizer.b2 = 0.999
  c.optimizer.clip_norm = 1.0
  c.loss.mae = 0.0
  c.loss.dssim = 10.0
  c.loss.mse = 10.0
  c.loss.mask = 10.0
  return c
