"""`--config configs/liae256.py`: the packaged `jaxswap.configs.liae256` (edit that file, not this one)."""

from jaxswap.configs.liae256 import get_config  # noqa: F401
