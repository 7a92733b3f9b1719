"""DeGLA loss (``--loss degla``; ``../shared/spec/degla.md`` §2).

Layout (image-major, global over ranks): N images ``V [N,D]``, positives ``T [N,D]``, negatives
``Tn [N,K,D]`` (t̄_{n,k} is column ``N + n*K + k`` of the text pool ``P = [T ; Tn.flatten]``), the EMA
teacher's copies ``V*``, ``T*``, ``Tn*`` and ``valid [N,K]`` (False for padded negatives, which every term
ignores). All features are L2-normalised; s is the student's (exp'ed) logit scale, τ the fixed TGC scale.

    base    = ½ [CE(s·V Pᵀ, i) + CE(s·T Vᵀ, i)]        image→text over all N(1+K) texts, text→image positives only
    IGC     = mean_i CE(s·[v_i·t_i, v_i·t̄_{i,0..K-1}], 0)
    TGC     = mean_i CE(τ·[t_i·t*_i, t_i·t̄_{i,0..K-1}], 0)    ('fixed'; 'reference' uses the tiling mask)
    distill = Σ ||v − v*||² + Σ ||t − t*||² + Σ ||t̄ − t̄*||²  ('sum'; 'mean' divides by the vector count)
    L = base + λ_I·IGC + λ_T·TGC + λ_D·distill

IGC is read off the base logits (no extra matmul); TGC is an (N, 1+K) gather instead of the reference's
masked N × N(1+K) matrix. Every block is gathered across ranks separately, so 1 and N processes give the same
values (the local slot carries the gradient).

``--local-loss`` (with ``--gather-with-grad`` on several ranks) keeps the terms' balance (spec §4): a rank
computes every term on its own rows only, the cross-entropy terms as sums over those rows divided by the
*global* N, distill as the sum over them (``mean``: divided by the global vector count). Each rank's terms
are then its share of the global terms, the shares sum to them, and so do their gradients: the gradient that
reaches a rank's features is exactly the single-process gradient on the concatenated batch, for every term,
and DDP's mean over W ranks scales all terms alike. Logged values are this rank's share (about 1/W).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .base import GatheredLoss

TGC_MODES = ("fixed", "reference")
DISTILL_REDUCTIONS = ("sum", "mean")


def tgc_reference_columns(n: int, k: int, device=None) -> torch.Tensor:
    """The released code's tiling mask as indices: row i sees flat negatives ``k*N + i`` → ``[N, K]``.

    Flat negative m belongs to sample m // K, slot m % K, so row i mostly sees *other* captions' negatives
    (spec §2.4). The interleaved (correct) map would be ``i*K + k``.
    """
    return torch.arange(k, device=device).unsqueeze(0) * n + torch.arange(n, device=device).unsqueeze(1)


def distill_vector_count(n: int, k: int, valid: Optional[torch.Tensor], negatives: bool) -> int:
    """Vectors the distill term sums over: N images, N positives and (with ``negatives``) the valid negatives;
    ``valid [N,K]`` bool (None: all N*K)."""
    if not negatives:
        return 2 * n
    return 2 * n + (int(valid.sum()) if valid is not None else n * k)


def _mask_negatives(logits: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Set columns ``[:, 1:]`` of ``logits [R, 1+K]`` to −inf where ``valid [R, K]`` is False."""
    if valid is None:
        return logits
    keep = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
    return logits.masked_fill(~keep, float("-inf"))


