"""Every patch this package makes to open_clip and open_clip_train lives here.

Two seams:

* ``install()`` — at ``import open_clip_align``: registers ``model_configs/`` with open_clip and wraps
  ``create_model`` (both ``open_clip.create_model`` and ``open_clip.factory.create_model``) so configs with an
  ``open_clip_align`` block build plugin classes; every other name reaches the original untouched.
* ``training_hooks()`` — for the duration of one ``open_clip_train.main.main`` call: our argument pre-parser,
  loss dispatch, hard-negative and ComAlign data, model set-up for the chosen loss (including the EMA teacher's optimizer
  step post-hook, removed afterwards), and a DDP that accepts CPU modules.
"""
import argparse
import contextlib
import functools
import logging
import math
import os
from pathlib import Path

import open_clip
import open_clip.factory as oc_factory
import torch

from . import flag_rules, losses
from .models import ComAlignCLIP, HardNegCLIP, create_plugin_model, ema, load_comalign_head, plugin_block
from .models.activation import needs_quickgelu, quickgelu_advice
from .models.factory import pretrained_problem, unreadable_checkpoint
from .params import add_plugin_args, build_preparser

CONFIG_DIR = Path(__file__).parent / "model_configs"
_WRAPPED = "_open_clip_align_wrapped"


class PluginUsageError(ValueError):
    """A flag combination the plugin cannot run; the message says which flags and what to do."""


def _wrap_create_model(original):
    @functools.wraps(original)
    def create_model(model_name, *args, **kwargs):
        if plugin_block(model_name) is not None:
            return create_plugin_model(model_name, *args, **kwargs)
        return original(model_name, *args, **kwargs)

    setattr(create_model, _WRAPPED, original)
    return create_model


def install() -> None:
    """Register configs and wrap ``create_model``; safe to call more than once."""
    if str(CONFIG_DIR) not in [str(p) for p in oc_factory._MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(CONFIG_DIR)
    if not hasattr(oc_factory.create_model, _WRAPPED):
        oc_factory.create_model = _wrap_create_model(oc_factory.create_model)
    open_clip.create_model = oc_factory.create_model


# ---------------------------------------------------------------- training hooks

def _print_plugin_help() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.main", add_help=False,
        description="open_clip_train's training loop with open_clip_align's flags (listed first); "
                    "all of open_clip_train's own flags follow.")
    add_plugin_args(parser)
    parser.print_help()
    print()


_OWNED_BY = {"degla_": "degla", "ema_decay": "degla", "ceclip_": "ce-clip", "comalign_": "comalign"}
_POSITIVE_INTS = ("epochs", "batch_size", "accum_freq")


@functools.lru_cache(maxsize=1)
def _upstream_defaults() -> argparse.Namespace:
    from open_clip_train.params import parse_args
    return parse_args([])


