"""A training method of your own, in one file: NegCLIP plus a margin on each image's own hard negatives.

    L = NegCLIP(image→text over positives and negatives, text→image over positives)
        + λ · mean over valid (i, k) of relu(m − cos(v_i, t_i) + cos(v_i, t̄_ik))

Train it (the module registers ``--loss negclip-margin`` and its flags ``--margin-weight``/``--margin-value``)::

    torchrun --nproc_per_node 2 -m training.main -- --import examples/custom_method.py --loss negclip-margin \\
        --margin-weight 0.5 --model hardneg-tiny-ViT --hardneg-format csv --train-data data/train.csv \\
        --batch-size 8 --epochs 1 --precision fp32 --device cpu --workers 0 --logs ./logs

The loss builds on ``GatheredLoss`` (distributed arguments, block-wise gathers, fp32 terms), so 1 and N processes
see the same global batch; the method builds on ``HardNegativeMethod`` (hard-negative data, a model that encodes
``[B, 1+K, L]`` text, the open_clip flags a softmax hard-negative loss refuses).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from open_clip_align.losses import GatheredLoss
from open_clip_align.losses.negclip import negclip_loss
from open_clip_align.methods import HardNegativeMethod, UsageError, register_method


class MarginNegCLIPLoss(GatheredLoss):
    """NegCLIP's contrastive loss + ``weight`` · the mean hinge ``relu(margin − s⁺ + s⁻)`` over valid negatives."""

    def __init__(self, weight: float = 0.5, margin: float = 0.1, **distributed):
        super().__init__(**distributed)
        self.weight, self.margin = weight, margin

    def terms(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              neg_text_features: Optional[torch.Tensor] = None, neg_text_valid: Optional[torch.Tensor] = None,
              **unused) -> Dict[str, torch.Tensor]:
        image, text, neg, valid = self.gather(image_features, text_features, neg_text_features, neg_text_valid)
        rows = self.rows(image_features.shape[0], device=image.device)
        terms = {"contrastive_loss": negclip_loss(image, text, neg, valid, logit_scale, rows)}
        if neg is not None:
            positive = (image * text).sum(-1, keepdim=True)                 # [N, 1]
            hinge = F.relu(self.margin - positive + torch.einsum("nd,nkd->nk", image, neg))   # [N, K]
            valid = torch.ones_like(hinge, dtype=torch.bool) if valid is None else valid
            terms["margin_loss"] = self.weight * (hinge * valid).sum() / valid.sum().clamp(min=1)
        return terms


@register_method
class MarginNegCLIP(HardNegativeMethod):
    name = "negclip-margin"
    flag_prefix = "margin"
    summary = "NegCLIP + a margin on each image's own negatives (examples/custom_method.py)"

    def add_arguments(self, group):
        group.add_argument("--margin-weight", type=float, default=0.5, help="λ: weight of the margin term.")
        group.add_argument("--margin-value", type=float, default=0.1,
                           help="m: how much higher (in cosine) the positive must score than each negative.")

    def check(self, args):
        if args.margin_weight < 0:
            raise UsageError(f"argument --margin-weight: expected a weight >= 0, got {args.margin_weight}")

    def create_loss(self, args):
        return MarginNegCLIPLoss(args.margin_weight, args.margin_value, **MarginNegCLIPLoss.distributed(args))
