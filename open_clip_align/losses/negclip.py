"""NegCLIP loss: CLIP InfoNCE with hard negative captions as extra image→text columns.

With N the global batch and K negatives per image, the text pool is image-major,
``[t_1..t_N ; t̄_{1,0..K-1} .. t̄_{N,0..K-1}]``, so t̄_{n,k} sits in column ``N + n*K + k``:

    L = ½ [ CE(s · V Pᵀ, arange(N))  +  CE(s · T Vᵀ, arange(N)) ]

image→text over all N(1+K) texts; text→image over the N positives only (negatives are never queries).
Invalid (padded) negatives get logit −inf.

With NegCLIP's hard-negative images (``hard_*`` features: each sample's nearest-neighbour image with its own
caption and negatives) the image set doubles (spec degla.md §8): images ``[I ; I_hard]`` (2N), positives
``[T ; T_hard]``, negatives ``[T̄ ; T̄_hard]``, i.e. the same loss over 2N samples; with K = 1 the texts are
NegCLIP's ``[T ; T_hard ; T̄ ; T̄_hard]`` (4N) and the targets arange(2N).

Every block (images, positives, negatives, masks, and each hard-image block) is gathered across ranks on its
own, so the layout, and therefore the value, is the same on 1 or N processes. With ``--local-loss`` (which
needs ``--gather-with-grad`` on several ranks) a rank scores its own rows and divides by the *global* row
count, so the ranks' losses sum to the global loss and its gradient.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .base import GatheredLoss


def negclip_logits(image: torch.Tensor, text: torch.Tensor, neg: Optional[torch.Tensor],
                   neg_valid: Optional[torch.Tensor], logit_scale: torch.Tensor):
    """Logits for the NegCLIP loss.

    image [M, D] (query images), text [N, D] (all positives), neg [N, K, D], neg_valid [N, K] bool.
    Returns image→text logits [M, N + N*K] (negatives image-major after the positives).
    """
    columns = text if neg is None else torch.cat([text, neg.reshape(-1, neg.shape[-1])])
    logits = logit_scale * image @ columns.T
    if neg is not None and neg_valid is not None:
        keep = torch.cat([torch.ones(text.shape[0], dtype=torch.bool, device=text.device), neg_valid.reshape(-1)])
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


def negclip_loss(image: torch.Tensor, text: torch.Tensor, neg: Optional[torch.Tensor],
                 valid: Optional[torch.Tensor], scale: torch.Tensor,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NegCLIP loss on global features: image, text [M,D]; neg [M,K,D]; valid [M,K] bool (None: all valid).

    ``rows`` (default all M) are the query rows; the sum of their row losses is divided by M, so the losses
    over a partition of the rows add up to the full loss.
    """
    rows = torch.arange(image.shape[0], device=image.device) if rows is None else rows
    logits_per_image = negclip_logits(image[rows], text, neg, valid, scale)
    logits_per_text = scale * text[rows] @ image.T
    total = F.cross_entropy(logits_per_image, rows, reduction="sum") \
        + F.cross_entropy(logits_per_text, rows, reduction="sum")
    return total / (2 * image.shape[0])


class NegCLIPLoss(GatheredLoss):
    """NegCLIP hard-negative contrastive loss (``--loss negclip``); returns ``{"contrastive_loss"}``.

    Without ``neg_text_features`` (e.g. the validation loop's 2-D text) it is plain CLIP InfoNCE. With the
    ``hard_*`` features it is the doubled-image-set loss of the module docstring.
    """

    def terms(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              neg_text_features: Optional[torch.Tensor] = None, neg_text_valid: Optional[torch.Tensor] = None,
              hard_image_features: Optional[torch.Tensor] = None, hard_text_features: Optional[torch.Tensor] = None,
              hard_neg_text_features: Optional[torch.Tensor] = None,
              hard_neg_text_valid: Optional[torch.Tensor] = None, **unused) -> Dict[str, torch.Tensor]:
        sets = [(image_features, text_features, neg_text_features, neg_text_valid)]
        if hard_image_features is not None:
            sets.append((hard_image_features, hard_text_features, hard_neg_text_features, hard_neg_text_valid))
        return {"contrastive_loss": self._loss(sets, logit_scale)}

    def _loss(self, sets, scale: torch.Tensor) -> torch.Tensor:
        """``sets``: [(image [B,D], text [B,D], neg [B,K,D] or None, valid [B,K] or None)], the samples and, if
        present, their hard-negative images; each block is gathered separately, then the sets are stacked."""
        batch = sets[0][0].shape[0]
        blocks = []
        for image, text, neg, valid in sets:
            if neg is not None and valid is None:
                valid = torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device)
            blocks += [image, text, neg, valid]
        gathered = self.gather(*blocks)
        image, text, neg, valid = (None if any(t is None for t in gathered[i::4]) else torch.cat(gathered[i::4])
                                   for i in range(4))
        return negclip_loss(image, text, neg, valid, scale, self.rows(batch, len(sets), image.device))
