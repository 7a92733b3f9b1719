"""ShapeCrepe: a synthetic compositional benchmark of coloured shapes, rendered with PIL in seconds.

Each image shows two objects (shape, colour, size) in a spatial relation; captions are closed-world, so the
truth of every caption and negative is checked against the scene graph. ``python -m
open_clip_align.data.synthetic --help`` documents every output file (``cli.py``). By concern:

* ``scenes``: the vocabulary, objects and scenes, relations, placement, the edits of test pairs;
* ``captions``: templates, structured captions, truth, parsing, the negatives of training rows;
* ``render``: drawing a scene;
* ``config``: the options, presets and held-out (colour, shape) pairs;
* ``plan``: training rows, test pairs and zero-shot images in seeded work units, run by worker processes;
* ``writers``: the output folder and files (training files through ``data/formats.py``);
* ``build``: ``generate``, the whole dataset and its manifest; ``cli``: the command line.
"""
from ...eval.sugarcrepe import SUBSETS
from .build import generate
from .captions import (TEMPLATES, TRAIN_NEG_TYPES, Caption, caption_is_true, caption_words, describe,
                       parse_caption)
from .cli import main
from .config import PRESETS, SPLITS, VERSION, Config, OptionError, choose_heldout, make_config
from .plan import zeroshot_classes, zeroshot_split
from .render import COLOUR_JITTER, render
from .scenes import COLOURS, RADIUS, RADIUS_JITTER, RELATIONS, SHAPES, SIZES, Obj, Phrase, Scene, relation
from .writers import ZEROSHOT_TEMPLATES

__all__ = [
    "COLOURS", "COLOUR_JITTER", "Caption", "Config", "Obj", "OptionError", "PRESETS", "Phrase", "RADIUS",
    "RADIUS_JITTER", "RELATIONS", "SHAPES", "SIZES", "SPLITS", "SUBSETS", "Scene", "TEMPLATES", "TRAIN_NEG_TYPES",
    "VERSION", "ZEROSHOT_TEMPLATES", "caption_is_true", "caption_words", "choose_heldout", "describe", "generate",
    "main", "make_config", "parse_caption", "relation", "render", "zeroshot_classes", "zeroshot_split",
]
