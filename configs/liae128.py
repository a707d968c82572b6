"""`--config configs/liae128.py`: the packaged `jaxswap.configs.liae128` (edit that file, not this one)."""

from jaxswap.configs.liae128 import get_config  # noqa: F401
