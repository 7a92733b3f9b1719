"""Set up the model of a ``training.main`` run for its method, on any open_clip backbone (spec backbones.md §2-3).

After open_clip builds the model and loads its pretrained weights (plain names, tags, ``hf-hub:``, ``local-dir:``,
or the plugin aliases), ``prepare_model`` gives the method what its ``ModelNeeds`` ask, in this order:

1. the EMA teacher, a frozen copy of the loaded model (``models.hardneg.make_teacher``), when the method needs one;
2. the hard-negative class (``enable_hardneg``: CLIP, CustomTextCLIP, CoCa) when the run feeds ``[B, 1+K, L]`` text;
3. the loss form: sigmoid when the method has one and ``--siglip`` is given or the model has a ``logit_bias``
   (recorded as ``args.hardneg_sigmoid``; ``--siglip-init-bias`` sets the starting bias);
4. LoRA (``--lora-*``, ``lora.py``) on the student, then the teacher attached (so it stays plain and follows the
   student's effective weights).

open_clip_train then applies ``--lock-*``, ``--grad-checkpointing``, DDP, the optimizer and ``--resume``.
``check_run`` refuses, before anything is built, what cannot work (one line each); ``pretrained_mismatch`` explains a
``--pretrained`` checkpoint of another model family.
"""
import argparse
import logging
import os
from typing import Iterable, Optional

import torch
from open_clip import factory as oc_factory

from ..errors import UsageError
from ..losses.sigmoid import HARDNEG_COLUMNS
from . import lora
from .factory import plugin_block
from .hardneg import HardNegMixin, UnsupportedFamily, enable_hardneg, family, make_teacher
from .registry import get_arch

SIGMOID_FLAGS = ("siglip_hardneg_weight", "siglip_hardneg_columns", "siglip_init_bias")
LORA_FLAGS = ("lora_alpha", "lora_dropout", "lora_targets", "lora_train_extra")


def add_model_setup_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("open_clip_align: any backbone (LoRA, sigmoid form)")
    g.add_argument("--lora-r", type=int, default=0, metavar="R",
                   help="LoRA rank on both towers (0: off, full fine-tuning). Adapters are parametrizations: "
                        "W_eff = W + (alpha/r)·B·A, B = 0 at start; W never changes. Export merges them.")
    g.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: r, a scale of 1).")
    g.add_argument("--lora-dropout", type=float, default=0.0,
                   help="Dropout on the input features of A (one mask per forward, off in eval and merges).")
    g.add_argument("--lora-targets", default=None, metavar="T[,T...]",
                   help="What to adapt: attn (attention projections, fused in_proj included), mlp, conv, all-linear, "
                        "or globs over tensor/module paths such as 'text.*' or 'visual.trunk.blocks.1*'. Default "
                        "attn,mlp (+conv for a ModifiedResNet image tower).")
    g.add_argument("--lora-train-extra", default=lora.DEFAULT_EXTRAS, metavar="P[,P...]",
                   help=f"Besides the adapters, also train: {', '.join(lora.EXTRAS)} (default "
                        f"{lora.DEFAULT_EXTRAS}; everything else is frozen).")
    g.add_argument("--siglip-hardneg-weight", type=float, default=1.0, metavar="LAMBDA",
                   help="Sigmoid form: weight of each hard-negative pair (1: counts like an in-batch negative).")
    g.add_argument("--siglip-hardneg-columns", default="own", choices=HARDNEG_COLUMNS,
                   help="Sigmoid form: each image against its own K negatives (own, no communication) or every "
                        "negative of the global batch (all).")
    g.add_argument("--siglip-init-bias", type=float, default=None, metavar="B",
                   help="Sigmoid form: set the logit bias b to B after the pretrained weights load (needed for a "
                        "checkpoint without logit_bias, e.g. OpenAI CLIP; SigLIP initialises -10).")


# ------------------------------------------------------------------------------------------ configs

def model_config(name: str) -> Optional[dict]:
    """The model config ``name`` builds (built-in, plugin or ``local-dir:``), or None when it cannot be read without
    a download (``hf-hub:``) or does not exist."""
    if not isinstance(name, str) or name.startswith("hf-hub:"):
        return None
    try:
        return oc_factory.get_model_config(name if ":" in name else name.replace("/", "-"))
    except (OSError, ValueError):
        return None


