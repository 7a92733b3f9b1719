"""Build plugin models: configs whose JSON carries an ``open_clip_align`` block.

The block (``{"arch": ..., "base": ..., ...}``) is popped before construction, because open_clip passes
every top-level config key to the model constructor. Everything else mirrors upstream
``open_clip.factory.create_model`` for names without a schema: the ``force_*`` overrides, precision,
pretrained tag (resolved through the block's ``base`` name) or file, ``output_dict`` and the preprocess cfg.
"""
import copy
import logging
import os
from dataclasses import asdict
from typing import Any, Dict, Optional, Tuple, Union

import torch
from open_clip import factory as oc_factory
from open_clip.model import get_cast_dtype, set_model_preprocess_cfg
from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from .registry import get_arch

PLUGIN_KEY = "open_clip_align"


def plugin_block(model_name: str) -> Optional[Dict[str, Any]]:
    """The ``open_clip_align`` block of a registered config, or None for any other name (schemas included)."""
    if not isinstance(model_name, str) or ":" in model_name:
        return None
    cfg = oc_factory.get_model_config(model_name.replace("/", "-"))
    if not cfg or PLUGIN_KEY not in cfg:
        return None
    return cfg[PLUGIN_KEY]


_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")  # torch's zip format, a legacy pickle (protocol >= 2)


def _looks_like_checkpoint(path: str) -> bool:
    """Cheap sniff of the first bytes: a torch zip/pickle file or safetensors (u64 header size, then '{')."""
    with open(path, "rb") as f:
        head = f.read(10)
    return head.startswith(_CHECKPOINT_MAGIC) or head[8:9] == b"{"


def pretrained_problem(model_name: str, pretrained: Optional[str]) -> Optional[str]:
    """Why ``pretrained`` cannot give ``model_name`` weights (one sentence), or None when it can (or cannot be
    told without loading: schema names such as ``hf-hub:`` bring their own)."""
    if not pretrained or not isinstance(model_name, str) or ":" in model_name:
        return None
    if os.path.isdir(pretrained):
        return f"{pretrained} is a directory; expected a checkpoint file or a pretrained tag"
    if os.path.isfile(pretrained):
        if not _looks_like_checkpoint(pretrained):
            return f"{pretrained} is not a checkpoint (neither a torch file nor safetensors)"
        return None
    block = plugin_block(model_name)
    base = block.get("base") if block is not None else model_name.replace("/", "-")
    if base and get_pretrained_cfg(base, pretrained):
        return None
    tags = list_pretrained_tags_by_model(base) if base else []
    known = (f"its tags are {', '.join(tags)}" if tags
             else f"{base or model_name} has no pretrained tags; leave --pretrained out for random weights")
    return f"{pretrained!r} is neither a file nor a tag of {base or model_name} ({known})"


def unreadable_checkpoint(path: str) -> Optional[str]:
    """Why the checkpoint file at ``path`` cannot be loaded (one sentence naming it), or None when it loads.

    Memory-maps zip checkpoints, so probing a multi-GB file is cheap."""
    if not os.path.isfile(path):
        return f"{path}: no such file"
    if not _looks_like_checkpoint(path):
        return f"{path} is not a checkpoint (neither a torch file nor safetensors)"
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            load_file(path)
        else:
            with open(path, "rb") as f:
                zipped = f.read(4) == _CHECKPOINT_MAGIC[0]
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as err:  # truncated, corrupt or pickled objects: all mean "not loadable as weights"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in first or "Weights only load failed" in first:
            first = "it holds pickled Python objects, not only tensors"
        return f"{path} cannot be loaded as a checkpoint ({first[:160]})"
    return None


def _resolve_pretrained(model_name: str, base: Optional[str], pretrained: str, cache_dir: Optional[str]):
    """Return ``(checkpoint_path, pretrained_cfg_or_None)`` for a tag (looked up on the base name) or file."""
    tag_cfg = get_pretrained_cfg(base, pretrained) if base else {}
    if tag_cfg:
        return download_pretrained(tag_cfg, cache_dir=cache_dir), tag_cfg
    if os.path.isfile(pretrained):
        return pretrained, None
    raise RuntimeError(f"pretrained for {model_name!r}: {pretrained_problem(model_name, pretrained)}")


