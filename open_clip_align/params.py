"""The plugin's command-line flags, parsed before open_clip_train's own parser.

Upstream's parser uses ``allow_abbrev=True``, so ``--loss degla`` would silently become
``--loss-dist-impl degla``. Every flag here is consumed first by a parser with
``allow_abbrev=False``; the rest of argv goes to upstream untouched.
"""
import argparse

HARDNEG_FORMATS = ("none", "csv", "degla-json", "jsonl", "wds", "ceclip-npy")
COMALIGN_DATA = ("none", "features", "images")


def add_plugin_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the plugin's flags to ``parser`` (used by the pre-parser and by ``--help``)."""
    g = parser.add_argument_group("open_clip_align: loss")
    g.add_argument(
        "--loss", default="clip",
        help="Training loss by registered name (see open_clip_align.losses.list_losses()). "
             "'clip' is open_clip's own loss selection; 'negclip' adds hard-negative captions.")

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
    g.add_argument("--ceclip-image-template", default=None,
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

    g = parser.add_argument_group("open_clip_align: DeGLA (--loss degla; needs a model with an EMA teacher)")
    g.add_argument("--degla-igc-weight", type=float, default=0.1,
                   help="λ_I: Image-Grounded Contrast (each image vs its positive and its own K negatives).")
    g.add_argument("--degla-tgc-weight", type=float, default=0.1,
                   help="λ_T: Text-Grounded Contrast (each positive vs the teacher's copy and its K negatives).")
    g.add_argument("--degla-distill-weight", type=float, default=0.005,
                   help="λ_D: squared distance to the EMA teacher's embeddings. With the default 'sum' reduction "
                        "the term grows with the global batch N: keep λ_D·N constant (0.005 at N = 256).")
    g.add_argument("--degla-tgc-scale", type=float, default=10.0, help="Fixed logit scale τ of the TGC term.")
    g.add_argument("--degla-tgc-mode", default="fixed", choices=("fixed", "reference"),
                   help="'fixed': each text against its own negatives; 'reference': the released code's tiling "
                        "mask (row i sees negatives k·N + i), for parity with released checkpoints.")
    g.add_argument("--degla-distill-reduction", default="sum", choices=("sum", "mean"),
                   help="'sum' over all embedding vectors (the paper's) or 'mean' (sum / number of vectors).")
    g.add_argument("--degla-distill-negatives", default=True, action=argparse.BooleanOptionalAction,
                   help="Distil the negative captions' embeddings too (the paper's default).")
    g.add_argument("--ema-decay", type=float, default=0.9996,
                   help="EMA teacher decay α, applied once per optimizer step: θ_T ← α·θ_T + (1−α)·θ_S. "
                        "1.0 keeps the teacher frozen at the starting weights.")

    g = parser.add_argument_group("open_clip_align: CE-CLIP (--loss ce-clip)")
    g.add_argument("--ceclip-imc-weight", type=float, default=0.3,
                   help="λ_imc: intra-modal contrast (positive text vs the batch's negative texts); "
                        "CE-CLIP's own recipe 0.3, DeGLA's comparison recipe 0.2.")
    g.add_argument("--ceclip-cmr-weight", type=float, default=0.2,
                   help="λ_cmr: cross-modal rank loss with per-type margins; CE-CLIP's own 0.2, DeGLA's 0.4.")
    g.add_argument("--ceclip-imc-mode", default="paper", choices=("paper", "reference"),
                   help="'paper': the image-text match is column 0 and must beat the text-negative similarities; "
                        "'reference': the released code's target 0 = the batch's first negative (a label bug).")
    g.add_argument("--ceclip-threshold-type", default="mean", choices=("mean", "max", "fixed"),
                   help="CMR margin per negative slot k: 'mean' = batch mean positive logit − mean logit of slot k; "
                        "'max' = max over valid pairs of (positive − slot-k logit) / 5 (the released code's); "
                        "'fixed' = --ceclip-fixed-threshold. Adaptive margins are detached.")
    g.add_argument("--ceclip-threshold-from", default="current", choices=("current", "previous"),
                   help="Adaptive margins from this batch ('current'), or from the previous batch, starting at 0 "
                        "each epoch ('previous', the released training loop).")
    g.add_argument("--ceclip-cmr-average", default="valid", choices=("valid", "all"),
                   help="CMR's mean over the valid (image, negative) pairs ('valid'), or over all N·K pairs with "
                        "invalid ones counting 0 ('all', the released code's).")
    g.add_argument("--ceclip-fixed-threshold", type=float, default=10.0, help="CMR margin for 'fixed' thresholds.")
    g.add_argument("--ceclip-upper-bound", type=float, default=10.0,
                   help="Adaptive CMR margins are clamped to [0, this].")

    g = parser.add_argument_group(
        "open_clip_align: ComAlign (--loss comalign; a comalign-* model: frozen CLIP, only the head trains)")
    g.add_argument(
        "--comalign-data", default="none", choices=COMALIGN_DATA,
        help="'features': --train-data is a component store (.h5) written by python -m "
             "open_clip_align.comalign.embed (fast: no image is decoded); 'images': --train-data is a caption "
             "file (COCO captions JSON, Karpathy JSON or CSV/TSV) and views are rendered from boxes per step.")
    g.add_argument("--comalign-annotation-format", default="auto", choices=("auto", "coco", "karpathy", "csv"),
                   help="'images': format of --train-data (auto: by extension and content). CSV/TSV columns come "
                        "from --csv-img-key/--csv-caption-key/--csv-separator.")
    g.add_argument("--comalign-image-root", default=None,
                   help="'images': folder relative image paths resolve against (default: the caption file's).")
    g.add_argument("--comalign-boxes", default="grid", choices=("gt", "segment", "grid", "torchvision", "ultralytics"),
                   help="'images': region proposer. gt = ShapeCrepe scene graphs (--comalign-scenes), segment = "
                        "felzenszwalb regions, grid = 3x3 grid + centre box (no weights), torchvision/ultralytics = "
                        "a detector from local weights (--comalign-detector-weights).")
    g.add_argument("--comalign-scenes", default=None, help="scenes.jsonl with ground-truth boxes (--comalign-boxes gt).")
    g.add_argument("--comalign-detector-weights", default=None,
                   help="Local detector weights for --comalign-boxes torchvision|ultralytics (never downloaded).")
    g.add_argument("--comalign-render", default="grey", choices=("grey", "crop"),
                   help="How a view shows its box: the whole image greyed outside it (the paper's figure), or a crop.")
    g.add_argument("--comalign-letterbox", action="store_true", default=False,
                   help="Pad images to a square before rendering views, so centre-cropping cannot cut boxes.")
    g.add_argument("--comalign-max-captions", type=int, default=5,
                   help="Captions kept per image; one of them is drawn per image per epoch.")
    g.add_argument("--comalign-head", default=None,
                   help="Start the head from this checkpoint (the released ComAlign-CLIP-VIT-B32.pt or ours).")
    g.add_argument("--comalign-temperature", type=float, default=0.07,
                   help="τ: every contrastive term divides its scores by τ.")
    g.add_argument("--comalign-entity-weight", type=float, default=1.0, help="λ_e: the entity max-mean term.")
    g.add_argument("--comalign-relation-weight", type=float, default=1.0, help="λ_r: the relation max-mean term.")
    g.add_argument("--comalign-global-weight", type=float, default=1.0,
                   help="λ_g: CLIP loss between the refined global token and the caption embedding.")
    g.add_argument("--comalign-padding", default="masked", choices=("masked", "reference"),
                   help="'masked': max and mean over real components only; 'reference': zero pads stay in the "
                        "means (the released scorer's semantics, an ablation for training).")
    g.add_argument("--comalign-smooth-max", type=float, default=0.0, metavar="TAU_M",
                   help="Replace the hard max by TAU_M*logsumexp(x/TAU_M) (e.g. 0.05); 0 keeps the hard max.")
    return parser


def build_preparser() -> argparse.ArgumentParser:
    """Parser for the plugin's flags only: no abbreviations, no help, leaves other flags alone."""
    return add_plugin_args(argparse.ArgumentParser(allow_abbrev=False, add_help=False))
