"""Assemble an AlignVLM from a model config: open_clip vision tower + causal LM (+ LoRA) + connector.

A model config is a JSON-able dict (training writes it into every checkpoint's ``run_config.json``)::

    {"model": "ViT-B-16-quickgelu", "pretrained": "openai" | "/path/w.pt" | None,
     "force_quick_gelu": true | false | None, "lm": "tiny-llama" | "smollm2" | DIR | F.gguf,
     "connector": "align" | "mlp", "connector_kwargs": {"reduction": None, "reduction_factor": 2},
     "lm_training": "frozen" | "full" | "lora", "lora": {"r": 64, "alpha": 64, "dropout": 0.0},
     "prompt": "A short caption:", "max_caption_tokens": 48}

A SmolVLM / Idefics3 model config names a local directory instead of a tower and an LM (see ``smolvlm.py``)::

    {"vlm": "smolvlm", "vlm_path": "/models/SmolVLM2-500M-Video-Instruct", "connector": "align" | "mlp",
     "connector_kwargs": {}, "lm_training": ..., "lora": ..., "prompt": ..., "max_caption_tokens": ...}

``force_quick_gelu`` is the tower's activation choice: OpenAI (and other QuickGELU) weights under a GELU name such
as ``ViT-B-16`` give other features, so ``None`` (not decided yet) switches to QuickGELU when the tag needs it,
with one log line. Training records the decision (true/false), so that evaluation rebuilds the tower the
connector was trained on.
"""
import importlib.util
import logging
import os
from typing import Callable, Optional, Tuple

from torch import nn

from ..errors import UserError
from ..models.activation import force_quickgelu_kwargs, needs_quickgelu, quickgelu_advice
from .lm import load_lm
from .model import AlignVLM

__all__ = ["LM_TRAINING", "VLMConfigError", "apply_lora", "build_model", "check_tower", "load_vision_tower",
           "tower_quick_gelu"]

LM_TRAINING = ("frozen", "full", "lora")


class VLMConfigError(UserError):
    """A model setting that cannot be built (unknown tower, missing weights file, LoRA without peft, ...)."""


def _first_line(err: Exception, limit: int = 300) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def tower_quick_gelu(name: str, pretrained: Optional[str], force_quick_gelu: Optional[bool] = None,
                     where: str = "AlignVLM vision tower") -> bool:
    """Whether the tower ``name`` + ``pretrained`` is built with ``force_quick_gelu=True``.

    ``None`` decides from the tag: True (with one log line) when the weights need QuickGELU and ``name`` builds
    GELU. ``True``/``False`` is a recorded decision and is kept; ``False`` with such a tag (a checkpoint whose
    connector was trained on the GELU tower) logs a warning, since the features differ from the released model's.
    """
    if force_quick_gelu is None:
        return bool(force_quickgelu_kwargs(name, pretrained, where=where))
    if not force_quick_gelu and needs_quickgelu(name, pretrained):
        logging.warning(f"{where}: built with GELU as recorded; {quickgelu_advice(name, pretrained)}")
    return bool(force_quick_gelu)


def load_vision_tower(name: str, pretrained: Optional[str] = None,
                      force_quick_gelu: Optional[bool] = None) -> Tuple[nn.Module, Callable]:
    """``(visual, preprocess)`` from ``open_clip.create_model_and_transforms(name, pretrained=...)``.

    ``pretrained`` is an open_clip tag or a weights file; plugin model names work (``import open_clip_align``
    registers them). ``force_quick_gelu``: see :func:`tower_quick_gelu` (``None``: QuickGELU when the tag needs
    it). ``preprocess`` is the deterministic eval transform (resize, centre crop, normalise): the tower is
    frozen, so training uses it as well. The text tower is dropped.
    """
    return _load_tower(name, pretrained, tower_quick_gelu(name, pretrained, force_quick_gelu))