def builds_caption_decoder(args) -> Optional[bool]:
    """True when ``--model`` builds a CoCa (its config has ``multimodal_cfg``), None when unknown."""
    cfg = model_config(args.model)
    return None if cfg is None else "multimodal_cfg" in cfg


def _config_logit_bias(name: str) -> Optional[bool]:
    cfg = model_config(name)
    return None if cfg is None else "init_logit_bias" in cfg


def sigmoid_estimate(args, method) -> bool:
    """The loss form before the model exists: sigmoid when the method has one and ``--siglip`` is given or the
    config creates a ``logit_bias`` (``prepare_model`` confirms it on the built model)."""
    return bool(getattr(method, "has_sigmoid_form", False)) and (args.siglip or _config_logit_bias(args.model) is True)


def _checkpoint_keys(path: str) -> Optional[set]:
    """The state-dict keys of a checkpoint file (``module.`` stripped), read lazily; None if unreadable."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(path, "pt") as f:
                keys = set(f.keys())
        else:
            obj = torch.load(path, map_location="meta", weights_only=True, mmap=True)
            keys = set((obj.get("state_dict", obj) if isinstance(obj, dict) else {}).keys())
    except Exception:  # any unreadable file: the caller says what it can without the keys
        return None
    return {k[len("module."):] if k.startswith("module.") else k for k in keys}


def pretrained_logit_bias(args) -> Optional[bool]:
    """Whether ``--pretrained`` brings a ``logit_bias`` (None: no pretrained weights, or cannot tell)."""
    if not args.pretrained:
        return None
    if os.path.isfile(args.pretrained):
        keys = _checkpoint_keys(args.pretrained)
        return None if keys is None else "logit_bias" in keys
    block = plugin_block(args.model)
    return _config_logit_bias((block or {}).get("base") or args.model)


# ------------------------------------------------------------------------------------------ checks before building

def _feeds_negatives(args, needs) -> bool:
    return needs.hardneg or args.hardneg_format != "none"


def _given(args, dests: Iterable[str], defaults: argparse.Namespace) -> Optional[str]:
    return next((d for d in dests if getattr(args, d) != getattr(defaults, d)), None)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_run(args, method, needs, defaults: argparse.Namespace) -> Optional[str]:
    """The first one-line problem of this run's model set-up, or None. Sets ``args.hardneg_sigmoid`` (estimate)."""
    args.hardneg_sigmoid = sigmoid_estimate(args, method)
    if args.lora_r < 0:
        return f"argument --lora-r: expected a rank >= 0 (0 = off), got {args.lora_r}"
    if not args.lora_r:
        stray = _given(args, LORA_FLAGS, defaults)
        if stray:
            return f"{_flag(stray)} configures LoRA: add --lora-r R (the adapter rank), or drop it"
    else:
        if needs.components:
            return (f"--lora-r: --loss {method.name} trains a head on a frozen base; LoRA adapts the towers, which "
                    f"this method keeps frozen")
        if args.lora_alpha is not None and args.lora_alpha <= 0:
            return f"argument --lora-alpha: expected alpha > 0, got {args.lora_alpha}"
        if not 0.0 <= args.lora_dropout < 1.0:
            return f"argument --lora-dropout: expected a probability in [0, 1), got {args.lora_dropout}"
        extras = [e.strip() for e in args.lora_train_extra.split(",") if e.strip()]
        unknown = [e for e in extras if e not in lora.EXTRAS]
        if unknown:
            return f"argument --lora-train-extra: unknown {unknown[0]!r}; choose from {', '.join(lora.EXTRAS)}"
    if not args.hardneg_sigmoid:
        stray = _given(args, SIGMOID_FLAGS, defaults)
        if stray:
            return (f"{_flag(stray)} configures the sigmoid form of a hard-negative loss, which this run does not "
                    f"train (it needs --loss negclip/degla/ce-clip with --siglip or a model with a logit_bias)")
    elif args.siglip_hardneg_weight < 0:
        return f"argument --siglip-hardneg-weight: expected a weight >= 0, got {args.siglip_hardneg_weight}"
    if args.hardneg_sigmoid and args.siglip and args.siglip_init_bias is None and pretrained_logit_bias(args) is False:
        return (f"--siglip: --pretrained {args.pretrained} has no logit_bias. open_clip would build {args.model} with "
                f"scale log(10) and bias -10, then load the checkpoint's scale (s = 100 for CLIP checkpoints) and set "
                f"the bias to 0 (a checkpoint without logit_bias gets b = 0, open_clip issue #712), so every in-batch "
                f"pair starts near s·cos: give the starting bias with --siglip-init-bias B (SigLIP's init is -10), or "
                f"fine-tune a SigLIP-family model (one whose config sets init_logit_bias, e.g. ViT-B-16-SigLIP)")
    block = plugin_block(args.model)
    if block is not None and _feeds_negatives(args, needs):
        cls = get_arch(block.get("arch", "hardneg"))
        if not issubclass(cls, HardNegMixin):
            return (f"--model {args.model} builds a {cls.__name__}, which --loss {method.name} cannot train: "
                    f"hard-negative methods train open_clip's CLIP, CustomTextCLIP and CoCa models (any plain "
                    f"open_clip name, e.g. ViT-B-32-quickgelu)")
    return None


