"""DeepFaceLab's default SAEHD (liae-ud, 256 px, ae 256 / e 64 / d 64) for GPUs.

Batch 64 per person on one H100/H200 in bf16; scale --config.batch_size with the device count.
"""

from jaxswap.configs import liae128


def get_config():
  c = liae128.get_config()
  c.model.name = "liae256"
  c.image_size = 256
  c.batch_size = 64
  c.dtype = "bfloat16"
  c.checkpoint_every = 2000
  c.preview_every = 2000
  return c
