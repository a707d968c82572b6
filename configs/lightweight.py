"""`--config configs/lightweight.py`: the packaged `jaxswap.configs.lightweight` (edit that file, not this one)."""

from jaxswap.configs.lightweight import get_config  # noqa: F401
