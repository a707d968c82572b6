"""`--config configs/sae128.py`: the packaged `jaxswap.configs.sae128` (edit that file, not this one)."""

from jaxswap.configs.sae128 import get_config  # noqa: F401