def _check_run_flags(pre: argparse.ArgumentParser, ours: argparse.Namespace, args: argparse.Namespace) -> None:
    """Refuse, in one line each, what a run cannot honour: non-finite numbers, non-positive counts, a method's
    flags given to another loss, open_clip_train flags the loss or model ignores (``flag_rules``), a GELU model
    with QuickGELU weights, a pretrained value that is neither a file nor a tag, and a run folder in use."""
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        pre.error(f"argument {bad[0].split()[0]}: expected a finite number, got {bad[0].split()[1]}")
    for name in _POSITIVE_INTS:
        if getattr(args, name) < 1:
            pre.error(f"argument --{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    defaults = pre.parse_args([])
    for key, value in vars(ours).items():
        owner = next((loss for prefix, loss in _OWNED_BY.items() if key.startswith(prefix)), None)
        if owner and ours.loss != owner and value != getattr(defaults, key):
            pre.error(f"--{key.replace('_', '-')} configures --loss {owner}; this run trains --loss {ours.loss}")
    message = flag_rules.refusal(args, _upstream_defaults())
    if message:
        pre.error(message)
    if args.lock_text and not args.lock_text_freeze_layer_norm and _builds_clip_class(args):
        pre.error(f"--lock-text: {args.model} is an open_clip CLIP, whose text lock cannot leave LayerNorm trainable "
                  f"(open_clip asserts); add --lock-text-freeze-layer-norm")
    if needs_quickgelu(args.model, args.pretrained) and not args.force_quick_gelu:
        pre.error(quickgelu_advice(args.model, args.pretrained))
    problem = pretrained_problem(args.model, args.pretrained)
    if problem:
        pre.error(f"argument --pretrained: {problem}")
    if args.name and args.resume != "latest" and os.environ.get("RANK", "0") == "0" and not args.log_local:
        log = Path(args.logs, args.name, "out.log")  # upstream refuses such a run with a puzzling message
        if log.exists():
            pre.error(f"--name {args.name}: {log.parent} already holds a run; continue it with --resume latest, "
                      f"choose another --name, or remove that folder")


def _builds_clip_class(args) -> bool:
    """True when ``args.model`` builds open_clip's ``CLIP`` (or a plugin subclass), not CustomTextCLIP/CoCa."""
    if plugin_block(args.model) is not None:
        return True
    cfg = oc_factory.get_model_config(args.model) or {}
    text = cfg.get("text_cfg", {})
    return bool(cfg) and not (args.force_custom_text or cfg.get("custom_text") or "multimodal_cfg" in cfg
                              or text.get("hf_model_name"))


def _parse_args(original_parse_args, state, argv):
    argv = list(argv)
    if argv[:1] == ["--"]:  # torchrun needs `-m training.main -- --logs X` (its own --logs-specs clashes)
        argv = argv[1:]
    if "-h" in argv or "--help" in argv:
        _print_plugin_help()
        return original_parse_args(argv)
    pre = build_preparser()
    pre.prog = "training.main"
    ours, rest = pre.parse_known_args(argv)
    if ours.loss not in losses.list_losses():
        pre.error(f"argument --loss: unknown loss {ours.loss!r}; registered losses: "
                  f"{', '.join(losses.list_losses())}")
    if ours.num_hardneg < 1:
        pre.error(f"argument --num-hardneg: expected K >= 1, got {ours.num_hardneg}")
    if losses.loss_uses_hardneg(ours.loss) and ours.hardneg_format == "none":
        pre.error(f"--loss {ours.loss} trains on hard negative captions: give --train-data with "
                  f"--hardneg-format (csv, degla-json, jsonl, wds or ceclip-npy)")
    if (ours.loss == "comalign") != (ours.comalign_data != "none"):
        pre.error("--loss comalign trains on ComAlign components and needs --comalign-data features|images "
                  "(and --comalign-data needs --loss comalign)")
    if ours.comalign_data != "none" and ours.hardneg_format != "none":
        pre.error("--comalign-data and --hardneg-format cannot be combined")
    from .data.hardneg import hardneg_flag_error  # the data stack loads with open_clip_train anyway
    problem = hardneg_flag_error(ours)
    if problem:
        pre.error(problem)
    if not 0.0 <= ours.ema_decay <= 1.0:
        pre.error(f"argument --ema-decay: expected a decay in [0, 1], got {ours.ema_decay}")
    args = original_parse_args(rest)
    for key, value in vars(ours).items():
        setattr(args, key, value)
    _check_run_flags(pre, ours, args)
    if args.precision == "amp" and not torch.cuda.is_available():
        logging.warning("No GPU: --precision amp (fp16 autocast) is slow on CPU (2x for ViT-B-32, ~100x for RN50 "
                        "measured); use --precision fp32")
    state["args"] = args
    return args


def _plugin_models(predicate) -> str:
    return ", ".join(m for m in open_clip.list_models() if predicate(plugin_block(m) or {}))


def _create_model_and_transforms(original, state, model_name, *args, **kwargs):
    """Set up the trained model for the loss: [B, 1+K, L] text when the data or loss has negatives, the EMA
    teacher's forward and step-hook updates when the loss uses a teacher (not for --distill-model)."""
    try:
        model, preprocess_train, preprocess_val = original(model_name, *args, **kwargs)
    except Exception:
        _raise_if_unreadable(args[0] if args else kwargs.get("pretrained"), "--pretrained")
        raise
    run_args = state["args"]
    if model_name != run_args.model:
        return model, preprocess_train, preprocess_val
    if run_args.comalign_data != "none":
        _setup_comalign(model, run_args)
        return model, preprocess_train, preprocess_val
    needs_model = losses.loss_uses_hardneg(run_args.loss) or run_args.hardneg_format != "none"
    if needs_model and not isinstance(model, HardNegCLIP):
        raise PluginUsageError(
            f"--model {run_args.model} is a plain open_clip model, but --loss {run_args.loss} / --hardneg-format "
            f"{run_args.hardneg_format} feed it [B, 1+K, L] text; use a hard-negative model such as "
            f"{_plugin_models(lambda b: b.get('arch') == 'hardneg')} (same weights, pretrained tags resolve "
            f"through the base model)")
    if not isinstance(model, HardNegCLIP):
        return model, preprocess_train, preprocess_val
    model.emit_hardneg = losses.loss_uses_hardneg(run_args.loss)
    if losses.loss_uses_teacher(run_args.loss, run_args):
        if model.teacher is None:
            raise PluginUsageError(
                f"--loss {run_args.loss} needs an EMA teacher, but --model {run_args.model} has none; use a model "
                f"with one ({_plugin_models(lambda b: b.get('ema_teacher'))}), or set --degla-tgc-weight 0 "
                f"--degla-distill-weight 0")
        model.emit_teacher = True
        model.ema_decay = run_args.ema_decay
        ema.track(model)
        if "ema_hook" not in state:
            state["ema_hook"] = ema.install_step_hook(log_every=run_args.log_every_n_steps)
    return model, preprocess_train, preprocess_val


def _raise_if_unreadable(path, flag: str) -> None:
    """A local checkpoint that does not load becomes one line naming the flag and file; anything else (a
    checkpoint that loads but fails later) keeps its own error."""
    if isinstance(path, str) and os.path.isfile(path):
        problem = unreadable_checkpoint(path)
        if problem:
            raise PluginUsageError(f"{flag}: {problem}") from None


def _pt_load(original, file_path, map_location=None):
    """open_clip_train's ``--resume`` loader: a truncated or foreign file is one line, not torch's traceback."""
    try:
        return original(file_path, map_location=map_location)
    except Exception:
        _raise_if_unreadable(file_path, "--resume")
        raise


def _setup_comalign(model, run_args) -> None:
    """``--comalign-data`` trains a ComAlign head: the model must be a ``comalign-*`` one; ``--comalign-head``
    seeds its head."""
    if not isinstance(model, ComAlignCLIP):
        raise PluginUsageError(
            f"--model {run_args.model} is not a ComAlign model, but --loss comalign trains a ComAlign head; use "
            f"one of {_plugin_models(lambda b: b.get('arch') == 'comalign')}")
    if run_args.comalign_head:
        load_comalign_head(model.comalign_head, run_args.comalign_head)


def _get_data(original, args, preprocess_fns, epoch=0, tokenizer=None):
    if args.hardneg_format == "none" and args.comalign_data == "none":
        return original(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    rest_args = argparse.Namespace(**vars(args))
    rest_args.train_data = None
    if rest_args.dataset_type == "synthetic":
        rest_args.dataset_type = "auto"
    data = original(rest_args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    # the plugin's loaders need open_clip_train's data stack: import when used
    if args.comalign_data != "none":
        from .data.comalign import get_comalign_train_data
        # views are the cached/evaluated kind: the deterministic (val) transform, no augmentation
        data["train"] = get_comalign_train_data(args, preprocess_fns[1], tokenizer, epoch=epoch)
    else:
        from .data.hardneg import get_hardneg_train_data
        data["train"] = get_hardneg_train_data(args, preprocess_fns[0], tokenizer, epoch=epoch)
    return data


def _create_loss(args):
    try:
        return losses.create_loss(args.loss, args)
    except ValueError as err:  # the loss rejected a flag value; its message names the flag
        raise PluginUsageError(f"--loss {args.loss}: {err}") from None


def _train_one_epoch(original, model, data, loss, *args, **kwargs):
    """Losses with per-epoch state reset it first (CE-CLIP's previous-batch margins restart at 0, as released)."""
    if hasattr(loss, "start_epoch"):
        loss.start_epoch()
    return original(model, data, loss, *args, **kwargs)


class CpuSafeDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that drops ``device_ids`` for CPU modules (open_clip_train passes them unconditionally)."""

    def __init__(self, module, device_ids=None, *args, **kwargs):
        if device_ids is not None and next(module.parameters()).device.type == "cpu":
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


@contextlib.contextmanager
def training_hooks():
    """Patch open_clip_train.main's collaborators for one call of its ``main``; restore them afterwards."""
    import open_clip_train.main as train_main

    state = {}
    patches = [
        (train_main, "parse_args", functools.partial(_parse_args, train_main.parse_args, state)),
        (train_main, "create_model_and_transforms",
         functools.partial(_create_model_and_transforms, train_main.create_model_and_transforms, state)),
        (train_main, "get_data", functools.partial(_get_data, train_main.get_data)),
        (train_main, "pt_load", functools.partial(_pt_load, train_main.pt_load)),
        (train_main, "train_one_epoch", functools.partial(_train_one_epoch, train_main.train_one_epoch)),
        (train_main, "create_loss", _create_loss),
        (torch.nn.parallel, "DistributedDataParallel", CpuSafeDDP),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield state
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        if "ema_hook" in state:
            state.pop("ema_hook").remove()