def check_tower(name: str, pretrained: Optional[str]) -> None:
    """Raise :class:`VLMConfigError` when ``pretrained`` cannot give tower ``name`` weights (an unknown tag, a
    folder, a file that is not a readable checkpoint), before anything is built."""
    import open_clip_align  # noqa: F401  (registers the plugin's model configs)
    from ..models.factory import pretrained_problem, unreadable_checkpoint

    problem = pretrained_problem(name, pretrained) if isinstance(pretrained, str) else None
    if problem is None and isinstance(pretrained, str) and os.path.isfile(pretrained):
        problem = unreadable_checkpoint(pretrained)
    if problem:
        raise VLMConfigError(f"--model {name} --pretrained {pretrained}: {problem}")


def _load_tower(name: str, pretrained: Optional[str], quick_gelu: bool) -> Tuple[nn.Module, Callable]:
    import open_clip

    check_tower(name, pretrained)
    quick = {"force_quick_gelu": True} if quick_gelu else {}
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **quick)
    except (RuntimeError, FileNotFoundError, ValueError, KeyError) as err:
        raise VLMConfigError(f"--model {name} --pretrained {pretrained}: {_first_line(err)}") from None
    return clip.visual, preprocess


def apply_lora(lm: nn.Module, r: int, alpha: int, dropout: float = 0.0, adapter_dir: Optional[str] = None,
               trainable: bool = True, task_type: Optional[str] = "CAUSAL_LM") -> nn.Module:
    """Wrap ``lm`` in PEFT LoRA adapters on every linear layer except the LM head (``target_modules=
    "all-linear"``); with ``adapter_dir`` load saved adapters instead of fresh ones. Base weights are frozen.
    ``task_type=None`` wraps a bare decoder (a SmolVLM's text model, which has no LM head of its own)."""
    if importlib.util.find_spec("peft") is None:
        raise VLMConfigError("--lora needs the peft package (pip install peft==0.21.2); without --lora stage B "
                             "trains the full LM")
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(lm, adapter_dir, is_trainable=trainable)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                        task_type=task_type)
    return get_peft_model(lm, config)


def build_model(config: dict, lm_dir: Optional[str] = None, lora_dir: Optional[str] = None,
                trainable: bool = True) -> Tuple[AlignVLM, object, Callable]:
    """``(model, tokenizer, preprocess)`` for a model config (module docstring), on CPU in fp32; for a SmolVLM
    ``(SmolVLMCaptioner, processor, to_rgb)``.

    ``lm_dir`` replaces ``config["lm"]`` (a checkpoint's fully trained LM); ``lora_dir`` loads saved LoRA
    adapters. The LM is frozen for ``lm_training="frozen"``; with ``"lora"`` only the adapters train.
    ``trainable=False`` freezes everything (evaluation). ``config["force_quick_gelu"]`` (missing: decided from the
    tag, see :func:`tower_quick_gelu`) picks the tower's activation; the model records the result.
    """
    mode = config.get("lm_training", "frozen")
    if mode not in LM_TRAINING:
        raise VLMConfigError(f"lm_training must be one of {LM_TRAINING}, got {mode!r}")
    if config.get("vlm") == "smolvlm":
        from .smolvlm import build_smolvlm

        return build_smolvlm(config, lm_dir=lm_dir, lora_dir=lora_dir, trainable=trainable)
    quick = tower_quick_gelu(config["model"], config.get("pretrained"), config.get("force_quick_gelu"))
    visual, preprocess = _load_tower(config["model"], config.get("pretrained"), quick)
    lm, tokenizer = load_lm(lm_dir or config["lm"])
    model = AlignVLM(visual, lm, config.get("connector", "align"),
                     connector_kwargs=dict(config.get("connector_kwargs") or {}),
                     freeze_lm=mode != "full" or not trainable,
                     vision_model_name=config["model"], vision_pretrained=config.get("pretrained"),
                     vision_force_quick_gelu=quick)
    if mode == "lora":
        lora = config.get("lora") or {}
        model.lm = apply_lora(model.lm, int(lora.get("r", 64)), int(lora.get("alpha", 64)),
                              float(lora.get("dropout", 0.0)), adapter_dir=lora_dir, trainable=trainable)
    if not trainable:
        model.requires_grad_(False)
    return model, tokenizer, preprocess
