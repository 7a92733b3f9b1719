"""ComAlign: a compositional alignment head on a frozen CLIP (spec comalign.md §1, §8).

``ComAlignHead`` is the reference ``RetrievalModel``: entity views, relation views and the global image
embedding (all frozen CLIP image embeddings) become one token sequence ``[B, Ne+Nr+1, d]``; a Linear+ReLU
bottleneck, a fixed positional encoding and a 2-layer post-norm ``nn.TransformerEncoder`` refine them into
entity/relation components and a refined global token, compared by cosine with frozen CLIP text embeddings.
Attribute names follow the reference so the released ``ComAlign-CLIP-VIT-B32.pt`` loads strictly.

``ComAlignCLIP`` is open_clip's ``CLIP`` (frozen, always in eval mode) plus a trainable ``comalign_head``. Its
forward returns the standard open_clip dict for ``[B,3,H,W]`` images / ``[B,L]`` tokens and the component
outputs for "component form" inputs (views, phrases or precomputed features; see ``ComAlignCLIP.forward``).
"""
import os
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from ..errors import UserError
from ..models.registry import register_arch

HEAD = "comalign_head."
PE_KEY = "encoder_pos_embedding.positional_encodings"
PE_TOLERANCE = 1e-5


def comalign_positional_encoding(n_slots: int, dim: int) -> torch.Tensor:
    """The reference's fixed PE ``[1, n_slots, dim]``, bit-identical to the released buffer.

    θ(p, i) = p / 10000^(2i/dim) with the *full* channel index i (not ⌊i/2⌋); even channels cos θ, odd sin θ.
    Computed in float32 exactly as the reference does (integer positions and channels, float32 division, power,
    cos and sin): a float64 computation rounds differently, by up to 1.3e-6 at d = 512.
    """
    positions = torch.arange(n_slots, dtype=torch.float32).view(-1, 1)
    channels = torch.arange(dim, dtype=torch.float32).view(1, -1)
    theta = positions / (10000 ** ((2 * channels) / dim))
    pe = torch.zeros(1, n_slots, dim, dtype=torch.float32)
    pe[0, :, ::2] = torch.cos(theta[:, ::2])
    pe[0, :, 1::2] = torch.sin(theta[:, 1::2])
    return pe


