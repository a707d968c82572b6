"""`--config configs/original.py`: the packaged `jaxswap.configs.original` (edit that file, not this one)."""

from jaxswap.configs.original import get_config  # noqa: F401
