"""The run-time seam into open_clip_train: the only place this package changes open_clip_train.

``training_hooks()`` patches, for the duration of one ``open_clip_train.main.main`` call, its argument parser
(our pre-parser: ``--import``, ``--loss``, the shared data flags, each method's flags, and the run-level checks),
``create_model_and_transforms`` (the model set up for the method's ``ModelNeeds``), ``get_data`` (the method's or
the hard-negative formats' training data), ``create_loss`` (the method's loss), ``train_one_epoch`` (per-epoch loss
state), ``pt_load`` (unreadable ``--resume`` files in one line), DDP (CPU modules) and, through ``checkpoints``,
``torch.save`` (atomic checkpoints) and ``get_latest_checkpoint`` (``--resume latest`` skips files that do not
load). Everything about a method comes from the registry (``methods``): this module names none.
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

from . import checkpoints, flag_rules
from .errors import UsageError
from .eval import during_training  # --val-benchmark: flag checks, data marker, evaluate wrapper
from .methods import get_method, list_methods, method_flag_owner
from .models.setup import check_run, prepare_model, pretrained_mismatch
from .models import HardNegMixin, ema, get_arch, lora, plugin_block
from .models.activation import needs_quickgelu, quickgelu_advice
from .models.factory import pretrained_problem, unreadable_checkpoint
from .params import add_plugin_args, build_preparser
from .user_modules import import_user_modules

_POSITIVE_INTS = ("epochs", "batch_size", "accum_freq")


def _print_plugin_help() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.main", add_help=False,
        description="open_clip_train's training loop with open_clip_align's flags (listed first); "
                    "all of open_clip_train's own flags follow.")
    add_plugin_args(parser)
    parser.print_help()
    print()


@functools.lru_cache(maxsize=1)
def _upstream_defaults() -> argparse.Namespace:
    from open_clip_train.params import parse_args
    return parse_args([])


def _option(dest: str, parser: argparse.ArgumentParser) -> str:
    """How the user may spell ``dest``: its option strings joined by '/'."""
    action = next(a for a in parser._actions if a.dest == dest)
    return "/".join(action.option_strings)


def _builds_clip_class(args) -> bool:
    """True when ``args.model`` builds open_clip's ``CLIP`` (or a plugin subclass), not CustomTextCLIP/CoCa."""
    if plugin_block(args.model) is not None:
        return True
    cfg = oc_factory.get_model_config(args.model) or {}
    text = cfg.get("text_cfg", {})
    return bool(cfg) and not (args.force_custom_text or cfg.get("custom_text") or "multimodal_cfg" in cfg
                              or text.get("hf_model_name"))


def _preparser() -> argparse.ArgumentParser:
    pre = build_preparser()
    pre.prog = "training.main"
    return pre