class PositionalEncoding(nn.Module):
    """Adds the fixed PE (persistent buffer ``positional_encodings``, so it is in the state dict), then dropout."""

    def __init__(self, n_slots: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.register_buffer("positional_encodings", comalign_positional_encoding(n_slots, dim), persistent=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.positional_encodings.to(x.dtype))


class ComAlignHead(nn.Module):
    """The image-side ComAlign head (reference ``RetrievalModel``); 3,549,952 parameters at d=512.

    ``bottleneck_encoder`` (Linear d→unused_dim + ReLU) is never used by the forward; it exists (frozen)
    because the released checkpoint holds it (``unused_dim=0`` leaves it out of a new head). ``key_padding_mask=True``
    masks pad slots in attention (a new-head option; the reference attends to pads).
    """

    def __init__(self, dim: int = 512, n_entity: int = 10, n_relation: int = 10, heads: int = 4, ffn: int = 512,
                 layers: int = 2, dropout: float = 0.1, unused_dim: int = 256, key_padding_mask: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ComAlign head: dim {dim} must be divisible by heads {heads}")
        if n_entity < 1 or n_relation < 1:
            raise ValueError(f"ComAlign head: need n_entity >= 1 and n_relation >= 1, got {n_entity}, {n_relation}")
        self.dim, self.n_entity, self.n_relation = dim, n_entity, n_relation
        self.key_padding_mask = key_padding_mask
        self.encoder_pos_embedding = PositionalEncoding(n_entity + n_relation + 1, dim, dropout)
        self.bottleneck_box = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=ffn, dropout=dropout,
                                           batch_first=True)
        # no nested tensors: with a padding mask the fast path would zero pad outputs, unlike the training path
        self.transformer_encoder_box = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        if unused_dim:
            # frozen: it never gets a gradient, and DDP (find_unused_parameters=False) rejects such parameters
            self.bottleneck_encoder = nn.Sequential(nn.Linear(dim, unused_dim), nn.ReLU()).requires_grad_(False)

    @property
    def n_slots(self) -> int:
        return self.n_entity + self.n_relation + 1

    def forward(self, entity_in: torch.Tensor, relation_in: torch.Tensor, global_in: torch.Tensor,
                entity_mask: Optional[torch.Tensor] = None,
                relation_mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """entity_in [B,Ne,d], relation_in [B,Nr,d], global_in [B,d] (unnormalised CLIP image embeddings);
        masks [B,Ne]/[B,Nr] bool, True = real (used only with ``key_padding_mask``).

        Returns unnormalised ``entity [B,Ne,d]``, ``relation [B,Nr,d]``, ``refined_global [B,d]``.
        """
        ne, nr = self.n_entity, self.n_relation
        if entity_in.shape[1:] != (ne, self.dim) or relation_in.shape[1:] != (nr, self.dim) \
                or global_in.shape[1:] != (self.dim,):
            raise ValueError(
                f"ComAlign head expects entity [B,{ne},{self.dim}], relation [B,{nr},{self.dim}], global "
                f"[B,{self.dim}]; got {tuple(entity_in.shape)}, {tuple(relation_in.shape)}, {tuple(global_in.shape)}")
        dtype = self.bottleneck_box[0].weight.dtype
        x = torch.cat([entity_in, relation_in, global_in[:, None]], dim=1).to(dtype)
        x = self.encoder_pos_embedding(self.bottleneck_box(x))
        pad = None
        if self.key_padding_mask:
            batch = x.shape[0]
            ones = lambda n: torch.ones(batch, n, dtype=torch.bool, device=x.device)  # noqa: E731
            real = [ones(ne) if entity_mask is None else entity_mask,
                    ones(nr) if relation_mask is None else relation_mask, ones(1)]
            pad = ~torch.cat([m.to(device=x.device, dtype=torch.bool) for m in real], dim=1)
        y = self.transformer_encoder_box(x, src_key_padding_mask=pad)
        return {"entity": y[:, :ne], "relation": y[:, ne:ne + nr], "refined_global": y[:, -1]}


class HeadCheckpointError(UserError):
    """A ComAlign head checkpoint that does not load into the head; the message names the file and why."""


class HeadFileNotFound(HeadCheckpointError, FileNotFoundError):
    """The head checkpoint file does not exist."""


def _head_state_dict(obj: Any, source: str) -> Dict[str, torch.Tensor]:
    """Unwrap ``state_dict``/``model``, strip ``module.``, keep only ``comalign_head.*`` keys when present."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise HeadCheckpointError(f"ComAlign head checkpoint {source}: expected a state dict of tensors (raw or under "
                         f"'state_dict'/'model'), got {type(obj).__name__}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    if any(k.startswith(HEAD) for k in state):
        state = {k[len(HEAD):]: v for k, v in state.items() if k.startswith(HEAD)}
    return state


def load_comalign_head(head: ComAlignHead, path_or_state: Union[str, os.PathLike, Mapping]) -> None:
    """Strictly load a ComAlign head: the released file, one of ours, or a full ``ComAlignCLIP`` checkpoint.

    Accepts a raw state dict or one under ``state_dict``/``model``, with or without ``module.`` and
    ``comalign_head.`` prefixes (a full checkpoint contributes only its ``comalign_head.*`` keys). Afterwards the
    checkpoint's positional encoding must equal the computed float32 one to ``PE_TOLERANCE``: the reference's
    buffer matches bit for bit; heads saved by earlier versions of this package (PE rounded from float64, up
    to 1.34e-6 away) and buffers from other platforms' float32 cos/sin stay well inside it, while any other
    layout of encoding is off by O(1). Nothing is loaded when a check fails.
    """
    if isinstance(path_or_state, Mapping):
        source = "<state dict>"
        obj = path_or_state
    else:
        source = os.fspath(path_or_state)
        if not os.path.isfile(source):
            raise HeadFileNotFound(f"ComAlign head checkpoint {source}: no such file")
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:  # pickled modules, corrupt files: say which file and why
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            if "weights_only" in str(err):  # torch's advice to unpickle untrusted code: only its first sentence
                detail = detail.split(". ")[0]
            raise HeadCheckpointError(f"ComAlign head checkpoint {source}: cannot be read as a tensor state dict "
                                      f"({type(err).__name__}: {detail})") from None
    state = _head_state_dict(obj, source)
    expected = head.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise HeadCheckpointError(f"ComAlign head checkpoint {source} does not match the head: missing keys "
                                  f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected keys "
                                  f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    wrong = [f"{k} {tuple(state[k].shape)} (head: {tuple(v.shape)})" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise HeadCheckpointError(f"ComAlign head checkpoint {source}: shape mismatch for {', '.join(wrong[:4])}")
    computed = comalign_positional_encoding(head.n_slots, head.dim)
    error = (state[PE_KEY].detach().float().cpu() - computed).abs().max().item()
    if not error <= PE_TOLERANCE:
        raise HeadCheckpointError(f"ComAlign head checkpoint {source}: its positional encoding differs from the "
                                  f"computed one (max abs difference {error:.3g} > {PE_TOLERANCE:g}); not a ComAlign "
                                  f"head of this layout")
    head.load_state_dict(state, strict=True)


def _l2(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-8)


@register_arch("comalign")
class ComAlignCLIP(CLIP):
    """Frozen open_clip ``CLIP`` + trainable ``comalign_head`` (state-dict keys ``comalign_head.<§1 keys>``).

    The base never trains: its parameters have ``requires_grad=False`` and its modules stay in eval mode
    under ``.train()``. Plain CLIP checkpoints load through ``pretrained=`` (the head stays random, or comes
    from ``head_checkpoint``); combined checkpoints (base + head) load the head too, unless ``head_checkpoint``
    is given, which always wins.
    """

    plugin_state_prefixes = (HEAD,)

    def __init__(self, embed_dim: int, vision_cfg, text_cfg, *args, head: Optional[Dict[str, Any]] = None,
                 head_checkpoint: Optional[str] = None, **kwargs):
        super().__init__(embed_dim, vision_cfg, text_cfg, *args, **kwargs)
        self.output_dict = True
        for param in self.parameters():
            param.requires_grad_(False)
        head = dict(head or {})
        head.setdefault("dim", embed_dim)
        if head["dim"] != embed_dim:
            raise ValueError(f"ComAlign head dim {head['dim']} must equal the CLIP embed dim {embed_dim}: its "
                             f"outputs are compared with frozen CLIP text embeddings")
        self.comalign_head = ComAlignHead(**head)
        self.train()
        self.head_checkpoint = head_checkpoint
        if head_checkpoint:
            load_comalign_head(self.comalign_head, head_checkpoint)

    def after_pretrained_load(self, missing_keys) -> None:
        """``head_checkpoint`` wins over the head of a combined ``pretrained=`` checkpoint loaded after __init__."""
        if self.head_checkpoint:
            load_comalign_head(self.comalign_head, self.head_checkpoint)

    def train(self, mode: bool = True):
        super().train(mode)
        for name, child in self.named_children():
            if name != "comalign_head":
                child.eval()
        return self

    @property
    def n_entity(self) -> int:
        return self.comalign_head.n_entity

    @property
    def n_relation(self) -> int:
        return self.comalign_head.n_relation

    def _base_grad(self):
        """Grad through the base only when someone unfroze it; otherwise skip building its graph."""
        trainable = any(p.requires_grad for n, p in self.named_parameters() if not n.startswith(HEAD))
        return torch.enable_grad() if trainable and torch.is_grad_enabled() else torch.no_grad()

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """views [B,V,3,H,W] → unnormalised base image embeddings [B,V,d]; all-zero views (pads) → zero rows."""
        batch, n_views = views.shape[:2]
        flat = views.reshape(batch * n_views, *views.shape[2:])
        real = flat.flatten(1).ne(0).any(dim=1)
        with self._base_grad():
            feats = self.encode_image(flat[real])
        out = feats.new_zeros(batch * n_views, feats.shape[-1])
        out[real] = feats
        return out.reshape(batch, n_views, -1)

    def encode_phrases(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B,S,L] → unnormalised base text embeddings [B,S,d]; all-zero token rows (pads) → zero rows."""
        batch, n_rows = tokens.shape[:2]
        flat = tokens.reshape(batch * n_rows, tokens.shape[-1])
        real = flat.ne(0).any(dim=1)
        with self._base_grad():
            feats = self.encode_text(flat[real])
        out = feats.new_zeros(batch * n_rows, feats.shape[-1])
        out[real] = feats
        return out.reshape(batch, n_rows, -1)

    def encode_components(self, entity_in: torch.Tensor, relation_in: torch.Tensor, global_in: torch.Tensor,
                          entity_mask: Optional[torch.Tensor] = None,
                          relation_mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The head on frozen image embeddings; see ``ComAlignHead.forward`` (outputs unnormalised)."""
        return self.comalign_head(entity_in, relation_in, global_in, entity_mask, relation_mask)

    # ------------------------------------------------------------------ forward

    def _slot_features(self, x: torch.Tensor, n_slots: int, what: str, encode) -> torch.Tensor:
        """Component-form input (features [B,S,d] or raw [B,S,...]) → features [B,S,d] (zero rows = pads)."""
        if x.shape[1] != n_slots:
            raise ValueError(f"ComAlign {what}: expected {n_slots} slots on dim 1 (n_entity={self.n_entity}, "
                             f"n_relation={self.n_relation}), got shape {tuple(x.shape)}")
        if x.ndim == 3 and x.is_floating_point():
            dim = self.comalign_head.dim
            if x.shape[-1] != dim:
                raise ValueError(f"ComAlign {what}: precomputed features must be [B,{n_slots},{dim}], "
                                 f"got {tuple(x.shape)}")
            return x
        return encode(x)

    def _image_components(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        ne, nr = self.n_entity, self.n_relation
        if image.ndim == 3 and not image.is_floating_point():
            raise ValueError(f"ComAlign image: 3-D input must be float features [B,{ne + nr + 1},d], got {image.dtype}")
        feats = self._slot_features(image, ne + nr + 1, "image (entity views, relation views, whole image)",
                                    self.encode_views)
        real = feats.ne(0).any(dim=-1)
        if not bool(real[:, -1].all()):
            rows = torch.nonzero(~real[:, -1]).flatten().tolist()
            raise ValueError(f"ComAlign image: the last slot (the whole image) is a pad (all zeros) in batch rows "
                             f"{rows[:8]}; every image needs its global view/embedding")
        entity_mask, relation_mask = real[:, :ne], real[:, ne:ne + nr]
        head = self.encode_components(feats[:, :ne], feats[:, ne:ne + nr], feats[:, -1], entity_mask, relation_mask)
        return {
            "image_features": _l2(feats[:, -1]),
            "refined_global": _l2(head["refined_global"]),
            "image_entity": _l2(head["entity"]),
            "image_relation": _l2(head["relation"]),
            "image_entity_mask": entity_mask,
            "image_relation_mask": relation_mask,
        }

    def _text_components(self, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        ne, nr = self.n_entity, self.n_relation
        feats = self._slot_features(text, 1 + ne + nr, "text (caption, entity phrases, relation phrases)",
                                    self.encode_phrases)
        real = feats.ne(0).any(dim=-1)
        if not bool(real[:, 0].all()):
            rows = torch.nonzero(~real[:, 0]).flatten().tolist()
            raise ValueError(f"ComAlign text: row 0 (the caption) is a pad (all zeros) in batch rows {rows[:8]}; "
                             f"every sample needs its caption")
        return {
            "text_features": _l2(feats[:, 0]),
            "text_entity": _l2(feats[:, 1:1 + ne]),
            "text_entity_mask": real[:, 1:1 + ne],
            "text_relation": _l2(feats[:, 1 + ne:]),
            "text_relation_mask": real[:, 1 + ne:],
        }

    def forward(self, image: Optional[torch.Tensor] = None,
                text: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Always a dict; every output batch-first.

        * ``image [B,3,H,W]`` / ``text [B,L]``: open_clip's ``image_features`` / ``text_features``
          (L2-normalised base CLIP).
        * image component form, slots 0..Ne-1 entity views, Ne..Ne+Nr-1 relation views, last the whole image:
          views ``[B,Ne+Nr+1,3,H,W]`` (all-zero views = pads) or float features ``[B,Ne+Nr+1,d]`` (zero rows =
          pads; last row the unnormalised global g) → ``image_features`` (ĝ), ``refined_global`` (ĉ) [B,d],
          ``image_entity`` [B,Ne,d], ``image_relation`` [B,Nr,d], ``image_entity_mask`` [B,Ne],
          ``image_relation_mask`` [B,Nr] (True = real).
        * text component form, row 0 the caption, then Ne entity and Nr relation phrases: tokens
          ``[B,1+Ne+Nr,L]`` or float features ``[B,1+Ne+Nr,d]`` (zero rows = pads) → ``text_features`` [B,d],
          ``text_entity`` [B,Ne,d], ``text_entity_mask``, ``text_relation`` [B,Nr,d], ``text_relation_mask``.

        Feature outputs are L2-normalised with eps 1e-8 (zero pads stay zero); plus ``logit_scale`` (exp'ed).
        """
        out: Dict[str, torch.Tensor] = {}
        if image is not None:
            if image.ndim in (3, 5):
                out.update(self._image_components(image))
            else:
                out["image_features"] = self.encode_image(image, normalize=True)
        if text is not None:
            if text.ndim == 3:
                out.update(self._text_components(text))
            else:
                out["text_features"] = self.encode_text(text, normalize=True)
        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

