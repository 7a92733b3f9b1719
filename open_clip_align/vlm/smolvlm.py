"""ALIGN inside SmolVLM / Idefics3 (spec ``alignvlm.md`` §2, "SmolVLM style"): the model's modality projection is
replaced, everything else of the model is kept.

An ``Idefics3ForConditionalGeneration`` (or ``SmolVLMForConditionalGeneration``) runs: image splitting (the
processor's tiles + global view) -> SigLIP vision model -> its connector = pixel shuffle (s×s patches folded into
channels, ``[tiles, P, d] -> [tiles, P/s², d·s²]``) -> **modality projection** -> the ``<image>`` positions of
the processor's interleaved text (:mod:`.interleaved`) -> the text model. :class:`SmolVLMCaptioner` swaps only the
modality projection, as a module (no transformers class is patched):

* ``connector="align"``: :class:`AlignProjection`, the ALIGN connector on the pixel-shuffled features with
  ``d' = d·s²`` (W1: d·s² -> D, W2 a *copy* of the model's LM head, P·E with E the text model's live input table
  read at every call, never stored);
* ``connector="mlp"``: the model's own projection (``Linear(d·s² -> D, no bias)`` with the weights in the
  directory), the baseline arm.

Only the replaced projection, and the text model when it is trained, are saved (``save_connector``,
``save_trained_lm``); the rest is rebuilt from the directory (``vlm_path``) recorded in the checkpoint.
"""
import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import UserError
from .connector import AlignConnector
from .interleaved import InterleavedBatcher, InterleavedLayout
from .model import ConnectorFiles

__all__ = ["AlignProjection", "SMOLVLM", "SmolVLMCaptioner", "SmolVLMError", "build_smolvlm", "check_smolvlm_dir",
           "load_smolvlm", "to_rgb"]

SMOLVLM = "smolvlm"
MODEL_TYPES = ("idefics3", "smolvlm")
LM_WEIGHTS = "model.safetensors"


class SmolVLMError(UserError):
    """A ``--vlm-path`` that is not a loadable SmolVLM / Idefics3 directory, or trained weights that do not fit."""


def to_rgb(image):
    """The SmolVLM "preprocess": images stay PIL (RGB); the processor resizes, splits and normalises them."""
    return image.convert("RGB")


def check_smolvlm_dir(path: Union[str, os.PathLike, None]) -> None:
    """Raise :class:`SmolVLMError` unless ``path`` is a folder with an Idefics3 / SmolVLM ``config.json`` and
    processor files, without loading any weights."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_dir():
        raise SmolVLMError(f"--vlm-path {path}: {'is a file' if path.exists() else 'not found'}; expected a local "
                           "SmolVLM / Idefics3 directory (config.json, weights, processor files)")
    config = path / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise SmolVLMError(f"--vlm-path {path}: cannot read {config.name} ({type(err).__name__})") from None
    if model_type not in MODEL_TYPES:
        raise SmolVLMError(f"--vlm-path {path}: config.json has model_type {model_type!r}; expected one of "
                           f"{', '.join(MODEL_TYPES)} (a SmolVLM / Idefics3 model)")
    if not any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise SmolVLMError(f"--vlm-path {path}: no processor files (processor_config.json or "
                           "preprocessor_config.json); save the processor next to the model")


def load_smolvlm(path: Union[str, os.PathLike]):
    """``(model, processor)`` from a local directory (``local_files_only``), in fp32 and eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    check_smolvlm_dir(path)
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SmolVLMError(f"--vlm-path {path}: cannot load the model or its processor ({first})") from None
    return model.eval(), processor


class AlignProjection(nn.Module):
    """ALIGN as the modality projection: pixel-shuffled features ``[tiles, T, d·s²]`` -> ``[tiles, T, D]``.

    ``embeddings`` returns the text model's input-embedding module when called; its weight (E) is read at every
    call and never registered here. With ``record_probs`` set, the last P ``[tiles, T, S]`` is kept in
    ``last_probs`` (the trainer's P diagnostics).
    """

    def __init__(self, align: AlignConnector, embeddings: Callable[[], nn.Module]):
        super().__init__()
        self.align = align
        self._embeddings = embeddings
        self.record_probs = False
        self.last_probs: Optional[torch.Tensor] = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out, probs = self.align(features, self._embeddings().weight, return_probs=True)
        self.last_probs = probs if self.record_probs else None
        return out


