"""`--config configs/default.py`: the packaged `jaxswap.configs.default` (edit that file, not this one)."""

from jaxswap.configs.default import get_config  # noqa: F401