def degla_terms(image: torch.Tensor, text: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor,
                teacher_image: Optional[torch.Tensor] = None, teacher_text: Optional[torch.Tensor] = None,
                teacher_neg: Optional[torch.Tensor] = None, valid: Optional[torch.Tensor] = None,
                rows: Optional[torch.Tensor] = None, tgc_scale: float = 10.0, tgc_mode: str = "fixed",
                distill_reduction: str = "sum", distill_negatives: bool = True,
                need_tgc: bool = True, need_distill: bool = True,
                igc_scale: Optional[float] = None) -> Dict[str, torch.Tensor]:
    """Unweighted DeGLA terms ``{base, igc, tgc, distill}`` on global features.

    image, text [N,D]; neg [N,K,D]; teacher_* the same shapes (detached here); valid [N,K] bool.
    ``rows`` (global indices, default all N) are the query rows: every CE term averages over them, distill
    sums over them (``--local-loss`` passes this rank's rows). TGC/distill are skipped (absent from the
    result) when not needed, so a run without a teacher can still train base + IGC. ``igc_scale`` replaces s in
    IGC (``--degla-igc-scale``; None keeps s).
    """
    n, k, d = neg.shape
    device = image.device
    local = rows is not None

    def pick(t):  # this rank's rows under --local-loss; no gather copy (and its backward) otherwise
        return t[rows] if local and t is not None else t

    rows = torch.arange(n, device=device) if rows is None else rows
    pool = torch.cat([text, neg.reshape(n * k, d)])
    q_image, q_text = pick(image), pick(text)
    logits_image = scale * q_image @ pool.T  # [R, N(1+K)]
    if valid is not None:
        keep = torch.cat([torch.ones(n, dtype=torch.bool, device=device), valid.reshape(-1)])
        logits_image = logits_image.masked_fill(~keep, float("-inf"))
    logits_text = scale * q_text @ image.T if local else logits_image[:, :n].T
    terms = {"base": (F.cross_entropy(logits_image, rows) + F.cross_entropy(logits_text, rows)) / 2}

    own = torch.cat([rows.unsqueeze(1), n + rows.unsqueeze(1) * k + torch.arange(k, device=device)], 1)
    zeros = torch.zeros(len(rows), dtype=torch.long, device=device)
    own_logits = logits_image.gather(1, own)
    if igc_scale is not None:
        own_logits = own_logits * (igc_scale / scale)
    terms["igc"] = F.cross_entropy(own_logits, zeros)

    if need_tgc:
        if tgc_mode == "fixed":
            q_neg, q_valid = pick(neg), pick(valid)
        elif tgc_mode == "reference":
            columns = tgc_reference_columns(n, k, device)[rows]
            q_neg = neg.reshape(n * k, d)[columns]
            q_valid = None if valid is None else valid.reshape(-1)[columns]
        else:
            raise ValueError(f"--degla-tgc-mode must be one of {TGC_MODES}, got {tgc_mode!r}")
        positive = (q_text * pick(teacher_text).detach()).sum(-1, keepdim=True)
        logits = tgc_scale * torch.cat([positive, torch.einsum("rd,rkd->rk", q_text, q_neg)], 1)
        terms["tgc"] = F.cross_entropy(_mask_negatives(logits, q_valid), zeros)

    if need_distill:
        if distill_reduction not in DISTILL_REDUCTIONS:
            raise ValueError(f"--degla-distill-reduction must be one of {DISTILL_REDUCTIONS}, got {distill_reduction!r}")
        total = (q_image - pick(teacher_image).detach()).pow(2).sum() \
            + (q_text - pick(teacher_text).detach()).pow(2).sum()
        if distill_negatives:
            per_vector = (pick(neg) - pick(teacher_neg).detach()).pow(2).sum(-1)  # [R, K]
            if valid is not None:
                per_vector = per_vector * pick(valid)
            total = total + per_vector.sum()
        count = distill_vector_count(len(rows), k, pick(valid), distill_negatives)
        terms["distill"] = total if distill_reduction == "sum" else total / count
    return terms