def _check_run(pre: argparse.ArgumentParser, ours: argparse.Namespace, args: argparse.Namespace) -> None:
    """Refuse, in one line each, what a run cannot honour: non-finite numbers, non-positive counts, a method's
    flags given to another method, the model set-up's flags (``models.setup.check_run``: LoRA, the sigmoid form, a
    family the method cannot serve), the method's own rules, open_clip_train flags it ignores (``flag_rules``), a
    GELU model with QuickGELU weights, a pretrained value that is neither a file nor a tag, a run folder in use."""
    method = get_method(args.loss)
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        pre.error(f"argument {bad[0].split()[0]}: expected a finite number, got {bad[0].split()[1]}")
    for name in _POSITIVE_INTS:
        if getattr(args, name) < 1:
            pre.error(f"argument --{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    defaults = pre.parse_args([])
    problem = check_run(args, method, method.needs(args), defaults)
    if problem:
        pre.error(problem)
    for key, value in vars(ours).items():
        owner = method_flag_owner(key)
        if owner is not None and owner is not method and value != getattr(defaults, key):
            pre.error(f"{_option(key, pre)} needs --loss {owner.name} (it configures that method); this run trains "
                      f"--loss {method.name}")
    needs = method.needs(args)
    if needs.hardneg and args.hardneg_format == "none" and not method.owns_train_data(args):
        pre.error(f"--loss {method.name} trains on hard negative captions: give --train-data with "
                  f"--hardneg-format (csv, degla-json, jsonl, wds or ceclip-npy)")
    if args.csv_hardimg_key is not None and not method.hard_images:
        users = ", ".join(n for n in list_methods() if get_method(n).hard_images)
        pre.error(f"--csv-hardimg-key (NegCLIP's hard-negative images) is used by --loss {users} only; --loss "
                  f"{method.name} would ignore the extra images")
    from .data.hardneg import hardneg_flag_error  # the data stack loads with open_clip_train anyway
    for problem in (hardneg_flag_error(args), flag_rules.refusal(args, _upstream_defaults(), method)):
        if problem:
            pre.error(problem)
    try:
        method.check(args)
        during_training.check_val_args(args)
    except UsageError as err:
        pre.error(str(err))
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


def _parse_args(original_parse_args, state, argv):
    argv = list(argv)
    if argv[:1] == ["--"]:  # torchrun needs `-m training.main -- --logs X` (its own --logs-specs clashes)
        argv = argv[1:]
    pre = _preparser()
    try:
        argv = import_user_modules(argv)
    except UsageError as err:
        pre.error(str(err))
    if "-h" in argv or "--help" in argv:
        _print_plugin_help()
        return original_parse_args(argv)
    pre = _preparser()  # again: imported modules may have registered methods with flags
    ours, rest = pre.parse_known_args(argv)
    if ours.loss not in list_methods():
        pre.error(f"argument --loss: unknown loss {ours.loss!r}; registered losses: {', '.join(list_methods())}")
    if ours.num_hardneg < 1:
        pre.error(f"argument --num-hardneg: expected K >= 1, got {ours.num_hardneg}")
    args = original_parse_args(rest)
    for key, value in vars(ours).items():
        setattr(args, key, value)
    _check_run(pre, ours, args)
    if args.precision == "amp" and not torch.cuda.is_available():
        logging.warning("No GPU: --precision amp (fp16 autocast) is slow on CPU (2x for ViT-B-32, ~100x for RN50 "
                        "measured); use --precision fp32")
    state["args"] = args
    return args


def _plugin_models(predicate) -> str:
    """The registered plugin model names whose config block satisfies ``predicate``."""
    return ", ".join(m for m in open_clip.list_models() if plugin_block(m) is not None and predicate(plugin_block(m)))


def _prepare_model(model, args, state) -> None:
    """Give the method what its ``ModelNeeds`` ask for (``models.setup.prepare_model``: hard negatives and an EMA
    teacher on any CLIP/CustomTextCLIP/CoCa, the loss form, LoRA), or say in one line which models can."""
    method = get_method(args.loss)
    needs = method.needs(args)
    if needs.components and not callable(getattr(model, "encode_components", None)):
        names = _plugin_models(lambda b: callable(getattr(get_arch(b.get("arch", "hardneg")), "encode_components",
                                                          None)))
        raise UsageError(f"--model {args.model} is not a ComAlign model, but --loss {method.name} trains a ComAlign "
                         f"head; use one of {names}")
    prepare_model(model, args, method, needs)
    if needs.teacher:
        ema.track(model)
        if "ema_hook" not in state:
            state["ema_hook"] = ema.install_step_hook(log_every=args.log_every_n_steps)
    method.setup_model(model, args)


def _raise_if_unreadable(path, flag: str) -> None:
    """A local checkpoint that does not load becomes one line naming the flag and file; anything else (a
    checkpoint that loads but fails later) keeps its own error."""
    if isinstance(path, str) and os.path.isfile(path):
        problem = unreadable_checkpoint(path)
        if problem:
            raise UsageError(f"{flag}: {problem}") from None


def _create_model_and_transforms(original, state, model_name, *args, **kwargs):
    """The model, set up for the run's method (only the trained model: not ``--distill-model``'s teacher)."""
    pretrained = args[0] if args else kwargs.get("pretrained")
    try:
        model, preprocess_train, preprocess_val = original(model_name, *args, **kwargs)
    except Exception as err:
        _raise_if_unreadable(pretrained, "--pretrained")
        if isinstance(err, RuntimeError) and ("state_dict" in str(err) or "does not match" in str(err)):
            problem = pretrained_mismatch(model_name, pretrained)
            if problem:
                raise UsageError(problem) from None
        raise
    run_args = state["args"]
    if model_name == run_args.model:
        _prepare_model(model, run_args, state)
    return model, preprocess_train, preprocess_val


def _pt_load(original, file_path, map_location=None):
    """open_clip_train's ``--resume`` loader: a truncated or foreign file is one line, not torch's traceback."""
    try:
        return original(file_path, map_location=map_location)
    except Exception:
        _raise_if_unreadable(file_path, "--resume")
        raise


def _get_data(original, args, preprocess_fns, epoch=0, tokenizer=None):
    """open_clip's data, with the training split from the method (or the hard-negative formats) when it has one."""
    method = get_method(args.loss)
    own = method.owns_train_data(args)
    if not own and args.hardneg_format == "none":
        return original(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    rest_args = argparse.Namespace(**vars(args))
    rest_args.train_data = None
    if rest_args.dataset_type == "synthetic":
        rest_args.dataset_type = "auto"
    data = original(rest_args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    if own:
        data["train"] = method.train_data(args, preprocess_fns, tokenizer, epoch=epoch)
    else:
        from .data.hardneg import get_hardneg_train_data  # needs open_clip_train's data stack: import when used
        data["train"] = get_hardneg_train_data(args, preprocess_fns[0], tokenizer, epoch=epoch)
    return data


def _create_loss(args):
    try:
        return get_method(args.loss).create_loss(args)
    except UsageError:
        raise
    except ValueError as err:  # the loss rejected a flag value; its message names the flag
        raise UsageError(f"--loss {args.loss}: {err}") from None


def _train_one_epoch(original, model, data, loss, *args, **kwargs):
    """Losses with per-epoch state reset it first (CE-CLIP's previous-batch margins restart at 0, as released);
    the first epoch logs the trainable parameters (after open_clip_train's --lock-* flags), every epoch the hard
    negatives its batches masked."""
    if hasattr(loss, "start_epoch"):
        loss.start_epoch()
    inner = getattr(model, "module", model)
    if not getattr(inner, "_oca_counted", False):
        trainable, total = lora.parameter_counts(inner)
        logging.info(f"Trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / max(total, 1):.2f}%)"
                     + (" (EMA teacher excluded)" if getattr(inner, "teacher", None) is not None else ""))
        inner._oca_counted = True
    result = original(model, data, loss, *args, **kwargs)
    if isinstance(inner, HardNegMixin):
        padded, same = inner.pop_negative_counts()
        if padded or same:
            logging.info(f"Hard negatives masked this epoch: {padded} padded, {same} identical to their positive "
                         f"(after tokenization)")
    return result


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
        (train_main, "get_data",
         during_training.marking_get_data(functools.partial(_get_data, train_main.get_data))),
        (train_main, "evaluate", during_training.wrap_evaluate(train_main.evaluate)),
        (train_main, "pt_load", functools.partial(_pt_load, train_main.pt_load)),
        (train_main, "train_one_epoch", functools.partial(_train_one_epoch, train_main.train_one_epoch)),
        (train_main, "create_loss", _create_loss),
        (torch.nn.parallel, "DistributedDataParallel", CpuSafeDDP),
        *checkpoints.patches(train_main),  # atomic epoch_N.pt saves; --resume latest skips files that do not load
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
