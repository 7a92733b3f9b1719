"""ComAlign training loss (a RECONSTRUCTION: the paper's loss and recipe were not released; spec comalign.md §6).

For a global batch of N (image, caption) pairs with role components (entities e, relations r) on both sides,
the refined global token c of each image and the frozen caption embedding t̂::

    S^x_I2T[b, b'] = s_I2T(image b's x-components, caption b''s x-components)      [N, N]
    S^x_T2I[b', b] = s_T2I(caption b''s x-components, image b's x-components)      [N, N]
    L = Σ_{x ∈ {e, r}} λ_x · ½ [CE(S^x_I2T / τ, diag) + CE(S^x_T2I / τ, diag)]
      + λ_g · ½ [CE(ĉ t̂ᵀ / τ, diag) + CE(t̂ ĉᵀ / τ, diag)]

s is the max-mean score of ``open_clip_align.comalign.scoring`` (``padding="masked"`` by default; an optional
smooth max τ_m·logsumexp(·/τ_m) gives denser gradients than the hard max). A role term only uses query rows whose
image *and* caption both have at least one real component of that role (a caption without relations says
nothing about relation matching). The base encoders are frozen, so only the head receives gradients.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..losses.base import GatheredLoss
from .scoring import maxmean_scores

ROLES = ("entity", "relation")


def role_contrastive_loss(image_comp: torch.Tensor, image_mask: torch.Tensor, text_comp: torch.Tensor,
                          text_mask: torch.Tensor, temperature: float, padding: str = "masked",
                          smooth: Optional[float] = None, row_offset: int = 0,
                          n_rows: Optional[int] = None) -> torch.Tensor:
    """Symmetric InfoNCE on max-mean role scores; pair b is (image b, caption b).

    image_comp [N,P,d] / text_comp [N,K,d] L2-normalised, masks [N,P] / [N,K] bool (True = real).
    Rows ``row_offset .. row_offset + n_rows`` are the queries (all N by default; one rank's rows with
    ``--local-loss``), columns are all N. The cross-entropies are averaged over the V qualifying rows of the
    whole batch: a rank's share is Σ_{its qualifying rows} CE · N / (n_rows · V), so the mean of the ranks'
    local losses is the full-batch loss even when ranks hold different numbers of qualifying rows.
    Returns a scalar; 0 (still in the graph) when none of the query rows qualifies.
    """
    n = image_comp.shape[0]
    n_rows = n if n_rows is None else n_rows
    rows = torch.arange(row_offset, row_offset + n_rows, device=image_comp.device)
    i2t, t2i = maxmean_scores(image_comp, text_comp, image_mask, text_mask, padding=padding, smooth=smooth)
    i2t, t2i = i2t[rows], t2i[rows]  # [n_rows, N]: image rows over captions, caption rows over images
    qualifies = image_mask.any(dim=1) & text_mask.any(dim=1)   # [N]
    valid = qualifies[rows]
    if not bool(valid.any()):
        return (i2t.sum() + t2i.sum()) * 0.0
    labels = rows[valid]
    loss_i2t = F.cross_entropy(i2t[valid] / temperature, labels, reduction="sum")
    loss_t2i = F.cross_entropy(t2i[valid] / temperature, labels, reduction="sum")
    scale = n / (n_rows * int(qualifies.sum()))
    return (loss_i2t + loss_t2i) * (scale / 2)


def global_contrastive_loss(refined: torch.Tensor, text: torch.Tensor, temperature: float, row_offset: int = 0,
                            n_rows: Optional[int] = None) -> torch.Tensor:
    """CLIP InfoNCE between the refined global token ĉ [N,d] and the frozen caption embedding t̂ [N,d]."""
    n_rows = refined.shape[0] if n_rows is None else n_rows
    rows = torch.arange(row_offset, row_offset + n_rows, device=refined.device)
    logits_i2t = refined[rows] @ text.T / temperature
    logits_t2i = text[rows] @ refined.T / temperature
    return (F.cross_entropy(logits_i2t, rows) + F.cross_entropy(logits_t2i, rows)) / 2


class ComAlignLoss(GatheredLoss):
    """``--loss comalign``: role-wise contrastive terms on max-mean scores + a CLIP term on the refined global.

    Consumes the component outputs of ``ComAlignCLIP`` (``image_entity``, ``image_relation``, their masks,
    ``refined_global``, ``text_features``, ``text_entity``, ``text_relation``, their masks) and returns
    ``{"entity_loss", "relation_loss", "global_loss"}``, each already weighted. Features are gathered across
    ranks block by block, so 1 and N processes see the same global batch.
    """

    def __init__(self, temperature: float = 0.07, entity_weight: float = 1.0, relation_weight: float = 1.0,
                 global_weight: float = 1.0, padding: str = "masked", smooth: Optional[float] = None, **distributed):
        super().__init__(**distributed)
        if temperature <= 0:
            raise ValueError(f"--comalign-temperature must be > 0, got {temperature}")
        if padding not in ("masked", "reference"):
            raise ValueError(f"--comalign-padding must be 'masked' or 'reference', got {padding!r}")
        if smooth is not None and smooth <= 0:
            raise ValueError(f"--comalign-smooth-max must be > 0 (or 0 for the hard max), got {smooth}")
        self.temperature, self.padding, self.smooth = temperature, padding, smooth
        self.weights = {"entity": entity_weight, "relation": relation_weight, "global": global_weight}

    def terms(self, **features) -> Dict[str, torch.Tensor]:
        missing = [k for k in ("refined_global", "text_entity", "image_entity") if k not in features]
        if missing:
            raise ValueError(f"--loss comalign needs ComAlign component inputs (images as views or precomputed "
                             f"features, captions with their phrases); the model output lacks {missing}")
        return self._losses(features)

    def _losses(self, f: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        batch = f["refined_global"].shape[0]
        names = ["refined_global", "text_features"]
        for role in ROLES:
            names += [f"image_{role}", f"image_{role}_mask", f"text_{role}", f"text_{role}_mask"]
        gathered = dict(zip(names, self.gather(*(f[k] for k in names))))
        rows = dict(row_offset=batch * self.rank, n_rows=batch) if self.local_loss else {}
        losses = {}
        for role in ROLES:
            term = role_contrastive_loss(gathered[f"image_{role}"], gathered[f"image_{role}_mask"],
                                         gathered[f"text_{role}"], gathered[f"text_{role}_mask"],
                                         self.temperature, self.padding, self.smooth, **rows)
            losses[f"{role}_loss"] = self.weights[role] * term
        losses["global_loss"] = self.weights["global"] * global_contrastive_loss(
            gathered["refined_global"], gathered["text_features"], self.temperature, **rows)
        return losses
