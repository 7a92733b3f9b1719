"""QuickGELU safety: OpenAI's CLIP weights were trained with QuickGELU, x·σ(1.702x).

open_clip 3.x builds ``ViT-B-32`` (GELU) with ``pretrained="openai"`` after a warning only, and the result has
different embeddings from the released model. Every entry point of this package that builds a tower from a
pretrained tag asks ``needs_quickgelu`` first and then either forces QuickGELU with one log line
(``force_quickgelu_kwargs``; evaluation, AlignVLM, ComAlign embed) or stops naming the ``-quickgelu`` model
(training, where the run's ``params.txt`` must say what was trained). ``activation_name`` is what evaluation
records in each result's protocol.
"""
import logging
from typing import Optional

import torch
from open_clip import factory as oc_factory
from open_clip.pretrained import get_pretrained_cfg
from open_clip.transformer import QuickGELU

from .factory import plugin_block


def _config_name(model_name: str) -> str:
    return model_name.replace("/", "-")


def needs_quickgelu(model_name: str, pretrained: Optional[str]) -> bool:
    """True when ``pretrained`` is a tag whose weights need QuickGELU and ``model_name``'s config builds GELU.

    Plugin names look their tag up on the config's ``base`` model, as ``create_model`` does. Files, schemas
    (``hf-hub:``, ``local-dir:``) and unknown names answer False: their config travels with the weights.
    """
    if not isinstance(model_name, str) or not isinstance(pretrained, str) or ":" in model_name:
        return False
    block = plugin_block(model_name)
    tag_model = (block or {}).get("base") or model_name
    if not get_pretrained_cfg(_config_name(tag_model), pretrained).get("quick_gelu", False):
        return False
    config = oc_factory.get_model_config(_config_name(model_name)) or {}
    return not config.get("quick_gelu", False)


def quickgelu_name(model_name: str) -> Optional[str]:
    """The registered ``<name>-quickgelu`` config for ``model_name``, or None when open_clip has none."""
    candidate = f"{_config_name(model_name)}-quickgelu"
    return candidate if oc_factory.get_model_config(candidate) else None


def quickgelu_advice(model_name: str, pretrained: str) -> str:
    """One sentence naming what to use instead of ``model_name`` with the QuickGELU tag ``pretrained``."""
    named = quickgelu_name(model_name)
    use = f"--model {named}" if named else "a QuickGELU config"
    return (f"--pretrained {pretrained} weights were trained with QuickGELU but {model_name} builds GELU, which "
            f"gives different embeddings: use {use} (or --force-quick-gelu)")


def force_quickgelu_kwargs(model_name: str, pretrained: Optional[str], force_quick_gelu: bool = False,
                           where: str = "") -> dict:
    """``{"force_quick_gelu": True}`` (with one log line) when the tag needs it, else ``{}`` (or the user's own
    ``force_quick_gelu``); pass the result to ``open_clip.create_model*``."""
    if force_quick_gelu:
        return {"force_quick_gelu": True}
    if not needs_quickgelu(model_name, pretrained):
        return {}
    logging.info(f"{where + ': ' if where else ''}{model_name} with pretrained={pretrained!r}: OpenAI weights need "
                 f"QuickGELU; building it with force_quick_gelu=True"
                 + (f" (the same as {quickgelu_name(model_name)})" if quickgelu_name(model_name) else ""))
    return {"force_quick_gelu": True}


def activation_name(model: torch.nn.Module) -> str:
    """``"quick_gelu"`` when any module of ``model`` is open_clip's QuickGELU, else ``"gelu"`` (the default
    of every other open_clip tower this package builds)."""
    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "gelu"
