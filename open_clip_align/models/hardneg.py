"""CLIP that encodes hard negative captions alongside the positive one, optionally with an EMA teacher.

The training data yields text of shape ``[B, 1+K, L]`` (row 0 the positive, rows 1..K negatives, an
all-zero row a padded/invalid negative). With NegCLIP's hard-negative images (``--csv-hardimg-key``) it
yields images ``[B, 2, 3, H, W]`` and text ``[B, 2, 1+K, L]``: index 0 the sample, index 1 its hard-negative
image with that image's own caption and negatives. All outputs are batch-first so open_clip_train's
``--accum-freq`` caching (which concatenates every output key along dim 0) works unchanged.

With ``ema_teacher`` (config block ``"ema_teacher": true``) the model owns a frozen plain ``CLIP`` copy of
itself as the registered submodule ``teacher``: saved and resumed under ``teacher.`` like any weight, skipped
by the optimizer (no grad) and by DDP's gradient sync, never switched to train mode, and updated by
``update_teacher()`` from the optimizer step hook in ``ema.py`` (parameters matched by name).
"""
from typing import Dict, List, Optional, Tuple

import torch
from open_clip.model import CLIP

from .ema import ema_update_, relative_distance
from .registry import register_arch

TEACHER = "teacher."


def split_hardneg_text(features: torch.Tensor, batch: int):
    """Split flat text features ``[B*(1+K), D]`` (sample-major) into ``[B, D]`` and ``[B, K, D]``."""
    grouped = features.reshape(batch, -1, features.shape[-1])
    return grouped[:, 0], grouped[:, 1:]


