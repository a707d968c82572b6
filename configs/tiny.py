"""`--config configs/tiny.py`: the packaged `jaxswap.configs.tiny` (edit that file, not this one)."""

from jaxswap.configs.tiny import get_config  # noqa: F401
