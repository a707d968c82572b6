"""faceswap 'Lightweight': the Original network with a narrower encoder and decoders."""

from jaxswap.configs import default


def get_config():
  c = default.get_config()
  c.model.name = "lightweight"
  c.image_size = 64
  return c
