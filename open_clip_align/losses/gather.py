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
