"""Which open_clip_train flags a training method honours, as data: every accepted flag works or is refused in
one line.

open_clip_train accepts ~90 flags. Some mean nothing to a method of this package (``--siglip`` picks open_clip's
sigmoid loss, which ``--loss negclip`` does not use), some break plugin models (``--torchscript``), some would
silently do something else (``--lock-image-unlocked-groups`` would unfreeze part of ComAlign's frozen base).
Each method lists its own refusals (``Method.refused_flags``); ``GENERIC_RULES`` hold those of plugin and adapted
models (hard-negative encoding, LoRA) and plugin data, whatever the method. ``refusal`` returns the first rule a run breaks; ``markdown_table`` renders the
README's flag × method table from the same rules (a test keeps them equal).
"""
import argparse
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

MAP_STYLE_FORMATS = ("csv", "degla-json", "jsonl", "ceclip-npy")


class FlagRule(NamedTuple):
    """``flags`` are refused when given (not at their default) and ``scope(args)`` holds (always, if None)."""

    flags: Tuple[str, ...]
    reason: str
    scope: Optional[Callable[[argparse.Namespace], bool]] = None
    scope_label: str = ""  # how the table names the scope, e.g. "plugin models"


def _plugin_model(args) -> bool:
    from .models import plugin_block
    return plugin_block(args.model) is not None


def _adapted_model(args) -> bool:
    """A plugin alias, or a model the run adapts: hard-negative encoding (any family) or LoRA parametrizations."""
    hardneg = getattr(args, "hardneg_format", "none") != "none"  # every hard-negative method needs one
    return _plugin_model(args) or hardneg or bool(getattr(args, "lora_r", 0))


def _map_style_data(args) -> bool:
    return getattr(args, "hardneg_format", "none") in MAP_STYLE_FORMATS


GENERIC_RULES: Sequence[FlagRule] = (
    FlagRule(("--force-custom-text", "--pretrained-image"), "plugin models load full weights with --pretrained only",
             _plugin_model, "plugin models"),
    FlagRule(("--torchscript", "--trace"),
             "adapted models return dicts with optional negative, teacher and component outputs and may hold LoRA "
             "parametrizations, which TorchScript and tracing cannot express", _adapted_model, "adapted models"),
    FlagRule(("--use-bnb-linear",), "bitsandbytes layers are untested with adapted models (hard negatives, their EMA "
                                    "teacher, LoRA)", _adapted_model, "adapted models"),
    FlagRule(("--dataset-resampled", "--train-data-upsampling-factors", "--train-num-samples"),
             "map-style hard-negative data (csv, degla-json, jsonl, ceclip-npy) reads every row once per epoch; "
             "these apply to --hardneg-format wds", _map_style_data, "map-style hard-negative data"),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def given(args: argparse.Namespace, flag: str, defaults: argparse.Namespace) -> bool:
    """True when ``flag`` differs from its default (that is, the user set it)."""
    dest = _dest(flag)
    return getattr(args, dest, None) != getattr(defaults, dest, None)


def refusal(args: argparse.Namespace, defaults: argparse.Namespace, method) -> Optional[str]:
    """The one-line message for the first rule of ``method`` (or a generic one) this run breaks, or None."""
    for rule in (*method.refused_flags, *GENERIC_RULES):
        for flag in rule.flags:
            if given(args, flag, defaults) and (rule.scope is None or rule.scope(args)):
                scope = f" with {rule.scope_label}" if rule.scope_label else ""
                return f"{flag} is not supported by --loss {method.name}{scope}: {rule.reason}"
    return None


def markdown_table(methods: Sequence) -> str:
    """The README's flag × method table: ✓ (open_clip_train's behaviour) or where it is refused; one row per
    group of flags, with the reason a method gives (the first, when several refuse it)."""
    rows: Dict[Tuple[str, ...], Dict[str, str]] = {}
    reasons: Dict[Tuple[str, ...], List[str]] = {}
    for method in methods:
        for rule in (*method.refused_flags, *GENERIC_RULES):
            row = rows.setdefault(rule.flags, {})
            row.setdefault(method.name, f"refused ({rule.scope_label})" if rule.scope_label else "refused")
            if rule.reason not in reasons.setdefault(rule.flags, []):
                reasons[rule.flags].append(rule.reason)
    names = [m.name for m in methods]
    lines = ["| flag | " + " | ".join(f"`{n}`" for n in names) + " | why |",
             "|---|" + "---|" * len(names) + "---|"]
    for flags, row in rows.items():
        cells = " | ".join(row.get(n, "✓") for n in names)
        lines.append(f"| {', '.join(f'`{f}`' for f in flags)} | {cells} | {'; '.join(reasons[flags])} |")
    return "\n".join(lines)
