"""AlignVLM: an open_clip vision tower + a connector (ALIGN or MLP) + any transformers causal LM.

Sequence layout (spec ``alignvlm.md`` §2, "concat")::

    training   (right-padded):  [BOS] visual(N') prompt caption [EOS] pad ...
    generation (left-padded):   pad ... [BOS] visual(N') prompt

The token layout is computed from text alone (:class:`~open_clip_align.vlm.layout.SequenceLayout`, so it can
run in DataLoader workers); :meth:`AlignVLM.forward` takes tensors only. Everything is fed to the LM as
``inputs_embeds``: text tokens are looked up in the LM's own input-embedding module, visual tokens are the
connector output (for ALIGN a convex combination of the rows of the same live table,
``lm.get_input_embeddings().weight``, read at call time). Labels are ``-100`` everywhere except the caption
tokens and the EOS, so the loss is next-token CE on the caption only (HF shifts the labels itself).

The vision tower and the LM are *referenced* by :meth:`AlignVLM.save_connector`, never duplicated: only the
connector weights and a small JSON of settings are written.
"""
import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import UserError
from ..models.activation import activation_name, force_quickgelu_kwargs
from .connector import AlignConnector, MLPConnector
from .layout import IGNORE_INDEX, SequenceLayout, special_token_id

__all__ = ["AlignVLM", "CONNECTOR_CONFIG_NAME", "CONNECTOR_WEIGHTS_NAME", "ConnectorFileError", "IGNORE_INDEX",
           "load_state_file", "patch_tokens", "state_dict_mismatch"]

CONNECTOR_CONFIG_NAME = "alignvlm_connector.json"
CONNECTOR_WEIGHTS_NAME = "alignvlm_connector.pt"
FeatureTransform = Callable[[torch.Tensor], torch.Tensor]


class ConnectorFileError(UserError):
    """A saved connector (or other weights file) that is missing, unreadable or does not fit the model; the
    message names the file and what it is not."""


