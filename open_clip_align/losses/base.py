"""The base of every hard-negative loss: distributed arguments, block-wise gathers, fp32 terms.

A subclass implements ``terms(**features) -> {name: weighted term}``; ``forward`` casts every floating input to
fp32 and runs ``terms`` with autocast off (hard-negative logits at s ≈ 100 overflow fp16), then returns the dict
(open_clip_train sums and logs it) or its sum. ``gather`` collects ``[B, ...]`` blocks from every rank *one block
at a time* (``gather.gather_blocks``), so global layouts such as NegCLIP's image-major negatives do not depend on
the number of processes; ``rows`` names this rank's query rows under ``--local-loss``.
"""
import argparse
import inspect
from typing import Dict, List, Optional

import torch

from .gather import check_local_loss, gather_blocks, local_rows


class GatheredLoss(torch.nn.Module):
    """Base class: holds open_clip_train's distributed arguments; see the module docstring."""

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False):
        super().__init__()
        check_local_loss(local_loss, gather_with_grad, world_size)
        self.local_loss, self.gather_with_grad, self.use_horovod = local_loss, gather_with_grad, use_horovod
        self.rank, self.world_size = rank, world_size

    @staticmethod
    def distributed(args: argparse.Namespace) -> dict:
        """The constructor's distributed keyword arguments from an open_clip_train args namespace."""
        return dict(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, rank=args.rank,
                    world_size=args.world_size, use_horovod=args.horovod)

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
        return out if output_dict else sum(out.values())
