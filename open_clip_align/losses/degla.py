"""DeGLA loss terms on gathered, L2-normalised features (``../shared/spec/degla.md`` §2).

Layout (image-major, global over ranks): N images ``V [N,D]``, positives ``T [N,D]``, negatives
``Tn [N,K,D]`` (t̄_{n,k} is column ``N + n*K + k`` of the text pool), and the EMA teacher's copies ``V*``,
``T*``, ``Tn*``. ``valid [N,K]`` is False for padded negatives, which every term ignores.

    L = L_base + λ_I·IGC + λ_T·TGC + λ_D·distill

The module that plugs these into training (teacher, flags, registration as ``--loss degla``) belongs to the
DeGLA issue; these functions are complete and tested on their own.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def _masked(logits: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Set the negative columns ``[:, 1:]`` of ``logits [N, 1+K]`` to −inf where ``valid [N,K]`` is False."""
    if valid is None:
        return logits
    keep = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
    return logits.masked_fill(~keep, float("-inf"))


def igc_loss(image: torch.Tensor, text: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor,
             valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Image-Grounded Contrast: each image vs its own positive and its own K negatives, at scale ``s``.

    image, text [N,D]; neg [N,K,D]. Mean over rows of CE(s·[v·t, v·t̄_0..K-1], 0).
    """
    logits = scale * torch.cat([(image * text).sum(-1, keepdim=True), torch.einsum("nd,nkd->nk", image, neg)], 1)
    return F.cross_entropy(_masked(logits, valid), torch.zeros(len(image), dtype=torch.long, device=image.device))


def tgc_loss(text: torch.Tensor, teacher_text: torch.Tensor, neg: torch.Tensor, scale: float = 10.0,
             valid: Optional[torch.Tensor] = None, mode: str = "fixed") -> torch.Tensor:
    """Text-Grounded Contrast: student positive t_i vs the teacher's t*_i (positive) and negatives.

    ``fixed``: the negatives are t_i's own K negatives. ``reference``: the released code's tiling mask, under
    which row i sees negatives ``k*N + i`` (k = 0..K-1) of the flat negative list instead (spec §2.4).
    text, teacher_text [N,D]; neg [N,K,D]; fixed scale τ (default 10).
    """
    n, k, _ = neg.shape
    target_pos = (text * teacher_text.detach()).sum(-1, keepdim=True)
    if mode == "fixed":
        logits = scale * torch.cat([target_pos, torch.einsum("nd,nkd->nk", text, neg)], 1)
        return F.cross_entropy(_masked(logits, valid), torch.zeros(n, dtype=torch.long, device=text.device))
    if mode != "reference":
        raise ValueError(f"tgc mode must be 'fixed' or 'reference', got {mode!r}")
    flat_neg = neg.reshape(n * k, -1)
    columns = torch.stack([kk * n + torch.arange(n, device=text.device) for kk in range(k)], 1)  # [N,K]
    neg_logits = (text.unsqueeze(1) * flat_neg[columns]).sum(-1)
    if valid is not None:
        valid = valid.reshape(-1)[columns]
    logits = scale * torch.cat([target_pos, neg_logits], 1)
    return F.cross_entropy(_masked(logits, valid), torch.zeros(n, dtype=torch.long, device=text.device))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Squared error between student and (detached) teacher embeddings ``[M, D]``.

    ``sum`` over all elements (the paper's); ``mean`` divides by the number of vectors M.
    """
    total = (student - teacher.detach()).pow(2).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / student.shape[0]
    raise ValueError(f"distill reduction must be 'sum' or 'mean', got {reduction!r}")