def load_state_file(path: Union[str, os.PathLike], what: str) -> Dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict saved at ``path`` (loaded on CPU, ``weights_only``), or
    :class:`ConnectorFileError` saying that ``path`` is not ``what``: missing, truncated, damaged, not written by
    ``torch.save`` or holding something other than tensors by name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConnectorFileError(f"{path}: not found (expected {what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # zip/unpickling errors of every kind: the file is not a readable torch file
        raise ConnectorFileError(f"{path}: not {what}: torch cannot read it ({type(err).__name__}); the file is "
                                 "truncated, damaged or was not written by torch.save") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConnectorFileError(f"{path}: not {what}: it holds a {type(state).__name__}, not tensors by name")
    return state


def state_dict_mismatch(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> Optional[str]:
    """Missing and unexpected keys and shape differences of ``state`` against ``expected``, or None."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = ([f"missing {', '.join(missing[:4])}"] if missing else []) + \
        ([f"unexpected {', '.join(unexpected[:4])}"] if unexpected else []) + \
        ([f"shape (file vs model) {', '.join(shapes[:3])}"] if shapes else [])
    return "; ".join(parts) or None


def _drop_prefix(tokens: torch.Tensor) -> torch.Tensor:
    """Drop CLS/prefix tokens so the remaining patch grid is square (no-op when it already is)."""
    n = tokens.shape[1]
    for prefix in range(0, min(n, 9)):
        side = math.isqrt(n - prefix)
        if side > 0 and side * side == n - prefix:
            return tokens[:, prefix:] if prefix else tokens
    raise ValueError(f"cannot find a square patch grid in {n} vision tokens")


def patch_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens ``[B, N, width]`` (square grid, no CLS) from an open_clip vision tower.

    Uses ``visual.output_tokens`` (open_clip's ``VisionTransformer`` then returns ``(pooled, tokens)`` with the
    CLS token already removed); towers without that flag fall back to ``forward_intermediates`` (last block).
    """
    if hasattr(visual, "output_tokens"):
        if not visual.output_tokens:
            visual.output_tokens = True
        out = visual(images)
        tokens = out[1] if isinstance(out, (tuple, list)) else out
    elif hasattr(visual, "forward_intermediates"):
        out = visual.forward_intermediates(images, indices=1, output_fmt="NLC", intermediates_only=True)
        tokens = out[-1] if isinstance(out, (tuple, list)) else out
    else:
        raise TypeError(f"{type(visual).__name__} exposes neither output_tokens nor forward_intermediates")
    if tokens.dim() != 3:
        raise ValueError(f"expected [B, N, width] vision tokens, got shape {tuple(tokens.shape)}")
    return _drop_prefix(tokens)


class ConnectorFiles:
    """Save and load a model's trained connector (``self.connector``) as ``alignvlm_connector.pt`` + ``.json``.

    The model provides ``connector`` (the module whose weights are saved) and ``connector_config()`` (the settings
    that identify it: type, dims, what it plugs into); the tower and the LM are referenced, never saved here.
    """

    def save_connector(self, directory: Union[str, os.PathLike]) -> str:
        """Write the connector weights (``alignvlm_connector.pt``) and its settings JSON to ``directory``.
        The tower and the LM are referenced by name, not saved. Returns the directory."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.connector.state_dict().items()}
        torch.save(state, os.path.join(directory, CONNECTOR_WEIGHTS_NAME))
        with open(os.path.join(directory, CONNECTOR_CONFIG_NAME), "w") as f:
            json.dump(self.connector_config(), f, indent=2, sort_keys=True)
        return directory

    @staticmethod
    def read_connector_config(directory: Union[str, os.PathLike]) -> dict:
        """The settings JSON of a connector folder; :class:`ConnectorFileError` naming the file when it is missing
        or is not such a file."""
        path = os.path.join(os.fspath(directory), CONNECTOR_CONFIG_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        except FileNotFoundError:
            raise ConnectorFileError(f"{path}: not found; a connector folder (AlignVLM.save_connector) holds "
                                     f"{CONNECTOR_CONFIG_NAME} and {CONNECTOR_WEIGHTS_NAME}") from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConnectorFileError(f"{path}: not an AlignVLM connector settings file (not JSON: {err})") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("connector_type"), str):
            raise ConnectorFileError(f"{path}: not an AlignVLM connector settings file (no connector_type)")
        return cfg

    def load_connector(self, directory: Union[str, os.PathLike], strict: bool = True) -> dict:
        """Load connector weights saved by :meth:`save_connector` into this model's connector.

        Checks that the connector type and dims match and, with ``strict``, that the weights file holds exactly
        this connector's tensors with their shapes; a mismatch, a missing, truncated or foreign file raises
        :class:`ConnectorFileError` naming the file. Restores a saved ``vocab_subset``. Returns the settings.
        """
        cfg = self.read_connector_config(directory)
        cfg_path = os.path.join(os.fspath(directory), CONNECTOR_CONFIG_NAME)
        mine = self.connector_config()
        for key in ("connector_type", "vision_dim", "lm_hidden", "vocab_size"):
            if cfg.get(key) != mine.get(key):
                raise ConnectorFileError(f"{cfg_path}: saved connector {key}={cfg.get(key)!r} does not match this "
                                         f"model's {mine.get(key)!r} (a connector of another tower, LM or type)")
        path = os.path.join(os.fspath(directory), CONNECTOR_WEIGHTS_NAME)
        state = load_state_file(path, f"the weights of an AlignVLM {cfg['connector_type']} connector")
        if strict:
            problem = state_dict_mismatch(state, self.connector.state_dict())
            if problem:
                raise ConnectorFileError(f"{path}: not the weights of the {cfg['connector_type']} connector that "
                                         f"{CONNECTOR_CONFIG_NAME} describes ({problem})")
        self.connector.load_state_dict(state, strict=strict)
        if isinstance(self.connector, AlignConnector):
            self.connector.set_vocab_subset(cfg.get("vocab_subset"))
        return cfg


class AlignVLM(ConnectorFiles, nn.Module):
    """Vision tower -> connector -> causal LM (prefix of visual tokens, plain concatenation).

    Args:
        visual: an open_clip vision tower (``open_clip.create_model(name).visual``) that yields patch tokens.
        lm: a transformers ``*ForCausalLM`` accepting ``inputs_embeds`` (Llama, Qwen2, Mistral, GPT-2, ...).
        connector: ``"align"`` (default), ``"mlp"``, or a ready connector module (same forward signature).
        vision_dim: token width of the tower; inferred (``transformer.width`` or a probe forward) if ``None``.
        freeze_vision: freeze the tower (default) and run it under ``no_grad`` in eval mode.
        freeze_lm: freeze the LM's parameters (stage A, connector-only training). Default ``False``.
        connector_kwargs: extra arguments for :class:`AlignConnector` / :class:`MLPConnector`.
        vision_model_name / vision_pretrained: recorded in the connector JSON (references, not weights).
        vision_force_quick_gelu: whether the tower was built with ``force_quick_gelu=True`` (recorded too, so a
            rebuild gets the activation the connector was trained on); ``None``: read off the tower (True when
            it holds QuickGELU modules).
        caption_sep: prepended to a caption that does not start with whitespace before it is tokenised
            separately from the prompt (so BPE tokenizers see "prompt caption", not "promptcaption").
    """

    def __init__(self, visual: nn.Module, lm: nn.Module, connector: Union[str, nn.Module] = "align", *,
                 vision_dim: Optional[int] = None, freeze_vision: bool = True, freeze_lm: bool = False,
                 connector_kwargs: Optional[dict] = None, vision_model_name: Optional[str] = None,
                 vision_pretrained: Optional[str] = None, vision_force_quick_gelu: Optional[bool] = None,
                 caption_sep: str = " "):
        super().__init__()
        self.visual = visual
        self.lm = lm
        self.vision_model_name = vision_model_name
        self.vision_pretrained = vision_pretrained
        self.vision_force_quick_gelu = (activation_name(visual) == "quick_gelu" if vision_force_quick_gelu is None
                                        else bool(vision_force_quick_gelu))
        self.caption_sep = caption_sep
        self.freeze_vision = freeze_vision
        if hasattr(visual, "output_tokens"):
            visual.output_tokens = True
        self.vision_dim = int(vision_dim or self._infer_vision_dim())
        kwargs = dict(connector_kwargs or {})
        if isinstance(connector, str):
            kind = connector.lower()
            embed = lm.get_input_embeddings().weight
            if kind == "align":
                connector = AlignConnector.from_lm(self.vision_dim, lm, **kwargs)
            elif kind == "mlp":
                connector = MLPConnector(self.vision_dim, embed.shape[1], **kwargs).to(embed.device)
            else:
                raise ValueError(f"unknown connector {connector!r}; expected 'align' or 'mlp'")
        elif kwargs:
            raise ValueError("connector_kwargs only apply when connector is given by name")
        self.connector = connector
        if freeze_vision:
            self.visual.requires_grad_(False)
            self.visual.eval()
        if freeze_lm:
            self.lm.requires_grad_(False)

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def from_open_clip(cls, vision_model_name: str, lm: nn.Module, connector: Union[str, nn.Module] = "align",
                       pretrained: Optional[str] = None, force_quick_gelu: bool = False, **kwargs) -> "AlignVLM":
        """Vision tower = ``open_clip.create_model(vision_model_name, pretrained=pretrained).visual``.

        OpenAI weights need QuickGELU: a GELU name with such a tag (``"ViT-B-16"`` + ``"openai"``) is built with
        ``force_quick_gelu=True`` after one log line (as ``"ViT-B-16-quickgelu"``); ``force_quick_gelu=True``
        forces it for any tower."""
        import open_clip

        quick = force_quickgelu_kwargs(vision_model_name, pretrained, force_quick_gelu, where="AlignVLM vision tower")
        clip = open_clip.create_model(vision_model_name, pretrained=pretrained, **quick)
        return cls(clip.visual, lm, connector, vision_model_name=vision_model_name,
                   vision_pretrained=pretrained, vision_force_quick_gelu=bool(quick), **kwargs)

    @classmethod
    def from_pretrained(cls, vision_model_name: str, lm_path: str, connector: Union[str, nn.Module] = "align",
                        pretrained: Optional[str] = None, lm_kwargs: Optional[dict] = None,
                        **kwargs) -> "AlignVLM":
        """LM = ``AutoModelForCausalLM.from_pretrained(lm_path, local_files_only=True, **lm_kwargs)``."""
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(lm_path, local_files_only=True, **(lm_kwargs or {}))
        return cls.from_open_clip(vision_model_name, lm, connector, pretrained=pretrained, **kwargs)

    def _probe_images(self) -> torch.Tensor:
        """One all-zero image ``[1, 3, H, W]`` at the tower's input size, dtype and device."""
        size = getattr(self.visual, "image_size", 224)
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        param = next(self.visual.parameters())
        return torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype)

    def _infer_vision_dim(self) -> int:
        width = getattr(getattr(self.visual, "transformer", None), "width", None)
        if width is not None:
            return int(width)
        with torch.no_grad():
            return int(patch_tokens(self.visual, self._probe_images()).shape[-1])

    @property
    def num_visual_tokens(self) -> int:
        """N', the visual tokens per image fed to the LM (after token reduction); probed once and cached."""
        if getattr(self, "_num_visual_tokens", None) is None:
            with torch.no_grad():
                self._num_visual_tokens = int(self.embed_images(self._probe_images()).shape[1])
        return self._num_visual_tokens

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_vision:
            self.visual.eval()
        return self

    @property
    def connector_type(self) -> str:
        if isinstance(self.connector, AlignConnector):
            return "align"
        if isinstance(self.connector, MLPConnector):
            return "mlp"
        return type(self.connector).__name__

    # ---------------------------------------------------------------------------------------------- images
    def encode_vision(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, N, d]`` from the tower (under ``no_grad`` when the tower is frozen)."""
        param = next(self.visual.parameters())
        images = images.to(device=param.device, dtype=param.dtype)
        if self.freeze_vision:
            with torch.no_grad():
                return patch_tokens(self.visual, images)
        return patch_tokens(self.visual, images)

    def embed_images(self, images: torch.Tensor, feature_noise: Optional[FeatureTransform] = None,
                     return_probs: bool = False):
        """Visual tokens ``[B, N', D]``: the connector applied to the patch tokens, using the LM's live input
        embedding table (``lm.get_input_embeddings().weight``, read now).

        ``feature_noise`` maps the tower features ``[B, N, d]`` before the connector (the noise-robustness
        check). ``return_probs=True`` returns ``(tokens, P [B, N', S] or None for an MLP connector)``.
        """
        feats = self.encode_vision(images)
        if feature_noise is not None:
            feats = feature_noise(feats)
        embed = self.lm.get_input_embeddings().weight
        return self.connector(feats, embed, return_probs=return_probs)

    # ---------------------------------------------------------------------------------------------- inputs
    def layout(self, tokenizer, max_caption_tokens: Optional[int] = None) -> SequenceLayout:
        """This model's :class:`SequenceLayout` for ``tokenizer`` (N' visual tokens, BOS/EOS/pad ids)."""
        config = getattr(self.lm, "config", None)
        eos = special_token_id(tokenizer, config, "eos")
        pad = special_token_id(tokenizer, config, "pad")
        if pad is None:
            pad = eos if eos is not None else 0
        return SequenceLayout(self.num_visual_tokens, special_token_id(tokenizer, config, "bos"), eos, pad,
                              self.caption_sep, max_caption_tokens)

    def tokenize(self, prompts: Sequence[str], captions: Optional[Sequence[str]], tokenizer,
                 padding_side: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """Token layout ``[BOS, visual, prompt, caption, EOS]`` (``[BOS, visual, prompt]`` without captions), see
        :meth:`SequenceLayout.encode`: ``input_ids``, ``attention_mask``, ``visual_mask`` (+ ``labels``)."""
        return self.layout(tokenizer).encode(tokenizer, prompts, captions, padding_side)

    def embed_inputs(self, images: torch.Tensor, input_ids: torch.Tensor, visual_mask: torch.Tensor,
                     feature_noise: Optional[FeatureTransform] = None, return_probs: bool = False,
                     images_per_row: int = 1):
        """``inputs_embeds [B, L, D]``: text rows from the LM's input embeddings, visual rows (``visual_mask``,
        exactly k·N' per row) from the connector. ``images [B·k, 3, H, W]`` hold row ``b``'s k images at
        ``b·k .. b·k+k-1`` in the order of its visual blocks (``k = images_per_row``: few-shot examples first, then
        the image to caption). ``return_probs=True`` also returns the connector's P."""
        k = images_per_row
        if images.shape[0] != input_ids.shape[0] * k:
            rows = f"{input_ids.shape[0]} token rows" + (f" x {k} images per row" if k > 1 else "")
            raise ValueError(f"{images.shape[0]} images but {rows}")
        visual, probs = self.embed_images(images, feature_noise, return_probs=True)      # [B·k, N', D]
        if k > 1:
            visual = visual.reshape(input_ids.shape[0], k * visual.shape[1], visual.shape[2])
        counts = visual_mask.sum(dim=1)
        if not bool((counts == visual.shape[1]).all()):
            raise ValueError(f"visual_mask marks {counts.tolist()} positions per row, but the connector gives "
                             f"{visual.shape[1]} visual tokens per image")
        device = visual.device
        embeds = self.lm.get_input_embeddings()(input_ids.to(device))
        embeds = embeds.masked_scatter(visual_mask.to(device).unsqueeze(-1), visual.to(embeds.dtype))
        return (embeds, probs) if return_probs else embeds

    def build_inputs(self, images: torch.Tensor, prompts: Sequence[str],
                     captions: Optional[Sequence[str]], tokenizer,
                     padding_side: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """:meth:`tokenize` + :meth:`embed_inputs`: ``inputs_embeds [B, L, D]``, ``attention_mask [B, L]``
        (long), ``input_ids [B, L]`` (text ids; the pad id at visual and padding positions), ``visual_mask
        [B, L]`` and, with captions, ``labels [B, L]`` (``-100`` except caption tokens and EOS), all on the
        model's device. ``padding_side`` defaults to right with captions and left without."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        batch = self.tokenize(prompts, captions, tokenizer, padding_side)
        embeds = self.embed_inputs(images, batch["input_ids"], batch["visual_mask"])
        out = {k: v.to(embeds.device) for k, v in batch.items()}
        out["inputs_embeds"] = embeds
        return out

    # ---------------------------------------------------------------------------------------------- train
    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                visual_mask: torch.Tensor, labels: Optional[torch.Tensor] = None, return_outputs: bool = False,
                return_probs: bool = False):
        """Next-token CE over the caption tokens + EOS (the LM's own loss, HF shifts ``labels``).

        ``images [B, 3, H, W]``; ``input_ids``, ``attention_mask``, ``visual_mask``, ``labels`` ``[B, L]`` as
        made by :meth:`tokenize` (or a DataLoader collate using :meth:`layout`). Returns the loss, or the LM
        output object (``.loss``, ``.logits``) with ``return_outputs=True``; with ``return_probs=True`` a
        pair ``(that, P [B, N', S] or None)``.
        """
        embeds, probs = self.embed_inputs(images, input_ids, visual_mask, return_probs=True)
        device = embeds.device
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask.to(device),
                      labels=None if labels is None else labels.to(device), use_cache=False)
        result = out if return_outputs else out.loss
        return (result, probs) if return_probs else result

    def training_collate(self, tokenizer, prompt: str, max_caption_tokens: Optional[int] = None):
        """The DataLoader collate of this model: ``[(image [3,H,W], caption), ...]`` -> the :meth:`forward`
        keyword batch (``images``, ``input_ids``, ``attention_mask``, ``visual_mask``, ``labels``)."""
        from .caption_data import CaptionBatcher

        return CaptionBatcher(self.layout(tokenizer, max_caption_tokens), tokenizer, prompt)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the LM's layer activations in the backward pass (non-reentrant, so a frozen LM still passes
        gradients to the connector)."""
        self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def save_trained_lm(self, directory: Union[str, os.PathLike], tokenizer) -> None:
        """A fully trained LM as a Hugging Face directory (weights + tokenizer, loadable as ``--lm``)."""
        self.lm.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    def caption_loss(self, images: torch.Tensor, prompts: Sequence[str], captions: Sequence[str], tokenizer,
                     return_outputs: bool = False):
        """:meth:`forward` on :meth:`tokenize` of raw prompts and captions (right padding)."""
        return self(images, **self.tokenize(prompts, captions, tokenizer, "right"), return_outputs=return_outputs)

    # ---------------------------------------------------------------------------------------------- decode
    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompts: Sequence[str], tokenizer, max_new_tokens: int = 20,
                 num_beams: int = 1, return_ids: bool = False, feature_noise: Optional[FeatureTransform] = None,
                 shot_images: Optional[torch.Tensor] = None, shot_captions: Optional[Sequence[Sequence[str]]] = None,
                 **gen_kwargs) -> Union[List[str], torch.Tensor]:
        """Greedy (``num_beams=1``) or beam-search captions from left-padded ``[pad.., BOS, visual, prompt]``.

        Few-shot: ``shot_images [B, k, 3, H, W]`` and ``shot_captions`` (k per row) put k in-context examples
        ``visual prompt caption EOS`` before each row's image (:meth:`SequenceLayout.encode`). Decodes only the
        new tokens (cut at the first EOS). ``return_ids=True`` returns the new-token id tensor ``[B, T]`` from
        ``lm.generate`` instead. ``feature_noise`` is applied to the tower features (see :meth:`embed_images`).
        Extra ``gen_kwargs`` go to ``lm.generate``.
        """
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        k = 0 if shot_images is None else int(shot_images.shape[1])
        if (shot_captions is None) != (shot_images is None) or \
                (k and [len(c) for c in shot_captions] != [k] * len(prompts)):
            raise ValueError("few-shot generation needs shot_images [B, k, 3, H, W] and k shot_captions per row")
        layout = self.layout(tokenizer)
        batch = layout.encode(tokenizer, prompts, None, padding_side="left", shots=shot_captions)
        if k:
            images = torch.cat([shot_images, images.unsqueeze(1)], dim=1).flatten(0, 1)
        embeds = self.embed_inputs(images, batch["input_ids"], batch["visual_mask"], feature_noise,
                                   images_per_row=k + 1)
        eos = layout.eos
        kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                      eos_token_id=eos, pad_token_id=layout.pad)
        if num_beams == 1:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(gen_kwargs)
        new = self.lm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(embeds.device),
                               **kwargs)
        if not isinstance(new, torch.Tensor):
            new = new.sequences
        if return_ids:
            return new
        texts = []
        for row in new.tolist():
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
        return texts

    # ------------------------------------------------------------------------------------------ save / load
    def connector_config(self) -> dict:
        """Settings that identify the connector and what it plugs into (written next to its weights)."""
        c = self.connector
        embed = self.lm.get_input_embeddings().weight
        cfg = {"connector_type": self.connector_type, "vision_model_name": self.vision_model_name,
               "vision_pretrained": self.vision_pretrained, "vision_force_quick_gelu": self.vision_force_quick_gelu,
               "vision_activation": activation_name(self.visual), "vision_dim": self.vision_dim,
               "lm_hidden": int(embed.shape[1]), "vocab_size": int(embed.shape[0]),
               "lm_name_or_path": getattr(getattr(self.lm, "config", None), "_name_or_path", None) or None,
               "lm_class": type(self.lm).__name__}
        if isinstance(c, AlignConnector):
            cfg["connector_kwargs"] = {
                "reduction": c.reduction, "reduction_factor": c.reduction_factor,
                "second_ln": c.ln2 is not None, "affine_ln": c.ln1.elementwise_affine,
                "softmax_fp32": c.softmax_fp32, "w1_bias": c.w1.bias is not None,
                "detach_embeddings": c.detach_embeddings}
            cfg["vocab_subset"] = None if c.vocab_subset is None else c.vocab_subset.tolist()
        elif isinstance(c, MLPConnector):
            cfg["connector_kwargs"] = {"reduction": c.reduction, "reduction_factor": c.reduction_factor,
                                       "hidden": c.fc1.out_features, "bias": c.fc1.bias is not None}
        return cfg

    @classmethod
    def from_connector_dir(cls, directory: Union[str, os.PathLike], lm: Optional[nn.Module] = None,
                           visual: Optional[nn.Module] = None, **kwargs) -> "AlignVLM":
        """Rebuild a model from a saved connector: the tower from the recorded open_clip name and activation
        (``vision_force_quick_gelu``; unless ``visual`` is given), the LM from the recorded path via
        ``local_files_only`` (unless ``lm`` is given), then load the connector weights."""
        cfg = cls.read_connector_config(directory)
        if lm is None:
            if not cfg.get("lm_name_or_path"):
                raise ValueError("no lm given and the saved settings record no lm_name_or_path")
            from transformers import AutoModelForCausalLM

            lm = AutoModelForCausalLM.from_pretrained(cfg["lm_name_or_path"], local_files_only=True)
        force = None  # a given tower: read its activation off it
        if visual is None:
            force = bool(cfg.get("vision_force_quick_gelu"))  # older settings (no key) were built as named
            if not cfg.get("vision_model_name"):
                raise ValueError("no visual given and the saved settings record no vision_model_name")
            import open_clip

            visual = open_clip.create_model(cfg["vision_model_name"], pretrained=cfg.get("vision_pretrained"),
                                            **({"force_quick_gelu": True} if force else {})).visual
        ckw = dict(cfg.get("connector_kwargs") or {})
        model = cls(visual, lm, cfg["connector_type"], vision_dim=cfg["vision_dim"], connector_kwargs=ckw,
                    vision_model_name=cfg.get("vision_model_name"), vision_pretrained=cfg.get("vision_pretrained"),
                    vision_force_quick_gelu=force, **kwargs)
        model.load_connector(directory)
        return model
