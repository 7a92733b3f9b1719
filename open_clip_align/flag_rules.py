"""Which open_clip_train flags each loss honours, as data: every accepted flag works or is refused in one line.

open_clip_train accepts ~90 flags. Some mean nothing to a loss or a model of this package (``--siglip`` picks
open_clip's sigmoid loss, which ``--loss negclip`` does not use), some break plugin models (``--torchscript``),
some would silently do something else (``--lock-image-unlocked-groups`` would unfreeze part of ComAlign's frozen
base). ``RULES`` lists every such case; ``refusal(args, defaults)`` returns the first one a run hits, and
``markdown_table()`` renders the README's flag × loss table from the same rows (a test keeps them equal).
"""
import argparse
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

LOSS_COLUMNS = ("clip", "negclip", "degla", "ce-clip", "comalign")
HARDNEG_LOSSES = ("negclip", "degla", "ce-clip")
MAP_STYLE_FORMATS = ("csv", "degla-json", "jsonl", "ceclip-npy")


class FlagRule(NamedTuple):
    """``flags`` are refused for ``losses`` when given (not at their default) and ``scope(args)`` holds."""

    flags: Tuple[str, ...]
    losses: Tuple[str, ...]
    reason: str
    scope: Optional[Callable[[argparse.Namespace], bool]] = None
    scope_label: str = ""  # how the table names the scope, e.g. "plugin models"


def _plugin_model(args) -> bool:
    from .models import plugin_block
    return plugin_block(args.model) is not None


def _map_style_data(args) -> bool:
    return getattr(args, "hardneg_format", "none") in MAP_STYLE_FORMATS or getattr(args, "comalign_data", "none") != "none"


def _plugin_data(args) -> bool:
    return getattr(args, "hardneg_format", "none") != "none" or getattr(args, "comalign_data", "none") != "none"


def _comalign_features(args) -> bool:
    return getattr(args, "comalign_data", "none") == "features"


_LOCKS = ("--lock-image", "--lock-image-unlocked-groups", "--lock-image-freeze-bn-stats", "--lock-text",
          "--lock-text-unlocked-layers", "--lock-text-freeze-layer-norm")
_PREPROCESS = ("--force-image-size", "--image-mean", "--image-std", "--image-interpolation", "--image-resize-mode")

RULES: Sequence[FlagRule] = (
    FlagRule(("--siglip",), HARDNEG_LOSSES + ("comalign",),
             "selects open_clip's sigmoid loss, which only --loss clip uses; this loss is a softmax contrast"),
    FlagRule(("--loss-dist-impl",), HARDNEG_LOSSES + ("comalign",),
             "configures open_clip's SigLIP loss (--loss clip --siglip) only"),
    FlagRule(("--coca-caption-loss-weight", "--coca-contrastive-loss-weight"), HARDNEG_LOSSES + ("comalign",),
             "weights open_clip's CoCa loss (--loss clip on a coca model) only"),
    FlagRule(("--distill-model", "--distill-pretrained"), HARDNEG_LOSSES + ("comalign",),
             "builds open_clip's fixed external teacher for --loss clip only (DeGLA's EMA teacher comes with the "
             "model, e.g. degla-ViT-B-32)"),
    FlagRule(("--horovod",), HARDNEG_LOSSES + ("comalign",),
             "this loss's block-wise gathers are tested with torch.distributed only: launch with torchrun"),
    FlagRule(("--local-loss",), ("ce-clip",), "CE-CLIP's IMC and CMR terms need the gathered global batch"),
    FlagRule(_LOCKS, ("comalign",),
             "the ComAlign base is frozen already (only the head trains); unlocked groups/layers would unfreeze "
             "part of it"),
    FlagRule(("--grad-checkpointing",), ("comalign",),
             "the frozen base runs without gradients and the head is two layers: there is nothing to checkpoint"),
    FlagRule(("--force-patch-dropout",), ("comalign",),
             "the frozen base always runs in eval mode, where patch dropout is off"),
    FlagRule(("--aug-cfg",), ("comalign",), "ComAlign views use the deterministic (validation) transform"),
    FlagRule(_PREPROCESS, ("comalign",), "the store's features were computed with the store's own preprocessing",
             _comalign_features, "--comalign-data features"),
    FlagRule(("--force-custom-text", "--pretrained-image"), LOSS_COLUMNS,
             "plugin models load full weights with --pretrained only", _plugin_model, "plugin models"),
    FlagRule(("--torchscript", "--trace"), LOSS_COLUMNS,
             "plugin models return dicts with optional teacher and component outputs, which TorchScript and "
             "tracing cannot express", _plugin_model, "plugin models"),
    FlagRule(("--use-bnb-linear",), LOSS_COLUMNS,
             "bitsandbytes layers are untested with plugin models (and their EMA teacher)", _plugin_model,
             "plugin models"),
    FlagRule(("--dataset-resampled", "--train-data-upsampling-factors", "--train-num-samples"), LOSS_COLUMNS,
             "map-style data (csv, degla-json, jsonl, ceclip-npy, ComAlign) reads every row once per epoch; "
             "these apply to --hardneg-format wds", _map_style_data, "map-style plugin data"),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def given(args: argparse.Namespace, flag: str, defaults: argparse.Namespace) -> bool:
    """True when ``flag`` differs from its default (that is, the user set it)."""
    dest = _dest(flag)
    return getattr(args, dest, None) != getattr(defaults, dest, None)


def refusal(args: argparse.Namespace, defaults: argparse.Namespace) -> Optional[str]:
    """The one-line message for the first rule this run breaks, or None."""
    for rule in RULES:
        if args.loss not in rule.losses and not (args.loss not in LOSS_COLUMNS and rule.losses == LOSS_COLUMNS):
            continue
        for flag in rule.flags:
            if given(args, flag, defaults) and (rule.scope is None or rule.scope(args)):
                scope = f" with {rule.scope_label}" if rule.scope_label else ""
                return f"{flag} is not supported by --loss {args.loss}{scope}: {rule.reason}"
    return None


def non_finite_floats(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[str]:
    """``--flag value`` for every float flag of ``parser`` whose value in ``args`` is NaN or ±inf."""
    bad = []
    for action in parser._actions:
        if action.type is float and action.option_strings:
            value = getattr(args, action.dest, None)
            if isinstance(value, float) and not math.isfinite(value):
                bad.append(f"{action.option_strings[0]} {value}")
    return bad


def markdown_table() -> str:
    """The README's flag × loss table: ✓ (works) or the scope it is refused in; one row per rule."""
    cells: Dict[Tuple[str, ...], Dict[str, str]] = {}
    reasons: Dict[Tuple[str, ...], str] = {}
    for rule in RULES:
        row = cells.setdefault(rule.flags, {loss: "✓" for loss in LOSS_COLUMNS})
        for loss in rule.losses:
            row[loss] = f"refused ({rule.scope_label})" if rule.scope_label else "refused"
        reasons[rule.flags] = rule.reason
    lines = ["| flag | " + " | ".join(f"`{c}`" for c in LOSS_COLUMNS) + " | why |",
             "|---|" + "---|" * len(LOSS_COLUMNS) + "---|"]
    for flags, row in cells.items():
        name = ", ".join(f"`{f}`" for f in flags)
        lines.append(f"| {name} | " + " | ".join(row[c] for c in LOSS_COLUMNS) + f" | {reasons[flags]} |")
    return "\n".join(lines)
