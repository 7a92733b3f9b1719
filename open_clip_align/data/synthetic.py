"""ShapeCrepe's entry point: ``python -m open_clip_align.data.synthetic --out DIR [--preset ci] ...`` (and the
``open-clip-align-synthetic`` console script); ``from open_clip_align.data.synthetic import generate``.

The generator lives in ``open_clip_align.data.shapecrepe``, split by concern; this module re-exports its API.
"""
import sys

from .shapecrepe import *  # noqa: F401,F403
from .shapecrepe.cli import main

if __name__ == "__main__":
    sys.exit(main())