class SmolVLMCaptioner(ConnectorFiles, nn.Module):
    """A SmolVLM / Idefics3 model with its modality projection replaced (module docstring), trained and used for
    captioning with the interleaved layout.

    Args:
        vlm: an ``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration``.
        connector: ``"align"`` (replace the projection) or ``"mlp"`` (keep the model's own).
        freeze_lm: freeze the text model and LM head (stage A). The vision model is always frozen.
        connector_kwargs: extra :class:`AlignConnector` arguments (no token reduction: SmolVLM's pixel shuffle
            runs before the projection).
        vlm_path: the directory the model came from (recorded with the connector).
    """

    def __init__(self, vlm: nn.Module, connector: str = "align", *, freeze_lm: bool = False,
                 connector_kwargs: Optional[dict] = None, vlm_path: Optional[str] = None, caption_sep: str = " "):
        super().__init__()
        self.vlm = vlm
        self.vlm_path = vlm_path
        self.caption_sep = caption_sep
        config = vlm.config
        self.scale_factor = int(config.scale_factor)
        self.vision_dim = int(config.vision_config.hidden_size) * self.scale_factor ** 2
        kwargs = dict(connector_kwargs or {})
        if kwargs.get("reduction"):
            raise ValueError("SmolVLM folds tokens with its own pixel shuffle; no reduction before the projection")
        kwargs.pop("reduction", None)
        kwargs.pop("reduction_factor", None)
        if connector == "align":
            align = AlignConnector.from_lm(self.vision_dim, vlm, **kwargs)
            vlm.model.connector.modality_projection = AlignProjection(align, vlm.get_input_embeddings)
        elif connector != "mlp":
            raise ValueError(f"unknown connector {connector!r}; expected 'align' or 'mlp'")
        elif kwargs:
            raise ValueError("connector_kwargs only apply to the align connector")
        vlm.requires_grad_(False)
        self.projection.requires_grad_(True)
        if not freeze_lm:
            self.lm.requires_grad_(True)
            vlm.lm_head.requires_grad_(True)
        self.visual.eval()

    # ------------------------------------------------------------------------------------------ parts
    @property
    def projection(self) -> nn.Module:
        """The module between the pixel shuffle and the text model (ours for ALIGN, the model's for MLP)."""
        return self.vlm.model.connector.modality_projection

    @property
    def connector(self) -> nn.Module:
        """The trained connector: the :class:`AlignConnector`, or the model's own projection (MLP arm)."""
        proj = self.projection
        return proj.align if isinstance(proj, AlignProjection) else proj

    @property
    def connector_type(self) -> str:
        return "align" if isinstance(self.projection, AlignProjection) else "mlp"

    @property
    def visual(self) -> nn.Module:
        return self.vlm.model.vision_model

    @property
    def lm(self) -> nn.Module:
        """The text model (a PEFT model once LoRA adapters are applied); the LM head is ``vlm.lm_head``."""
        return self.vlm.model.text_model

    @property
    def vision_activation(self) -> str:
        return str(getattr(self.vlm.config.vision_config, "hidden_act", "unknown"))

    vision_force_quick_gelu = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.visual.eval()
        return self

    # -------------------------------------------------------------------------------------- train / decode
    def training_collate(self, processor, prompt: str, max_caption_tokens: Optional[int] = None):
        """The DataLoader collate: ``[(PIL image, caption), ...]`` -> the :meth:`forward` keyword batch."""
        return InterleavedBatcher(InterleavedLayout(processor, self.caption_sep, max_caption_tokens), prompt)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the text model's layer activations in the backward pass (non-reentrant)."""
        self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                pixel_attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                return_outputs: bool = False, return_probs: bool = False):
        """Next-token CE over the caption tokens + end-of-utterance (the model's own loss on ``labels``).

        Inputs as made by :meth:`InterleavedLayout.encode`. Returns the loss (or the output object with
        ``return_outputs``); ``return_probs=True`` also returns ALIGN's P ``[tiles, T, S]`` (None for the MLP)."""
        proj = self.projection
        align = isinstance(proj, AlignProjection)
        if align:
            proj.record_probs = return_probs
        try:
            out = self.vlm(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                           pixel_attention_mask=pixel_attention_mask, labels=labels, use_cache=False)
            probs = proj.last_probs if align else None
        finally:
            if align:
                proj.record_probs, proj.last_probs = False, None
        result = out if return_outputs else out.loss
        return (result, probs) if return_probs else result

    @torch.no_grad()
    def generate(self, images: Sequence, prompts: Sequence[str], processor, max_new_tokens: int = 20,
                 num_beams: int = 1, return_ids: bool = False, shot_images: Optional[Sequence[Sequence]] = None,
                 shot_captions: Optional[Sequence[Sequence[str]]] = None,
                 **gen_kwargs) -> Union[List[str], torch.Tensor]:
        """Greedy (``num_beams=1``) or beam-search captions, left-padded; ``images`` are PIL images (one per
        prompt), ``shot_images`` / ``shot_captions`` k in-context examples per row. Decodes the new tokens only,
        cut at the first end-of-utterance."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if (shot_images is None) != (shot_captions is None):
            raise ValueError("few-shot generation needs both shot_images and shot_captions")
        rows = [list(shot_images[i]) + [img] for i, img in enumerate(images)] if shot_images is not None \
            else [[img] for img in images]
        layout = InterleavedLayout(processor, self.caption_sep)
        batch = layout.encode(rows, prompts, None, "left", shots=shot_captions)
        device = next(self.vlm.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        stop = sorted({t for t in (layout.eos, processor.tokenizer.eos_token_id) if t is not None})
        kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, eos_token_id=stop,
                      pad_token_id=layout.pad)
        if num_beams == 1:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(gen_kwargs)
        out = self.vlm.generate(**batch, **kwargs)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        new = sequences[:, batch["input_ids"].shape[1]:]
        if return_ids:
            return new
        texts = []
        for row in new.tolist():
            cut = [i for i, t in enumerate(row) if t in stop]
            texts.append(processor.tokenizer.decode(row[:cut[0]] if cut else row, skip_special_tokens=True).strip())
        return texts

    # ----------------------------------------------------------------------------------------- save / load
    def connector_config(self) -> dict:
        embed = self.vlm.get_input_embeddings().weight
        cfg = {"connector_type": self.connector_type, "vlm": SMOLVLM, "vlm_path": self.vlm_path,
               "vlm_class": type(self.vlm).__name__, "scale_factor": self.scale_factor,
               "vision_dim": self.vision_dim, "lm_hidden": int(embed.shape[1]), "vocab_size": int(embed.shape[0]),
               "vision_activation": self.vision_activation}
        c = self.connector
        if isinstance(c, AlignConnector):
            cfg["connector_kwargs"] = {"second_ln": c.ln2 is not None, "affine_ln": c.ln1.elementwise_affine,
                                       "softmax_fp32": c.softmax_fp32, "w1_bias": c.w1.bias is not None,
                                       "detach_embeddings": c.detach_embeddings}
            cfg["vocab_subset"] = None if c.vocab_subset is None else c.vocab_subset.tolist()
        else:
            cfg["connector_kwargs"] = {}
        return cfg

    def _lm_state(self) -> dict:
        state = {f"text_model.{k}": v for k, v in self.lm.state_dict().items()}
        state.update({f"lm_head.{k}": v for k, v in self.vlm.lm_head.state_dict().items()})
        return state

    def save_trained_lm(self, directory: Union[str, os.PathLike], processor=None) -> None:
        """The trained text model + LM head as ``model.safetensors`` (the vision model is rebuilt from
        ``vlm_path``; tied tensors are written once each)."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in self._lm_state().items()},
                  os.path.join(directory, LM_WEIGHTS))

    def load_trained_lm(self, directory: Union[str, os.PathLike]) -> None:
        """Load what :meth:`save_trained_lm` wrote; :class:`SmolVLMError` naming the file when it does not fit."""
        from safetensors.torch import load_file

        path = os.path.join(directory, LM_WEIGHTS)
        try:
            state = load_file(path)
        except Exception as err:  # safetensors' own error types for a missing, torn or foreign file
            raise SmolVLMError(f"{path}: not the trained text model of a SmolVLM ({type(err).__name__})") from None
        expected = self._lm_state()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or shapes:
            raise SmolVLMError(f"{path}: does not fit {self.vlm_path} (missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]}, other shapes {shapes[:3]})")
        self.lm.load_state_dict({k[len("text_model."):]: v for k, v in state.items() if k.startswith("text_model.")})
        self.vlm.lm_head.load_state_dict({k[len("lm_head."):]: v for k, v in state.items()
                                          if k.startswith("lm_head.")})


