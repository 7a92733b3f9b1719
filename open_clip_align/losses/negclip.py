"""NegCLIP loss: CLIP InfoNCE with hard negative captions as extra image→text columns.

With N the global batch and K negatives per image, the text pool is image-major,
``[t_1..t_N ; t̄_{1,0..K-1} .. t̄_{N,0..K-1}]``, so t̄_{n,k} sits in column ``N + n*K + k``:

    L = ½ [ CE(s · V Pᵀ, arange(N))  +  CE(s · T Vᵀ, arange(N)) ]

image→text over all N(1+K) texts; text→image over the N positives only (negatives are never queries).
Invalid (padded) negatives get logit −inf. Positives and negatives are gathered across ranks separately,
so the layout, and therefore the value, is the same on 1 or N processes.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .gather import gather_blocks


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


class NegCLIPLoss(torch.nn.Module):
    """NegCLIP hard-negative contrastive loss (``--loss negclip``); returns ``{"contrastive_loss"}``.

    Without ``neg_text_features`` (e.g. the validation loop's 2-D text) it is plain CLIP InfoNCE.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0,
                 world_size: int = 1, use_horovod: bool = False):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod

    def _gather(self, *blocks: torch.Tensor):
        return gather_blocks(*blocks, rank=self.rank, world_size=self.world_size,
                             gather_with_grad=self.gather_with_grad, use_horovod=self.use_horovod)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                neg_text_features: Optional[torch.Tensor] = None, neg_text_valid: Optional[torch.Tensor] = None,
                output_dict: bool = False, **unused):
        with torch.autocast(device_type=image_features.device.type, enabled=False):  # the loss in fp32
            loss = self._loss(image_features, text_features, logit_scale, neg_text_features, neg_text_valid)
        return {"contrastive_loss": loss} if output_dict else loss

    def _loss(self, image_features, text_features, logit_scale, neg_text_features, neg_text_valid):
        batch = image_features.shape[0]
        all_image, all_text = self._gather(image_features.float(), text_features.float())
        all_neg = all_valid = None
        if neg_text_features is not None:
            if neg_text_valid is None:
                neg_text_valid = torch.ones(neg_text_features.shape[:2], dtype=torch.bool,
                                            device=neg_text_features.device)
            # valid travels as float: gloo cannot all_gather bool tensors
            all_neg, all_valid = self._gather(neg_text_features.float(), neg_text_valid.float())
            all_valid = all_valid.bool()

        if self.local_loss:
            query_image, query_text = image_features.float(), text_features.float()
            labels = torch.arange(batch, device=image_features.device) + batch * self.rank
        else:
            query_image, query_text = all_image, all_text
            labels = torch.arange(all_image.shape[0], device=image_features.device)
        logits_per_image = negclip_logits(query_image, all_text, all_neg, all_valid, logit_scale)
        logits_per_text = logit_scale * query_text @ all_image.T
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
