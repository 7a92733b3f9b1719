"""``python -m open_clip_align.eval`` (see ``cli.py``)."""
from .cli import main

if __name__ == "__main__":
    main()
