"""CLIP that encodes hard negative captions alongside the positive one.

The training data yields text of shape ``[B, 1+K, L]`` (row 0 the positive, rows 1..K negatives, an
all-zero row a padded/invalid negative). All outputs are batch-first so open_clip_train's
``--accum-freq`` caching (which concatenates every output key along dim 0) works unchanged.
"""
from typing import Dict, Optional

import torch
from open_clip.model import CLIP

from .registry import register_arch


def split_hardneg_text(features: torch.Tensor, batch: int):
    """Split flat text features ``[B*(1+K), D]`` (sample-major) into ``[B, D]`` and ``[B, K, D]``."""
    grouped = features.reshape(batch, -1, features.shape[-1])
    return grouped[:, 0], grouped[:, 1:]


@register_arch("hardneg")
class HardNegCLIP(CLIP):
    """open_clip ``CLIP`` whose forward accepts ``[B, 1+K, L]`` text and always returns a dict.

    ``emit_hardneg`` is switched on by the training hooks when the configured loss consumes negatives;
    otherwise 3-D text is reduced to its positive row, so extra keys never reach losses that cannot take
    them (open_clip's ``ClipLoss`` raises on unknown keyword arguments).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.output_dict = True
        self.emit_hardneg = False

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
        out: Dict[str, torch.Tensor] = {}
        if image is not None:
            out["image_features"] = self.encode_image(image, normalize=True)
        if text is not None:
            if text.ndim == 3 and self.emit_hardneg:
                pos, neg, valid = self.encode_text_with_negatives(text)
                out.update(text_features=pos, neg_text_features=neg, neg_text_valid=valid)
            else:
                out["text_features"] = self.encode_text(text[:, 0] if text.ndim == 3 else text, normalize=True)
        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out
