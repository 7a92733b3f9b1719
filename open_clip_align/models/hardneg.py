"""Hard negatives and an EMA teacher for every open_clip model family (spec backbones.md §2).

``enable_hardneg(model)`` swaps the class of a built open_clip ``CLIP``, ``CustomTextCLIP`` or ``CoCa`` in place for
``HardNegCLIP``/``HardNegCustomTextCLIP``/``HardNegCoCa`` (``HardNegMixin`` + the base): same modules, same state-dict
keys, still ``isinstance(model, Base)``, so any open_clip model name, tag, ``hf-hub:`` or ``local-dir:`` model can
be trained. The ``negclip-*``/``degla-*``/``hardneg-tiny-ViT`` config names stay as aliases that build
``HardNegCLIP`` directly.

The training data yields text ``[B, 1+K, L]`` (row 0 the positive, rows 1..K negatives, an all-zero row a padded
negative). With NegCLIP's hard-negative images (``--csv-hardimg-key``) images are ``[B, 2, 3, H, W]`` and text
``[B, 2, 1+K, L]``. A negative is *invalid* when its row is all zeros or equals the positive's tokens (truncation
or a tokenizer's canonicalisation can do that); invalid rows are replaced by the positive row before encoding (a
padded row would give NaN in a mean-pooled HF tower, and NaN·0 poisons masked losses), and masked by
``neg_text_valid``. All outputs are batch-first so open_clip_train's ``--accum-freq`` concatenation works.

The EMA teacher (``attach_teacher(make_teacher(model))``; config block ``"ema_teacher": true`` for the aliases)
is a frozen deep copy of the plain model taken after the pretrained weights load and before LoRA, registered as
submodule ``teacher`` (keys ``teacher.``), kept in eval mode, and updated by ``update_teacher()`` from the optimizer
step hook (``ema.py``): θ_T ← α·θ_T + (1−α)·θ_S, matched by name over the teacher's tensors, θ_S being the
student's *effective* tensor (with LoRA W + ΔW), for the names whose student tensor can change; buffers are
copied. Loading a state dict without ``teacher.*`` (a plain checkpoint, or a negclip run resumed as degla) seeds the
teacher from the loaded student, and one with ``teacher.*`` loads into a model without a teacher by ignoring them
(load hooks on the model root). ``plain_state_dict`` turns a training state
dict into plain open_clip weights: LoRA merged, teacher stripped.
"""
import copy
import logging
from typing import Dict, List, Optional, Tuple

import torch
from open_clip.coca_model import CoCa
from open_clip.model import CLIP, CustomTextCLIP
from torch.nn.utils import parametrize

from . import lora
from ..errors import UsageError
from .ema import ema_update_, relative_distance
from .registry import register_arch

TEACHER = "teacher."
_STATE = ("emit_hardneg", "emit_teacher", "ema_decay", "ema_steps", "_ema_cache", "_seed_on_load", "_neg_counts")


