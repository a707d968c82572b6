"""`--config configs/quick.py`: the packaged `jaxswap.configs.quick` (edit that file, not this one)."""

from jaxswap.configs.quick import get_config  # noqa: F401
