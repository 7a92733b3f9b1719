"""The base of every hard-negative loss: distributed arguments, block-wise gathers, fp32 terms.

A subclass implements ``terms(**features) -> {name: weighted term}``; ``forward`` casts every floating input to
fp32 and runs ``terms`` with autocast off (hard-negative logits at s ≈ 100 overflow fp16), then returns the dict
(open_clip_train sums and logs it) or its sum. ``gather`` collects ``[B, ...]`` blocks from every rank *one block
at a time* (``gather.gather_blocks``), so global layouts such as NegCLIP's image-major negatives do not depend on
the number of processes; ``rows`` names this rank's query rows under ``--local-loss``.

A caption decoder (open_clip's ``CoCa``: the model's output carries ``logits [B, L-1, V]`` and ``labels [B, L-1]``)
adds its teacher-forced caption loss to any subclass, as upstream's ``CoCaLoss`` does: every term of ``terms`` is
multiplied by ``contrastive_loss_weight`` and ``caption_loss = caption_loss_weight · CE(logits, labels)`` (pad id 0
ignored) is added; ``--coca-contrastive-loss-weight``/``--coca-caption-loss-weight`` (1 and 2) set them. The
decision follows the model's outputs, never its name.
"""
import argparse
import inspect
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from .gather import check_local_loss, gather_blocks, local_rows


class GatheredLoss(torch.nn.Module):
    """Base class: holds open_clip_train's distributed arguments; see the module docstring."""

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, contrastive_loss_weight: float = 1.0, caption_loss_weight: float = 2.0):
        super().__init__()
        check_local_loss(local_loss, gather_with_grad, world_size)
        self.local_loss, self.gather_with_grad, self.use_horovod = local_loss, gather_with_grad, use_horovod
        self.rank, self.world_size = rank, world_size
        self.contrastive_loss_weight, self.caption_loss_weight = contrastive_loss_weight, caption_loss_weight

    @staticmethod
    def distributed(args: argparse.Namespace) -> dict:
        """The constructor's run-level keyword arguments from an open_clip_train args namespace: distribution and
        the caption-decoder weights."""
        return dict(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, rank=args.rank,
                    world_size=args.world_size, use_horovod=args.horovod,
                    contrastive_loss_weight=getattr(args, "coca_contrastive_loss_weight", 1.0),
                    caption_loss_weight=getattr(args, "coca_caption_loss_weight", 2.0))

    def gather(self, *blocks: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
        """Each ``[B, ...]`` block gathered to ``[W*B, ...]`` on its own (None passes through)."""
        return gather_blocks(*blocks, rank=self.rank, world_size=self.world_size,
                             gather_with_grad=self.gather_with_grad, use_horovod=self.use_horovod)

    def rows(self, batch: int, copies: int = 1, device=None) -> Optional[torch.Tensor]:
        """This rank's rows of the gathered layout under ``--local-loss`` (LongTensor), else None (all rows)."""
        return local_rows(batch, self.rank, self.world_size, copies, device) if self.local_loss else None

    def terms(self, **features) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, *args: torch.Tensor, output_dict: bool = False, **features):
        """``args`` fill ``terms``' parameters in order (``image_features, text_features, logit_scale, ...``)."""
        if args:
            names = list(inspect.signature(self.terms).parameters)
            features.update(zip(names, args))
        device = next(v.device for v in features.values() if torch.is_tensor(v))
        features = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in features.items()}
        with torch.autocast(device_type=device.type, enabled=False):
            out = self.terms(**features)
            if features.get("logits") is not None and features.get("labels") is not None:
                out = {k: self.contrastive_loss_weight * v for k, v in out.items()}
                out["caption_loss"] = self.caption_loss_weight * caption_loss(features["logits"], features["labels"])
        return out if output_dict else sum(out.values())


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Teacher-forced caption cross-entropy: logits [B, L, V], labels [B, L] (``pad_id`` ignored), as CoCaLoss."""
    return F.cross_entropy(logits.permute(0, 2, 1), labels, ignore_index=pad_id)
