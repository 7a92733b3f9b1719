"""The plugin's command-line flags, parsed before open_clip_train's own parser.

Upstream's parser uses ``allow_abbrev=True``, so ``--loss degla`` would silently become
``--loss-dist-impl degla``. Every flag here is consumed first by a parser with
``allow_abbrev=False``; the rest of argv goes to upstream untouched. The flags are the common ones (``--loss``,
``--import``), the shared hard-negative data formats', and each registered method's own (``methods``).
"""
import argparse

from .eval.during_training import add_val_arguments
from .methods import add_method_arguments
from .models.setup import add_model_setup_arguments

HARDNEG_FORMATS = ("none", "csv", "degla-json", "jsonl", "wds", "ceclip-npy")


def add_plugin_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the plugin's flags to ``parser`` (used by the pre-parser and by ``--help``)."""
    g = parser.add_argument_group("open_clip_align: method")
    g.add_argument(
        "--loss", default="clip",
        help="Training method by registered name (open_clip_align.methods.list_methods(); their flags follow under "
             "their own headings). 'clip' is open_clip's own loss selection; 'negclip' adds hard-negative captions.")
    g.add_argument(
        "--import", dest="import_modules", default=None, metavar="MODULE[,MODULE...]",
        help="Import these modules first (a dotted name on sys.path or a .py file), so the methods, model configs "
             "or benchmarks they register are usable by name and their flags appear here. Every torchrun rank "
             "imports them.")

    g = parser.add_argument_group("open_clip_align: hard-negative data")
    g.add_argument(
        "--hardneg-format", default="none", choices=HARDNEG_FORMATS,
        help="Train-data format carrying hard negative captions: 'csv' (CSV/TSV with a list column, "
             "NegCLIP style), 'degla-json' (a JSON array of {image, original, enhanced:[...]}), "
             "'jsonl' (one such object per line), 'wds' (webdataset shards, negatives in a .json member), "
             "'ceclip-npy' (CE-CLIP's directory of pickled .npy lists: 4 typed negatives with a validity mask; "
             "needs --trust-pickled-data). 'none' leaves --train-data to open_clip's own loaders.")
    g.add_argument("--num-hardneg", type=int, default=4, metavar="K",
                   help="Hard negatives per image K; each sample yields texts of shape [1+K, L].")
    g.add_argument(
        "--hardneg-sampling", default=None, choices=("first", "random"),
        help="Which K negatives to use when a row has more: the first K in order, or K drawn at random "
             "per access. Default: random for csv, first otherwise.")
    g.add_argument(
        "--hardneg-fill", default="error", choices=("error", "replace", "pad"),
        help="A row with fewer than K negatives: 'error' stops with the file and row; 'replace' samples "
             "its negatives with replacement; 'pad' fills with empty (all-zero) token rows that losses mask.")
    g.add_argument("--hardneg-image-root", default=None,
                   help="Directory that relative image paths (or ids) in the train data are resolved against.")
    g.add_argument("--hardneg-skip-bad-images", action="store_true", default=False,
                   help="Skip samples whose image is missing or unreadable (for wds also a missing caption or "
                        "negatives field), and log how many were skipped each epoch (default: stop with an error "
                        "naming the file and row).")
    g.add_argument("--csv-hardneg-key", default="neg_caption",
                   help="CSV/TSV column holding the negatives as a list literal, e.g. ['a b', 'c d'].")
    g.add_argument("--csv-hardimg-key", default=None, metavar="COLUMN",
                   help="--loss negclip with csv: column of hard-negative image rows (NegCLIP's neg_image), a list "
                        "literal of 0-based data-row indices such as [12, 7]. Each sample also brings one of these "
                        "rows (drawn per access) with its caption and negatives: the batch has 2B images.")
    g.add_argument("--csv-img-root", default=None, metavar="NEW|OLD=NEW",
                   help="csv: rebase absolute image paths written on another machine (NegCLIP's TSV). NEW replaces "
                        "the longest directory all absolute paths share (e.g. /their/coco of .../coco/train2014/... "
                        "and .../coco/val2014/...); OLD=NEW replaces the prefix OLD, and a path outside it is an "
                        "error. Relative paths are left to --hardneg-image-root.")
    g.add_argument("--trust-pickled-data", action="store_true", default=False,
                   help="ceclip-npy: allow unpickling the .npy files. Unpickling can run code stored in the file: "
                        "pass this only for files from a source you trust.")
    g.add_argument("--npy-image-template", default=None,
                   help="ceclip-npy: format string turning an entry's image_id into a path under "
                        "--hardneg-image-root (default: the --train-data directory); default "
                        "'train2014/COCO_train2014_{:012d}.jpg', as CE-CLIP's loader.")
    g.add_argument("--json-image-key", default="image",
                   help="JSON/JSONL field with the image path or id (DeGLA's release uses image_id).")
    g.add_argument("--json-caption-key", default="original", help="JSON/JSONL/wds field with the positive caption.")
    g.add_argument("--json-hardneg-key", default="enhanced",
                   help="JSON/JSONL field (and field of the webdataset .json member) with the list of negatives.")
    g.add_argument(
        "--json-image-template", default="{}",
        help="degla-json/jsonl: format string turning the image field into a path under --hardneg-image-root; "
             "e.g. 'train2014/COCO_train2014_{:012d}.jpg' for DeGLA's integer COCO ids.")

    add_model_setup_arguments(parser)  # LoRA, the sigmoid form (models/setup.py)
    add_method_arguments(parser)
    add_val_arguments(parser)  # --val-benchmark, --save-best (eval/during_training.py)
    return parser


def build_preparser() -> argparse.ArgumentParser:
    """Parser for the plugin's flags only: no abbreviations, no help, leaves other flags alone."""
    return add_plugin_args(argparse.ArgumentParser(allow_abbrev=False, add_help=False))