# ------------------------------------------------------------------------------------------ after building

def _alias_without_teacher(model, args) -> bool:
    block = plugin_block(args.model)
    return block is not None and not block.get("ema_teacher") and getattr(model, "teacher", None) is None


def _aliases_with_teacher() -> str:
    import open_clip
    return ", ".join(m for m in open_clip.list_models() if (plugin_block(m) or {}).get("ema_teacher"))


def prepare_model(model: torch.nn.Module, args, method, needs) -> None:
    """Steps 1-4 of the module docstring on the built model, in place; one-line ``UsageError`` for what cannot
    work (a family the method cannot serve, LoRA targets that match nothing)."""
    if needs.teacher and _alias_without_teacher(model, args):
        raise UsageError(f"--loss {method.name} needs an EMA teacher, but --model {args.model} is a plugin alias "
                         f"declared without one; use one with it ({_aliases_with_teacher()}) or the plain open_clip "
                         f"name (any plain model gets its teacher), or turn off the method's teacher terms")
    teacher = None
    if needs.teacher and getattr(model, "teacher", None) is None:
        teacher = make_teacher(model)
    if _feeds_negatives(args, needs) or teacher is not None:
        try:
            enable_hardneg(model)
        except UnsupportedFamily as err:
            raise UsageError(f"--model {args.model}: --loss {method.name} / --hardneg-format {args.hardneg_format} "
                             f"feed the model [B, 1+K, L] text, and {err}") from None
    _set_loss_form(model, args, method, needs)
    if args.lora_r:
        _inject_lora(model, args)
    if teacher is not None:
        model.attach_teacher(teacher)
    if isinstance(model, HardNegMixin):
        model.configure_training(emit_hardneg=needs.hardneg, teacher=needs.teacher, ema_decay=needs.ema_decay)
        dropout = getattr(getattr(model, "visual", None), "patch_dropout", None)
        if needs.teacher and getattr(dropout, "prob", 0.0) > 0:
            logging.warning("patch dropout acts in the student only (the teacher runs in eval mode): the distill "
                            "and TGC terms compare features of different inputs")


def _set_loss_form(model, args, method, needs) -> None:
    """Confirm the loss form on the built model, apply ``--siglip-init-bias``, and warn where a term is inert."""
    bias = getattr(model, "logit_bias", None)
    sigmoid = bool(getattr(method, "has_sigmoid_form", False)) and (args.siglip or bias is not None)
    if sigmoid and bias is None:
        raise UsageError(f"--siglip: --model {args.model} ({family(model)}) has no logit_bias parameter, so the "
                         f"sigmoid loss has no bias to learn")
    if sigmoid != args.hardneg_sigmoid:
        logging.info(f"--loss {method.name}: {'sigmoid' if sigmoid else 'softmax'} form (the built model "
                     f"{'has' if bias is not None else 'has no'} logit_bias)")
    args.hardneg_sigmoid = sigmoid
    if sigmoid and args.siglip_init_bias is not None:
        with torch.no_grad():
            bias.fill_(args.siglip_init_bias)
    if bias is not None and not sigmoid and needs.hardneg:
        logging.warning(f"--model {args.model} has a logit_bias, but --loss {method.name} trains a softmax contrast, "
                        f"which is shift-invariant: the bias gets no gradient")
    scale = float(model.logit_scale.detach().float().exp().max())
    if scale > 100.0 + 1e-3:
        logging.warning(f"the model's logit scale is {scale:.1f}; open_clip_train clamps it to 100 after every step")


