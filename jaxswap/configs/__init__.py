"""Model variants: `default` plus one file per variant, each `get_config()` -> ConfigDict.

Packaged, so `jaxswap.configs.tiny` works after a plain `pip install`; the repository's root
`configs/NAME.py` files re-export these for `--config configs/NAME.py`.
"""
