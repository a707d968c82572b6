"""jaxswap: shared-encoder face swapping in JAX/Flax."""

from jaxswap.errors import JaxswapError

__all__ = ["JaxswapError"]
__version__ = "0.1.0"
