"""Gather feature blocks across ranks, each block on its own.

Hard-negative losses need the *global* layout ``[all positives ; all negatives]`` with negatives image-major
(t̄_{n,k} at ``N + n*K + k``). Gathering a per-rank ``[pos_r ; neg_r]`` tensor would interleave ranks and
break that rule, so every block (images, positives, negatives ``[B,K,D]``, teacher copies, masks) is gathered
separately, through open_clip's own ``gather_features`` (no-grad with the live local slot, with-grad, or
horovod), and concatenated rank-major along dim 0.
"""
from typing import List, Optional

import torch
from open_clip.loss import gather_features


def gather_blocks(*blocks: Optional[torch.Tensor], rank: int = 0, world_size: int = 1,
                  gather_with_grad: bool = False, use_horovod: bool = False) -> List[Optional[torch.Tensor]]:
    """Return each ``[B, ...]`` block gathered to ``[W*B, ...]`` (None passes through; bool masks allowed).

    Without grad the local slot is the live tensor, so gradients flow through this rank's rows only.
    """
    if world_size == 1:
        return list(blocks)
    present = [i for i, b in enumerate(blocks) if b is not None]
    # gloo cannot all_gather bool tensors: masks travel as float
    tensors = [blocks[i].float() if blocks[i].dtype == torch.bool else blocks[i] for i in present]
    gathered: List[torch.Tensor] = []
    for j in range(0, len(tensors), 2):
        a = tensors[j]
        b = tensors[j + 1] if j + 1 < len(tensors) else tensors[j]
        all_a, all_b = gather_features(a, b, False, gather_with_grad, rank, world_size, use_horovod)
        gathered.extend([all_a, all_b][:len(tensors) - j])
    out: List[Optional[torch.Tensor]] = list(blocks)
    for i, g in zip(present, gathered):
        out[i] = g.bool() if blocks[i].dtype == torch.bool else g
    return out


def check_local_loss(local_loss: bool, gather_with_grad: bool, world_size: int) -> None:
    """Refuse ``--local-loss`` without ``--gather-with-grad`` on several ranks (ValueError naming both flags).

    With ``--local-loss`` a rank scores only its own rows, against the gathered columns. Other ranks' rows also
    depend on this rank's features (as their columns); only a gather with grad sends those gradients back, so
    without it the gradient is not the loss's gradient (the contrastive terms lose their cross-rank part).
    """
    if local_loss and world_size > 1 and not gather_with_grad:
        raise ValueError("--local-loss needs --gather-with-grad on several processes: each rank scores only its "
                         "own rows, and only a gather with grad returns the gradient that other ranks' rows send "
                         "to this rank's features (add --gather-with-grad, or drop --local-loss)")


def local_rows(batch: int, rank: int, world_size: int, copies: int = 1, device=None) -> torch.Tensor:
    """This rank's rows in a gathered layout of ``copies`` stacked blocks of ``world_size * batch`` rows each
    (e.g. NegCLIP's [images ; hard-negative images]) -> LongTensor [copies * batch]."""
    own = torch.arange(batch, device=device) + batch * rank
    return torch.cat([own + c * world_size * batch for c in range(copies)])
