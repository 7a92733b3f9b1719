"""ShapeCrepe: a synthetic compositional benchmark of coloured shapes, rendered with PIL in seconds.

Each image shows two objects (shape, colour, size) in a spatial relation (left of, right of, above, below),
with distinct shapes and distinct colours, jittered geometry, colour noise and a grainy background. Captions
are closed-world: they mention every object, and a size word exactly when the size is not medium. Everything
is deterministic given --seed. Held-out (colour, shape) combinations never occur in any training or
pretraining image or caption, negatives included.

Usage:
  python -m open_clip_align.data.synthetic --out DIR [--preset ci] [--seed 0] [--overwrite] ...

Outputs under DIR (every path written inside a file is relative to that file's directory):
  images/train/*.png        training images
  train.csv                 TAB-separated: filepath, title (positive caption), neg_caption (a Python list
                            literal of K hard negatives, each verified false), neg_types (their types among
                            swap_att, swap_obj, replace_att, replace_obj, replace_rel)
  train_degla.json          the same rows as DeGLA JSON:
                            [{"image", "image_id", "original", "enhanced", "types"}, ...]
  train-wds/shard-*.tar     the same rows as webdataset shards: KEY.png, KEY.txt (the positive caption),
                            KEY.json ({"original", "enhanced", "types"}); sizes.json gives the shard sizes
  pretrain.csv              TAB-separated: filepath, title = the words of a caption in random order, so a
                            model learns which attributes are present but not which object has which.
                            Row i reuses training image i mod train-size (rendering and creating files
                            dominate the run time), with a template and word order of its own
  sugarcrepe/{iid,heldout}/ SugarCrepe format: <subset>.json for replace_obj, replace_att, replace_rel,
                            swap_obj, swap_att, add_obj, add_att ({"0": {"filename", "caption",
                            "negative_caption"}, ...}) and val2017/<filename>. Counterbalanced: items 2k and
                            2k+1 are a pair of scenes whose captions trade places, so every negative is
                            another item's positive and any text-only scorer gets exactly 50%. The iid split
                            avoids held-out combinations; in heldout the first scene of each pair has one.
  winoground/{iid,heldout}/pairs.jsonl   the same pairs as 2x2 items: {"image_0", "image_1", "caption_0",
                            "caption_1", "tags": [subset]}, caption_i true of image_i only
  scenes.jsonl              the scene graph of every image: {"image", "set", "seed", "objects": [{"shape",
                            "colour", "size", "center", "radius", "rotation", "bbox"}], "relation"}
                            (relation of object 0 to object 1; image y grows downwards)
  zeroshot/{iid,heldout}/   zero-shot classification over the colour x shape classes, as an ImageFolder that
                            open_clip_align.eval.zeroshot reads: test/<colour>_<shape>/<n>.png, each image ONE
                            object of that colour and shape (random size and position), so it measures
                            recognition, not binding; classnames.txt ("red circle", one per line in sorted
                            folder order); zeroshot_classification_templates.txt ("a photo of a {c}.", ...);
                            scenes.jsonl (their scene graphs, relation null). Like the SugarCrepe splits,
                            heldout has the held-out combinations as classes and iid all the others.
                            --zeroshot-per-class images per class; 0 writes no zeroshot/ at all
  manifest.json             written last: version, options, counts, held-out combinations, colour RGBs

Notes:
  - Training rows use only scenes whose colour swap names no held-out pair either, so that every row can
    have its swap_att negative without leaking one.
  - Swap test pairs are kept only when bag-identical: "an orange star ... a small gray cross" swaps to
    "a gray star ... a small orange cross", which loses "an".
  - Python API: generate(out_dir, **options) returns the manifest; Scene.from_dict reads a scenes.jsonl line,
    parse_caption / caption_is_true / describe work on structured captions, render redraws an image,
    zeroshot_classes lists the class folders of a zero-shot split.
"""
import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ...cli_checks import non_finite_flags, output_problem, range_problem, range_problems
from ...errors import UsageError, run_cli
from .build import generate
from .captions import TEMPLATES, TRAIN_NEG_TYPES
from .config import PRESETS, Config
from .scenes import COLOURS, SHAPES

PROG = "python -m open_clip_align.data.synthetic"


