"""DeepFaceLab SAEHD "liae" at 128 px, sized for a CPU: half-resolution decoder + depth-to-space.

SAEHD's loss below 256 px as in `sae128` (10 DSSIM + 10 MSE, a learned mask at 10 MSE), here on
the masked face with eyes and mouth weighted up, and Reinhard colour transfer of A toward B
(ct_mode rct).
"""

from jaxswap.configs import sae128


def get_config():
  c = sae128.get_config()
  c.model.name = "liae128"
  c.batch_size = 8
  c.optimizer.b1 = 0.9
  c.loss.masked = True
  c.loss.eye_mouth_weight = 3.0
  c.augment.color_transfer = "rct"
  return c
