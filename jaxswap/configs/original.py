"""The 2017 deepfakes network, exact (faceswap 'Original'): 64 px, ~82.1 M parameters."""

from jaxswap.configs import default


def get_config():
  c = default.get_config()
  c.model.name = "original"
  c.image_size = 64
  c.batch_size = 64
  c.optimizer.learning_rate = 5e-5
  c.optimizer.b1 = 0.5
  c.optimizer.b2 = 0.999
  c.loss.mae = 1.0
  return c