def build_smolvlm(config: dict, lm_dir: Optional[str] = None, lora_dir: Optional[str] = None,
                  trainable: bool = True) -> Tuple[SmolVLMCaptioner, object, Callable]:
    """``(model, processor, to_rgb)`` for a SmolVLM model config (``vlm_path``, ``connector``, ``lm_training``,
    ``lora``): the trained text model from ``lm_dir``, LoRA adapters from ``lora_dir``."""
    from .build import apply_lora

    vlm, processor = load_smolvlm(config["vlm_path"])
    mode = config.get("lm_training", "frozen")
    model = SmolVLMCaptioner(vlm, config.get("connector", "align"), freeze_lm=mode != "full" or not trainable,
                             connector_kwargs=dict(config.get("connector_kwargs") or {}),
                             vlm_path=config["vlm_path"])
    if lm_dir is not None:
        model.load_trained_lm(lm_dir)
    if mode == "lora":
        lora = config.get("lora") or {}
        model.vlm.model.text_model = apply_lora(model.lm, int(lora.get("r", 64)), int(lora.get("alpha", 64)),
                              float(lora.get("dropout", 0.0)), adapter_dir=lora_dir, trainable=trainable,
                              task_type=None)
    if not trainable:
        model.requires_grad_(False)
    return model, processor, to_rgb