def load_plugin_checkpoint(model: torch.nn.Module, checkpoint_path: str, weights_only: bool = True):
    """Load base CLIP or plugin weights; only keys under the class's ``plugin_state_prefixes`` may be missing.

    Afterwards ``model.after_pretrained_load(missing_keys)`` runs if the class defines it (e.g. ComAlign's head
    checkpoint). A hard-negative model's EMA teacher, which a base checkpoint lacks, is seeded from the loaded student
    by its own load hooks (``models.hardneg``).
    """
    incompatible = oc_factory.load_checkpoint(model, checkpoint_path, strict=False, weights_only=weights_only)
    owned = tuple(getattr(model, "plugin_state_prefixes", ()))
    missing = [k for k in incompatible.missing_keys if not k.startswith(owned)]
    if missing or incompatible.unexpected_keys:
        raise RuntimeError(
            f"checkpoint {checkpoint_path} does not match {type(model).__name__}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {incompatible.unexpected_keys[:8]}")
    after_load = getattr(model, "after_pretrained_load", None)
    if after_load is not None:
        after_load(incompatible.missing_keys)


def create_plugin_model(
        model_name: str,
        pretrained: Optional[str] = None,
        load_weights: bool = True,
        precision: str = "fp32",
        device: Union[str, torch.device] = "cpu",
        jit: bool = False,
        force_quick_gelu: bool = False,
        force_custom_text: bool = False,
        force_patch_dropout: Optional[float] = None,
        force_image_size: Optional[Union[int, Tuple[int, int]]] = None,
        force_preprocess_cfg: Optional[Dict[str, Any]] = None,
        force_context_length: Optional[int] = None,
        pretrained_image: bool = False,
        pretrained_text: bool = True,
        pretrained_image_path: Optional[str] = None,
        pretrained_text_path: Optional[str] = None,
        cache_dir: Optional[str] = None,
        output_dict: Optional[bool] = None,
        require_pretrained: bool = False,
        weights_only: bool = True,
        **model_kwargs,
) -> torch.nn.Module:
    """Create a plugin model; same signature and semantics as ``open_clip.create_model``.

    Plugin models always return dicts, so ``output_dict`` is accepted and has no effect.
    """
    model_kwargs.pop("pretrained_hf", None)  # legacy upstream kwarg, meaningless for plugin configs
    if force_custom_text or pretrained_image or pretrained_image_path or pretrained_text_path:
        raise ValueError(
            f"{model_name!r} is an open_clip_align model: force_custom_text, pretrained_image and "
            "pretrained_{image,text}_path are not supported; load full weights with pretrained=")
    device = torch.device(device) if isinstance(device, str) else device
    cfg = copy.deepcopy(oc_factory.get_model_config(model_name.replace("/", "-")))
    block = cfg.pop(PLUGIN_KEY)
    arch_cls = get_arch(block.get("arch", "hardneg"))
    if force_quick_gelu:
        cfg["quick_gelu"] = True
    if force_patch_dropout is not None:
        cfg["vision_cfg"]["patch_dropout"] = force_patch_dropout
    if force_image_size is not None:
        cfg["vision_cfg"]["image_size"] = force_image_size
    if force_context_length is not None:
        cfg["text_cfg"]["context_length"] = force_context_length
    options = {k: v for k, v in block.items() if k not in ("arch", "base")}
    options.update({k: model_kwargs.pop(k) for k in list(model_kwargs) if k in options})  # overrides of block options
    cfg.update(model_kwargs)

    preprocess_cfg = asdict(PreprocessCfg())
    checkpoint_path = None
    if pretrained and load_weights:
        checkpoint_path, tag_cfg = _resolve_pretrained(model_name, block.get("base"), pretrained, cache_dir)
        if tag_cfg:
            preprocess_cfg = merge_preprocess_dict(preprocess_cfg, tag_cfg)
            if tag_cfg.get("quick_gelu", False) != cfg.get("quick_gelu", False):
                logging.warning(f"QuickGELU mismatch between {model_name} and pretrained tag {pretrained!r}")

    logging.info(f"Instantiating open_clip_align model {model_name} ({arch_cls.__name__})")
    model = arch_cls(**cfg, **options, cast_dtype=get_cast_dtype(precision))
    oc_factory._set_model_device_and_precision(model, device, precision)
    if checkpoint_path:
        logging.info(f"Loading pretrained weights from {checkpoint_path}")
        load_plugin_checkpoint(model, checkpoint_path, weights_only=weights_only)
    elif require_pretrained:
        raise RuntimeError(f"pretrained weights for {model_name!r} were required but none were given")
    else:
        logging.warning(f"No pretrained weights loaded for model '{model_name}'. Model initialized randomly.")

    if jit:
        model = torch.jit.script(model)
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "image_size"):
        preprocess_cfg["size"] = visual.image_size
    set_model_preprocess_cfg(model, merge_preprocess_dict(preprocess_cfg, force_preprocess_cfg or {}))
    return model
