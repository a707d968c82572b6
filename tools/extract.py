"""`python tools/extract.py ...` = `jaxswap-extract ...` (code: jaxswap/extract.py)."""

import os
import sys

if __package__ in (None, ""):  # run from a checkout without `pip install`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxswap.extract import main  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  sys.exit(main())
