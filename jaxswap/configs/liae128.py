"""DeepFaceLab SAEHD "liae" at 128 px, sized for a CPU: half-resolution decoder + depth-to-space.

Loss as SAEHD below 256 px: 10 DSSIM + 10 MSE on the masked face, eyes and mouth weighted up,
a learned mask (10 MSE); Reinhard colour transfer of A toward B (ct_mode rct).
"""

from jaxswap.configs import default


def get_config():
  c = default.get_config()
  c.model.name = "liae128"
  c.model.learn_mask = True
  c.image_size = 128
  c.batch_size = 8
  c.optimizer.learning_rate = 5e-5
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.clip_norm = 1.0
  c.loss.mae = 0.0
  c.loss.dssim = 10.0
  c.loss.mse = 10.0
  c.loss.mask = 10.0
  c.loss.masked = True
  c.loss.eye_mouth_weight = 3.0
  c.augment.color_transfer = "rct"
  return c