@register_arch("hardneg")
class HardNegCLIP(CLIP):
    """open_clip ``CLIP`` whose forward accepts ``[B, 1+K, L]`` text and always returns a dict.

    What it emits is decided once, by ``configure_training`` (the training method's needs): negatives only for
    methods that consume them (otherwise 3-D text is reduced to its positive row, so extra keys never reach
    losses that cannot take them: open_clip's ``ClipLoss`` raises on unknown keyword arguments), and the
    teacher's features only for methods that use the teacher.
    """

    def __init__(self, *args, ema_teacher: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.output_dict = True
        self.emit_hardneg = False
        self.emit_teacher = False
        self.ema_decay = 0.9996
        self.ema_steps = 0
        self._ema_cache: Optional[Tuple[List[torch.Tensor], ...]] = None
        self.teacher: Optional[CLIP] = None
        if ema_teacher:
            teacher = CLIP(*args, **kwargs)
            teacher.load_state_dict(self.state_dict())
            self.teacher = teacher.requires_grad_(False).eval()
            self._ema_pairs()  # asserts matching names and shapes now, not at the first step

    def configure_training(self, emit_hardneg: bool, teacher: bool = False, ema_decay: float = 0.9996) -> None:
        """Set what ``forward`` emits in training: ``neg_text_features``/``neg_text_valid`` (``emit_hardneg``) and
        the EMA teacher's ``teacher_*`` features, the teacher updated with ``ema_decay`` (``teacher``)."""
        if teacher and self.teacher is None:
            raise ValueError("this model has no EMA teacher (its config lacks \"ema_teacher\": true)")
        self.emit_hardneg, self.emit_teacher, self.ema_decay = emit_hardneg, teacher, ema_decay

    # ------------------------------------------------------------------ EMA teacher

    @property
    def plugin_state_prefixes(self) -> Tuple[str, ...]:
        """State-dict prefixes plain CLIP checkpoints lack (loading may miss them; export strips them)."""
        return (TEACHER,) if self.teacher is not None else ()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        self._ema_cache = None  # device/dtype moves may replace parameter tensors
        return super()._apply(fn, *args, **kwargs)

    def _ema_pairs(self) -> Tuple[List[torch.Tensor], ...]:
        """(teacher params, student params, teacher buffers, student buffers), matched by name."""
        if self._ema_cache is None:
            student = {n: p for n, p in self.named_parameters() if not n.startswith(TEACHER)}
            teacher = dict(self.teacher.named_parameters())
            if student.keys() != teacher.keys() or any(student[n].shape != teacher[n].shape for n in student):
                raise RuntimeError(f"EMA teacher does not mirror the student: {sorted(student.keys() ^ teacher.keys())[:5]}")
            s_buf = {n: b for n, b in self.named_buffers() if not n.startswith(TEACHER)}
            t_buf = dict(self.teacher.named_buffers())
            names = sorted(student)
            self._ema_cache = ([teacher[n] for n in names], [student[n].detach() for n in names],
                               [t_buf[n] for n in sorted(t_buf)], [s_buf[n] for n in sorted(t_buf)])
        return self._ema_cache

    def first_trainable_parameter(self) -> Optional[torch.nn.Parameter]:
        return next((p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(TEACHER)), None)

    @torch.no_grad()
    def update_teacher(self, decay: Optional[float] = None) -> None:
        """θ_T ← α·θ_T + (1−α)·θ_S for every parameter (fused); buffers are copied."""
        t_params, s_params, t_bufs, s_bufs = self._ema_pairs()
        ema_update_(t_params, s_params, self.ema_decay if decay is None else decay)
        for t_buf, s_buf in zip(t_bufs, s_bufs):
            t_buf.copy_(s_buf)
        self.ema_steps += 1

    def teacher_drift(self) -> float:
        t_params, s_params, _, _ = self._ema_pairs()
        return relative_distance(t_params, s_params)

    def after_pretrained_load(self, missing_keys) -> None:
        """A plain CLIP checkpoint has no ``teacher.*``: start the teacher from the loaded student."""
        if self.teacher is not None and any(k.startswith(TEACHER) for k in missing_keys):
            student = {k: v for k, v in self.state_dict().items() if not k.startswith(TEACHER)}
            self.teacher.load_state_dict(student)

    def encode_text_with_negatives(self, text: torch.Tensor, normalize: bool = True):
        """Encode ``text [B, 1+K, L]`` in one pass.

        Returns ``text_features [B, D]``, ``neg_text_features [B, K, D]`` and ``neg_text_valid [B, K]``
        (False where the token row is all zeros).
        """
        batch = text.shape[0]
        flat = self.encode_text(text.reshape(-1, text.shape[-1]), normalize=normalize)
        pos, neg = split_hardneg_text(flat, batch)
        valid = text[:, 1:].ne(0).any(dim=-1)
        return pos, neg, valid

    def forward(
            self,
            image: Optional[torch.Tensor] = None,
            text: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Returns ``image_features [B,D]``, ``text_features [B,D]``, ``logit_scale`` (exp'ed), and with
        ``[B,1+K,L]`` text and ``emit_hardneg``: ``neg_text_features [B,K,D]``, ``neg_text_valid [B,K]``; in
        training with ``emit_teacher`` also ``teacher_image_features``, ``teacher_text_features``,
        ``teacher_neg_text_features`` (no grad). With hard-negative images (image ``[B,2,3,H,W]``, text
        ``[B,2,1+K,L]``) and ``emit_hardneg`` the second half comes as ``hard_image_features [B,D]``,
        ``hard_text_features [B,D]``, ``hard_neg_text_features [B,K,D]``, ``hard_neg_text_valid [B,K]``
        (without ``emit_hardneg`` it is dropped). All features L2-normalised."""
        if image is not None and image.ndim == 5:
            if self.emit_hardneg:
                return self._forward_hard_images(image, text)
            image, text = image[:, 0], None if text is None else text[:, 0]
        out: Dict[str, torch.Tensor] = {}
        if image is not None:
            out["image_features"] = self.encode_image(image, normalize=True)
        if text is not None:
            if text.ndim == 3 and self.emit_hardneg:
                pos, neg, valid = self.encode_text_with_negatives(text)
                out.update(text_features=pos, neg_text_features=neg, neg_text_valid=valid)
            else:
                out["text_features"] = self.encode_text(text[:, 0] if text.ndim == 3 else text, normalize=True)
        if self.training and self.emit_teacher and self.teacher is not None and text is not None and text.ndim == 3:
            out.update(self._teacher_features(image, text))
        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def _forward_hard_images(self, image: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        """image [B,2,3,H,W], text [B,2,1+K,L]: both halves encoded in one pass each (no teacher: DeGLA does not
        take hard-negative images)."""
        batch = image.shape[0]
        images = self.encode_image(image.flatten(0, 1), normalize=True).unflatten(0, (batch, 2))
        pos, neg, valid = self.encode_text_with_negatives(text.flatten(0, 1))
        pos, neg, valid = (t.unflatten(0, (batch, 2)) for t in (pos, neg, valid))
        out = dict(image_features=images[:, 0], text_features=pos[:, 0], neg_text_features=neg[:, 0],
                   neg_text_valid=valid[:, 0], hard_image_features=images[:, 1], hard_text_features=pos[:, 1],
                   hard_neg_text_features=neg[:, 1], hard_neg_text_valid=valid[:, 1],
                   logit_scale=self.logit_scale.exp())
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    @torch.no_grad()
    def _teacher_features(self, image: Optional[torch.Tensor], text: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = {}
        if image is not None:
            out["teacher_image_features"] = self.teacher.encode_image(image, normalize=True)
        flat = self.teacher.encode_text(text.reshape(-1, text.shape[-1]), normalize=True)
        out["teacher_text_features"], out["teacher_neg_text_features"] = split_hardneg_text(flat, text.shape[0])
        return out