class DeGLALoss(GatheredLoss):
    """``--loss degla``: returns the *weighted* terms ``{contrastive_loss, igc_loss, tgc_loss, distill_loss}``.

    Terms whose weight is 0 are not computed (they read 0, and need no teacher). With 2-D text (no negatives, e.g. a
    validation pass) only the plain CLIP contrastive loss is returned.
    """

    def __init__(self, igc_weight: float = 0.1, tgc_weight: float = 0.1, distill_weight: float = 0.005,
                 tgc_scale: float = 10.0, tgc_mode: str = "fixed", distill_reduction: str = "sum",
                 distill_negatives: bool = True, igc_scale: Optional[float] = None, **distributed):
        super().__init__(**distributed)
        self.igc_scale = igc_scale
        if tgc_mode not in TGC_MODES:
            raise ValueError(f"--degla-tgc-mode must be one of {TGC_MODES}, got {tgc_mode!r}")
        if distill_reduction not in DISTILL_REDUCTIONS:
            raise ValueError(f"--degla-distill-reduction must be one of {DISTILL_REDUCTIONS}, got {distill_reduction!r}")
        for flag, value in (("--degla-igc-weight", igc_weight), ("--degla-tgc-weight", tgc_weight),
                            ("--degla-distill-weight", distill_weight), ("--degla-tgc-scale", tgc_scale)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0, got {value}")
        self.igc_weight, self.tgc_weight, self.distill_weight = igc_weight, tgc_weight, distill_weight
        self.tgc_scale, self.tgc_mode = tgc_scale, tgc_mode
        self.distill_reduction, self.distill_negatives = distill_reduction, distill_negatives

    @property
    def needs_teacher(self) -> bool:
        return self.tgc_weight > 0 or self.distill_weight > 0

    def terms(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              neg_text_features: Optional[torch.Tensor] = None, neg_text_valid: Optional[torch.Tensor] = None,
              teacher_image_features: Optional[torch.Tensor] = None,
              teacher_text_features: Optional[torch.Tensor] = None,
              teacher_neg_text_features: Optional[torch.Tensor] = None,
              hard_image_features: Optional[torch.Tensor] = None, **unused) -> Dict[str, torch.Tensor]:
        if hard_image_features is not None:
            raise ValueError("hard-negative images (--csv-hardimg-key) are used by --loss negclip only")
        rows = self.rows(image_features.shape[0], device=image_features.device)
        share = 1.0 / self.world_size if self.local_loss else 1.0  # mean over B local rows -> sum / global N
        if neg_text_features is None:  # 2-D text: plain CLIP InfoNCE (K = 0)
            image, text = self.gather(image_features, text_features)
            empty = text.new_zeros(len(text), 0, text.shape[-1])
            base = degla_terms(image, text, empty, logit_scale, rows=rows, need_tgc=False, need_distill=False)["base"]
            return {"contrastive_loss": share * base}
        if self.needs_teacher and (teacher_image_features is None or teacher_text_features is None
                                   or teacher_neg_text_features is None):
            raise ValueError("--loss degla with --degla-tgc-weight/--degla-distill-weight > 0 needs the EMA "
                             "teacher's features: train a model with an EMA teacher (e.g. degla-ViT-B-32)")
        image, text, neg, valid, t_image, t_text, t_neg = self.gather(
            image_features, text_features, neg_text_features, neg_text_valid, teacher_image_features,
            teacher_text_features, teacher_neg_text_features)
        terms = degla_terms(image, text, neg, logit_scale, t_image, t_text, t_neg, valid, rows=rows,
                            tgc_scale=self.tgc_scale, tgc_mode=self.tgc_mode,
                            distill_reduction="sum" if self.local_loss else self.distill_reduction,
                            distill_negatives=self.distill_negatives,
                            need_tgc=self.tgc_weight > 0, need_distill=self.distill_weight > 0,
                            igc_scale=self.igc_scale)
        if self.local_loss:  # this rank's share of each global term (spec §4)
            terms.update({name: share * terms[name] for name in ("base", "igc", "tgc") if name in terms})
            if "distill" in terms and self.distill_reduction == "mean":
                n, k = neg.shape[:2]
                terms["distill"] = terms["distill"] / distill_vector_count(n, k, valid, self.distill_negatives)
        zero = terms["base"].new_zeros(())
        return {"contrastive_loss": terms["base"], "igc_loss": self.igc_weight * terms["igc"],
                "tgc_loss": self.tgc_weight * terms["tgc"] if "tgc" in terms else zero,
                "distill_loss": self.distill_weight * terms["distill"] if "distill" in terms else zero}