def _inject_lora(model, args) -> None:
    spec = args.lora_targets or lora.default_targets(model)
    try:
        paths = lora.resolve_targets(model, spec)
    except ValueError as err:
        raise UsageError(f"{err} (--model {args.model})") from None
    alpha = args.lora_alpha if args.lora_alpha is not None else float(args.lora_r)
    added = lora.inject(model, paths, args.lora_r, alpha, args.lora_dropout)
    extras = [e.strip() for e in args.lora_train_extra.split(",") if e.strip() and e.strip() != "none"]
    lora.freeze_except_adapters(model, extras)
    trainable, total = lora.parameter_counts(model)
    logging.info(f"LoRA r={args.lora_r} alpha={alpha:g} dropout={args.lora_dropout:g} on {len(paths)} tensors "
                 f"({spec}: {lora._summary(paths, 6)}): {added:,} adapter parameters; trainable {trainable:,} of "
                 f"{total:,} ({100.0 * trainable / max(total, 1):.2f}%), also training "
                 f"{', '.join(extras) or 'nothing else'}")


# ------------------------------------------------------------------------------ --pretrained of another family

def _describe_keys(keys: set) -> str:
    """The model family a state dict's keys describe (structure only, never names)."""
    if any(k.startswith("text_decoder.") for k in keys):
        cls = "CoCa"
    elif any(k.startswith("text.") for k in keys):
        cls = "CustomTextCLIP"
    elif "token_embedding.weight" in keys:
        cls = "CLIP"
    else:
        return "not an open_clip model"
    if any(k.startswith("visual.trunk.") for k in keys):
        vision = "a timm image trunk"
    elif any(k.startswith("visual.layer1.") for k in keys):
        vision = "a ModifiedResNet image tower"
    elif any(k.startswith("visual.transformer.") for k in keys):
        vision = "an open_clip ViT image tower"
    else:
        vision = "an unknown image tower"
    hf = any(k.startswith(("text.transformer.embeddings.", "text.transformer.encoder.")) for k in keys)
    return f"a {cls} with {vision}{' and a Hugging Face text tower' if hf else ''}"


def pretrained_mismatch(model_name: str, path: str) -> Optional[str]:
    """One line for a ``--pretrained`` file that does not load into ``model_name``: the family its keys describe
    against the family the model builds (built on the meta device, nothing allocated), or None."""
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    keys = _checkpoint_keys(path)
    if keys is None:
        return None
    if any(k.startswith("teacher.") or ".parametrizations." in k for k in keys):
        return (f"--pretrained {path} is a training checkpoint with an EMA teacher or LoRA adapters: export it first "
                f"(python -m open_clip_align.export {path} OUT) and start from --model local-dir:OUT, or continue the "
                f"run with --resume")
    import open_clip
    try:
        with torch.device("meta"):
            expected = {k for k in open_clip.create_model(model_name, device="meta").state_dict()
                        if not k.startswith("teacher.")}
    except Exception:  # the description below is still useful without the model's own keys
        expected = set()
    mine, theirs = _describe_keys(expected) if expected else "this model", _describe_keys(keys)
    if expected and mine != theirs:
        return (f"--pretrained {path} is a checkpoint of another model family ({theirs}), but --model {model_name} "
                f"builds {mine}: pass a checkpoint of this model, or the --model it was trained as")
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    detail = (f"; missing {len(missing)} keys (e.g. {', '.join(missing[:3])}), unexpected {len(unexpected)} "
              f"(e.g. {', '.join(unexpected[:3])})" if missing or unexpected else "; the tensor shapes differ")
    return f"--pretrained {path} ({theirs}) does not fit --model {model_name}{detail}"