def _parser() -> argparse.ArgumentParser:
    default, ci = Config(), PRESETS["ci"]

    def note(name):
        return f"(default {getattr(default, name)}" + (f"; ci preset {ci[name]})" if name in ci else ")")

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="ci: tiny (32 px, 50 items per subset, a few hundred training rows, 4 zero-shot "
                             "images per class)")
    parser.add_argument("--seed", type=int, help=f"fixes everything {note('seed')}")
    parser.add_argument("--image-size", type=int, help=f"image side in pixels {note('image_size')}")
    parser.add_argument("--train-size", type=int, help=f"training rows {note('train_size')}")
    parser.add_argument("--pretrain-size", type=int, help=f"bag-of-words pretraining rows {note('pretrain_size')}")
    parser.add_argument("--test-pairs", type=int,
                        help=f"counterbalanced pairs (2 items each) per subset and split {note('test_pairs')}")
    parser.add_argument("--zeroshot-per-class", type=int,
                        help=f"images per colour-shape class of the zero-shot sets zeroshot/<split>; 0: none "
                             f"{note('zeroshot_per_class')}")
    parser.add_argument("--num-negatives", type=int, help=f"hard negatives per training row {note('num_negatives')}")
    parser.add_argument("--shard-size", type=int, help=f"samples per webdataset shard {note('shard_size')}")
    parser.add_argument("--heldout-fraction", type=float,
                        help="share of (colour, shape) pairs kept out of training (default 1/6)")
    parser.add_argument("--train-neg-types", nargs="+", choices=TRAIN_NEG_TYPES, metavar="TYPE",
                        help=f"negative types for training rows, from {', '.join(TRAIN_NEG_TYPES)} (default: all)")
    parser.add_argument("--train-templates", nargs="+", choices=tuple(TEMPLATES), metavar="TEMPLATE",
                        help=f"caption templates of training and pretraining captions, from {', '.join(TEMPLATES)} "
                             "(default: all)")
    parser.add_argument("--test-templates", nargs="+", choices=tuple(TEMPLATES), metavar="TEMPLATE",
                        help="caption templates of the test sets (default: all)")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, metavar="SHAPE",
                        help=f"shape vocabulary, from {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--colours", nargs="+", choices=tuple(COLOURS), metavar="COLOUR",
                        help=f"colour vocabulary, from {', '.join(COLOURS)} (default: all)")
    parser.add_argument("--workers", type=int, help="worker processes (default: up to 4 CPUs); the output is the same")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


_FLAG_MINIMUMS = {"image_size": 16, "train_size": 0, "pretrain_size": 0, "test_pairs": 0, "zeroshot_per_class": 0,
                  "num_negatives": 0, "shard_size": 1, "workers": 1}


def _flag_problem(namespace: argparse.Namespace) -> Optional[str]:
    """One line naming the first flag whose value cannot make a dataset (before anything is written)."""
    problem = (non_finite_flags(namespace) or range_problems(namespace, _FLAG_MINIMUMS)
               or range_problem("--heldout-fraction", namespace.heldout_fraction, 0, 0.5)
               or output_problem(namespace.out, "--out", directory=True))
    if problem:
        return problem
    preset = {**asdict(Config()), **PRESETS[namespace.preset]}
    train, pretrain = (preset[k] if getattr(namespace, k) is None else getattr(namespace, k)
                       for k in ("train_size", "pretrain_size"))
    if train == 0 and pretrain > 0:
        default = f" (the {namespace.preset} preset's)" if namespace.pretrain_size is None else ""
        return (f"--train-size 0 with --pretrain-size {pretrain}{default}: pretraining rows reuse the training "
                f"images; give --train-size of at least 1, or --pretrain-size 0 for a test-only dataset")
    return None


def _generate(argv) -> None:
    namespace = _parser().parse_args(argv)
    problem = _flag_problem(namespace)
    if problem:
        raise UsageError(problem)
    args = vars(namespace)
    out, overwrite, workers, quiet = (args.pop(k) for k in ("out", "overwrite", "workers", "quiet"))
    start = time.perf_counter()
    manifest = generate(out, overwrite=overwrite, workers=workers, progress=not quiet, **args)
    counts = manifest["counts"]
    print(f"ShapeCrepe: {counts['images']} images ({counts['train']} train, {counts['images'] - counts['train']} "
          f"test), {counts['pretrain']} pretraining rows, {sum(counts['zeroshot_images'].values())} zero-shot "
          f"images, written to {out} "
          f"in {time.perf_counter() - start:.1f} s")


def main(argv=None) -> int:
    """Command line; bad flags, an existing dataset without --overwrite, options that cannot make a dataset and
    the disk's refusals are one line and exit status 2."""
    return run_cli(lambda: _generate(argv), PROG, also=(OSError,),
                   interrupted="--out is unfinished (no manifest.json); rerun with --overwrite")