def hardneg_valid(text: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool for ``text [B, 1+K, L]``: False for an all-zero (padded) negative or one whose tokens equal
    the positive's."""
    negatives = text[:, 1:]
    return negatives.ne(0).any(-1) & negatives.ne(text[:, :1]).any(-1)


def substitute_invalid(text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``text [B, 1+K, L]`` with every invalid negative row replaced by the positive row (never encode a pad)."""
    negatives = torch.where(valid.unsqueeze(-1), text[:, 1:], text[:, :1])
    return torch.cat([text[:, :1], negatives], 1)


def plain_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A training state dict (``module.`` prefixes allowed) as plain open_clip weights: LoRA adapters merged into
    their weights (``lora.merge_lora_state_dict``) and the EMA teacher (``teacher.*``) dropped."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return lora.merge_lora_state_dict({k: v for k, v in state.items() if not k.startswith(TEACHER)})


class UnsupportedFamily(UsageError):
    """The model's class cannot encode hard negatives (not CLIP, CustomTextCLIP or CoCa)."""


# ------------------------------------------------------------------------------------------ load hooks

def _load_pre_hook(module, state_dict, prefix, *args) -> None:
    """Before loading: a state dict without ``teacher.*`` gets the teacher's current tensors as placeholders (so a
    strict load passes) and the teacher is seeded from the loaded student afterwards; LoRA keys must match."""
    if not isinstance(module, HardNegMixin):
        return
    _check_lora_keys(module, state_dict, prefix)
    module._seed_on_load = False
    if module.teacher is None:  # e.g. a degla checkpoint resumed as negclip: the teacher is not needed
        dropped = [k for k in state_dict if k.startswith(prefix + TEACHER)]
        for key in dropped:
            del state_dict[key]
        if dropped:
            logging.info(f"ignoring the checkpoint's EMA teacher ({len(dropped)} tensors): this model has none")
        return
    if any(k.startswith(prefix + TEACHER) for k in state_dict):
        return
    state_dict.update({prefix + TEACHER + k: v for k, v in module.teacher.state_dict().items()})
    module._seed_on_load = True


def _load_post_hook(module, incompatible_keys) -> None:
    if isinstance(module, HardNegMixin) and getattr(module, "_seed_on_load", False):
        module.seed_teacher()
        module._seed_on_load = False


def _check_lora_keys(module, state_dict, prefix) -> None:
    """One line when a checkpoint's LoRA layout differs from the model's (e.g. ``--resume`` without the run's
    ``--lora-*`` flags), instead of torch's list of hundreds of keys."""
    found = lora.adapters(module)
    has = any(".parametrizations." in k for k in state_dict if k.startswith(prefix)
              and not k.startswith(prefix + TEACHER))
    if found and not has:
        raise UsageError("the checkpoint has no LoRA adapters but this model has (--lora-r): load it without "
                         "--lora-* flags, or pass the checkpoint of the LoRA run")
    if has and not found:
        raise UsageError("the checkpoint holds LoRA adapters (keys '...parametrizations...'): resume it with the "
                         "--lora-* flags of its run (its params.txt), or merge them first (python -m "
                         "open_clip_align.export)")


# ------------------------------------------------------------------------------------------ the mixin

class HardNegMixin:
    """Hard-negative forward, EMA teacher and load hooks for an open_clip model class (see the module docstring).

    What ``forward`` emits is decided once, by ``configure_training`` (the training method's needs): negatives only
    for methods that consume them (otherwise 3-D text is reduced to its positive row, so extra keys never reach
    losses that cannot take them), and the teacher's features only for methods that use the teacher.
    """

    teacher: Optional[torch.nn.Module]

    def _init_hardneg(self) -> None:
        self.output_dict = True
        self.emit_hardneg = False
        self.emit_teacher = False
        self.ema_decay = 0.9996
        self.ema_steps = 0
        self._ema_cache = None
        self._seed_on_load = False
        self._neg_counts = None
        if "teacher" not in self._modules:
            self.teacher = None
        self.register_load_state_dict_pre_hook(_load_pre_hook)
        self.register_load_state_dict_post_hook(_load_post_hook)

    def configure_training(self, emit_hardneg: bool, teacher: bool = False, ema_decay: float = 0.9996) -> None:
        """Set what ``forward`` emits in training: ``neg_text_features``/``neg_text_valid`` (``emit_hardneg``) and
        the EMA teacher's ``teacher_*`` features, the teacher updated with ``ema_decay`` (``teacher``)."""
        if teacher and self.teacher is None:
            raise ValueError("this model has no EMA teacher (attach_teacher(make_teacher(model)) first)")
        self.emit_hardneg, self.emit_teacher, self.ema_decay = emit_hardneg, teacher, ema_decay
        self._ema_cache = None

    # ------------------------------------------------------------------ EMA teacher

    @property
    def plugin_state_prefixes(self) -> Tuple[str, ...]:
        """State-dict prefixes plain checkpoints lack (loading may miss them; export strips them)."""
        return (TEACHER,) if self.teacher is not None else ()

    def attach_teacher(self, teacher: torch.nn.Module) -> None:
        """Register ``teacher`` (from ``make_teacher``) as the frozen submodule ``teacher``."""
        self.teacher = teacher.requires_grad_(False).eval()
        self._ema_cache = None
        self._ema_plan()  # names and shapes checked now, not at the first step
        self._ema_cache = None  # the plan itself waits for the first update: LoRA and --lock-* come later

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        self._ema_cache = None  # device/dtype moves may replace parameter tensors
        return super()._apply(fn, *args, **kwargs)

    def _student_tensor(self, name: str, kind: str = "parameter"):
        """(owner module, attribute) of the student's tensor ``name`` (a teacher name), or RuntimeError."""
        path, _, attr = name.rpartition(".")
        try:
            owner = self.get_submodule(path) if path else self
        except AttributeError:
            owner = None
        if owner is None or not (parametrize.is_parametrized(owner, attr) or hasattr(owner, attr)):
            raise RuntimeError(f"EMA teacher does not mirror the student: the student has no {kind} {name}")
        return owner, attr

    def _ema_plan(self):
        """(teacher tensors, student tensors) with a fixed student tensor, [(teacher tensor, owner, attribute)] whose
        student tensor is computed (LoRA), and (teacher buffers, student buffers); only student tensors that can
        change (requires_grad, or trainable adapters) are paired."""
        if self._ema_cache is None:
            t_fixed, s_fixed, computed = [], [], []
            for name, t_param in self.teacher.named_parameters():
                owner, attr = self._student_tensor(name)
                if parametrize.is_parametrized(owner, attr):
                    student = lora.effective_tensor(owner, attr)
                    trainable = any(p.requires_grad for p in owner.parametrizations[attr].parameters())
                else:
                    student = getattr(owner, attr)
                    trainable = isinstance(student, torch.Tensor) and student.requires_grad
                if not isinstance(student, torch.Tensor) or student.shape != t_param.shape:
                    raise RuntimeError(f"EMA teacher does not mirror the student: {name} has shape "
                                       f"{tuple(t_param.shape)} in the teacher")
                if trainable and parametrize.is_parametrized(owner, attr):
                    computed.append((t_param, owner, attr))
                elif trainable:
                    t_fixed.append(t_param)
                    s_fixed.append(student.detach())
            t_bufs, s_bufs = [], []
            for name, t_buf in self.teacher.named_buffers():
                owner, attr = self._student_tensor(name, "buffer")
                t_bufs.append(t_buf)
                s_bufs.append(getattr(owner, attr))
            self._ema_cache = (t_fixed, s_fixed, computed, t_bufs, s_bufs)
        return self._ema_cache

    def _ema_pairs(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Every (teacher, student) pair the update moves, the computed student tensors evaluated now."""
        t_fixed, s_fixed, computed, _, _ = self._ema_plan()
        return (t_fixed + [t for t, _, _ in computed],
                s_fixed + [lora.effective_tensor(owner, attr) for _, owner, attr in computed])

    def first_trainable_parameter(self) -> Optional[torch.nn.Parameter]:
        return next((p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(TEACHER)), None)

    @torch.no_grad()
    def update_teacher(self, decay: Optional[float] = None) -> None:
        """θ_T ← α·θ_T + (1−α)·θ_S for every pair (fused); buffers are copied."""
        teacher, student = self._ema_pairs()
        ema_update_(teacher, student, self.ema_decay if decay is None else decay)
        _, _, _, t_bufs, s_bufs = self._ema_plan()
        for t_buf, s_buf in zip(t_bufs, s_bufs):
            t_buf.copy_(s_buf)
        self.ema_steps += 1

    def teacher_drift(self) -> float:
        teacher, student = self._ema_pairs()
        return relative_distance(teacher, student) if teacher else 0.0

    @torch.no_grad()
    def seed_teacher(self) -> None:
        """Copy the student's effective tensors (W + ΔW under LoRA) and buffers into the teacher."""
        for name, tensor in [*self.teacher.named_parameters(), *self.teacher.named_buffers()]:
            owner, attr = self._student_tensor(name)
            tensor.copy_(lora.effective_tensor(owner, attr))

    # ------------------------------------------------------------------ encoding

    def _image_tower(self, image: torch.Tensor):
        """(normalised features [M,D], image token embeddings for a caption decoder or None)."""
        return self.encode_image(image, normalize=True), None

    def _text_tower(self, text: torch.Tensor):
        """(normalised features [M,D], text token embeddings for a caption decoder or None) for ``text [M,L]``."""
        return self.encode_text(text, normalize=True), None

    def _caption(self, image_embs, text_tokens, text) -> Dict[str, torch.Tensor]:
        """Caption-decoder outputs (CoCa's ``logits``/``labels``) for the positives; none for dual encoders."""
        return {}

    def encode_text_with_negatives(self, text: torch.Tensor):
        """Encode ``text [B, 1+K, L]`` in one pass (invalid negatives replaced by the positive first).

        Returns ``text_features [B,D]``, ``neg_text_features [B,K,D]``, ``neg_text_valid [B,K]`` and the positives'
        decoder tokens (None for dual encoders)."""
        batch, rows = text.shape[:2]
        valid = hardneg_valid(text)
        self._count_negatives(text, valid)
        flat, tokens = self._text_tower(substitute_invalid(text, valid).flatten(0, 1))
        grouped = flat.unflatten(0, (batch, rows))
        positives = None if tokens is None else tokens.unflatten(0, (batch, rows))[:, 0]
        return grouped[:, 0], grouped[:, 1:], valid, positives

    def _count_negatives(self, text: torch.Tensor, valid: torch.Tensor) -> None:
        padded = text[:, 1:].eq(0).all(-1)
        counts = torch.stack([padded.sum(), (~valid & ~padded).sum()])
        self._neg_counts = counts if self._neg_counts is None else self._neg_counts + counts

    def pop_negative_counts(self) -> Tuple[int, int]:
        """(padded, identical-to-positive) negatives masked since the last call (for the per-epoch log)."""
        counts, self._neg_counts = self._neg_counts, None
        return (0, 0) if counts is None else tuple(int(c) for c in counts.tolist())

    def _scale_bias(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def forward(self, image: Optional[torch.Tensor] = None,
                text: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Returns ``image_features [B,D]``, ``text_features [B,D]``, ``logit_scale`` (exp'ed), ``logit_bias`` if
        the model has one, CoCa's ``logits``/``labels`` for the positives when both inputs are given, and with
        ``[B,1+K,L]`` text and ``emit_hardneg``: ``neg_text_features [B,K,D]``, ``neg_text_valid [B,K]``; in
        training with ``emit_teacher`` also ``teacher_image_features``, ``teacher_text_features``,
        ``teacher_neg_text_features`` (no grad). With hard-negative images (image ``[B,2,3,H,W]``, text
        ``[B,2,1+K,L]``) and ``emit_hardneg`` the second half comes as ``hard_image_features``,
        ``hard_text_features``, ``hard_neg_text_features``, ``hard_neg_text_valid`` (without ``emit_hardneg`` it is
        dropped). All features L2-normalised."""
        if image is not None and image.ndim == 5:
            if self.emit_hardneg:
                return self._forward_hard_images(image, text)
            image, text = image[:, 0], None if text is None else text[:, 0]
        hardneg = text is not None and text.ndim == 3 and self.emit_hardneg
        if text is not None and text.ndim == 3 and not hardneg:
            text = text[:, 0]
        out: Dict[str, torch.Tensor] = {}
        image_embs = None
        if image is not None:
            out["image_features"], image_embs = self._image_tower(image)
        if text is not None:
            if hardneg:
                pos, neg, valid, tokens = self.encode_text_with_negatives(text)
                out.update(text_features=pos, neg_text_features=neg, neg_text_valid=valid)
                positives = text[:, 0]
            else:
                out["text_features"], tokens = self._text_tower(text)
                positives = text
            if image_embs is not None and tokens is not None:
                out.update(self._caption(image_embs, tokens, positives))
        if hardneg and self.training and self.emit_teacher and self.teacher is not None:
            out.update(self._teacher_features(image, substitute_invalid(text, out["neg_text_valid"])))
        return self._scale_bias(out)

    def _forward_hard_images(self, image: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        """image [B,2,3,H,W], text [B,2,1+K,L]: both halves encoded in one pass each (no teacher: DeGLA does not
        take hard-negative images); a caption decoder sees the samples' positives only."""
        batch = image.shape[0]
        features, embs = self._image_tower(image.flatten(0, 1))
        images = features.unflatten(0, (batch, 2))
        pos, neg, valid, tokens = self.encode_text_with_negatives(text.flatten(0, 1))
        pos, neg, valid = (t.unflatten(0, (batch, 2)) for t in (pos, neg, valid))
        out = dict(image_features=images[:, 0], text_features=pos[:, 0], neg_text_features=neg[:, 0],
                   neg_text_valid=valid[:, 0], hard_image_features=images[:, 1], hard_text_features=pos[:, 1],
                   hard_neg_text_features=neg[:, 1], hard_neg_text_valid=valid[:, 1])
        if embs is not None and tokens is not None:
            out.update(self._caption(embs.unflatten(0, (batch, 2))[:, 0], tokens.unflatten(0, (batch, 2))[:, 0],
                                     text[:, 0, 0]))
        return self._scale_bias(out)

    @torch.no_grad()
    def _teacher_features(self, image: Optional[torch.Tensor], text: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The teacher's normalised features of ``image [B,...]`` and (already substituted) ``text [B,1+K,L]``."""
        out = {}
        if image is not None:
            out["teacher_image_features"] = self.teacher.encode_image(image, normalize=True)
        flat = self.teacher.encode_text(text.flatten(0, 1), normalize=True).unflatten(0, text.shape[:2])
        out["teacher_text_features"], out["teacher_neg_text_features"] = flat[:, 0], flat[:, 1:]
        return out


@register_arch("hardneg")
class HardNegCLIP(HardNegMixin, CLIP):
    """open_clip ``CLIP`` + ``HardNegMixin``; built directly by the alias configs (``"ema_teacher": true`` gives
    it the teacher at construction, seeded by the pretrained load) or by ``enable_hardneg``."""

    def __init__(self, *args, ema_teacher: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_hardneg()
        if ema_teacher:
            self.attach_teacher(make_teacher(self))


class HardNegCustomTextCLIP(HardNegMixin, CustomTextCLIP):
    """open_clip ``CustomTextCLIP`` (timm/open_clip image towers, open_clip or Hugging Face text towers)."""


class HardNegCoCa(HardNegMixin, CoCa):
    """open_clip ``CoCa``: its contrastive towers as above; the decoder captions the positives only
    (``logits [B, L-1, V]``, ``labels = text[:, 0, 1:]``), never the negatives."""

    def _image_tower(self, image):
        return self._encode_image(image, normalize=True)

    def _text_tower(self, text):
        return self._encode_text(text, normalize=True)

    def _caption(self, image_embs, text_tokens, text):
        return {"logits": self.text_decoder(image_embs, text_tokens[:, :-1]), "labels": text[:, 1:]}


_ADAPTED = {CLIP: HardNegCLIP, CustomTextCLIP: HardNegCustomTextCLIP, CoCa: HardNegCoCa}


def family(model: torch.nn.Module) -> str:
    """The open_clip class name the model adapts (``CLIP``, ``CustomTextCLIP``, ``CoCa``) or its own."""
    for base in _ADAPTED:
        if isinstance(model, base) and (type(model) is base or isinstance(model, HardNegMixin)):
            return base.__name__
    return type(model).__name__


def enable_hardneg(model: torch.nn.Module) -> HardNegMixin:
    """Swap ``model``'s class for its hard-negative class in place (keys and ``isinstance`` unchanged); returns it.

    Raises ``UnsupportedFamily`` for classes other than open_clip's ``CLIP``, ``CustomTextCLIP`` and ``CoCa``
    (subclasses with their own forward, e.g. ComAlign's, would lose it)."""
    if isinstance(model, HardNegMixin):
        return model
    cls = _ADAPTED.get(type(model))
    if cls is None:
        bases = ", ".join(c.__name__ for c in _ADAPTED)
        raise UnsupportedFamily(f"{type(model).__name__} is not one of open_clip's {bases}")
    model.__class__ = cls
    model._init_hardneg()
    return model


def make_teacher(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen eval-mode deep copy of ``model`` as its plain open_clip class, without this package's hooks and
    state and without CoCa's caption decoder (the teacher only encodes). Call it before LoRA is injected."""
    if lora.adapters(model):
        raise ValueError("make_teacher: take the teacher before injecting LoRA (it follows the effective weights)")
    if getattr(model, "teacher", None) is not None:
        raise ValueError("make_teacher: the model already has a teacher")
    teacher = copy.deepcopy(model)
    base = next((b for b in _ADAPTED if isinstance(teacher, b)), type(teacher))
    teacher.__class__ = base
    for name in _STATE:
        teacher.__dict__.pop(name, None)
    teacher._load_state_dict_pre_hooks.clear()
    teacher._load_state_dict_post_hooks.clear()
    teacher._modules.pop("teacher", None)
    teacher.__dict__.pop("teacher", None)
    if isinstance(teacher, CoCa):
        teacher.text_decoder = None
    return teacher.requires_grad_(False).eval()
