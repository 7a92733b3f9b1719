"""CE-CLIP loss (``--loss ce-clip``): NegCLIP's hard-negative contrast plus intra-modal contrast and a rank loss.

Layout (image-major, global over ranks): N images ``V [N,D]``, positives ``T [N,D]``, negatives ``Tn [N,K,D]``
(t̄_{n,k} is column ``N + n*K + k`` of the text pool), ``valid [N,K]`` False for padded negatives, which every
term ignores; s is the (already exponentiated) logit scale.

    L     = itc + λ_imc·IMC + λ_cmr·CMR
    itc   = ½ [ CE(s · V Pᵀ, arange N) + CE(s · T Vᵀ, arange N) ]                 (NegCLIP, K negatives)
    CMR   = mean over valid (i,k) of relu(θ_k + s·v_i·t̄_{i,k} − s·v_i·t_i)         ('valid')
          = the same sum / (N·K), invalid pairs counting 0                          ('all', as released)
    θ_k   = clamp(mean_i s·v_i·t_i − mean_{valid i} s·v_i·t̄_{i,k}, 0, upper_bound), detached   ('mean')
          = clamp(max_i valid_ik·(s·v_i·t_i − s·v_i·t̄_{i,k}) / 5, 0, upper_bound), detached ('max', released)
          = fixed_threshold                                                                  ('fixed')
    IMC   = mean_i CE([s·v_i·t_i, s·t_i·t̄_allᵀ], 0)           ('paper': the image-text match beats all N·K negatives)
          = mean_i CE(s·t_i·t̄_allᵀ, 0)                         ('reference': the released label bug)

The adaptive θ comes from the current batch by default; ``threshold_from='previous'`` reproduces the released
training loop, which applies the θ computed on the previous batch, starting at 0 at every epoch
(``start_epoch()``). It is computed from the gathered global batch, so every rank holds the same θ. Every term
is computed in fp32 with autocast disabled.
"""
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F

from .base import GatheredLoss
from .negclip import negclip_logits

IMC_MODES = ("paper", "reference")
THRESHOLD_TYPES = ("mean", "max", "fixed")
THRESHOLD_FROM = ("current", "previous")
CMR_AVERAGES = ("valid", "all")
# the released 'max' margin divides the largest positive-negative gap of a type by 5
MAX_THRESHOLD_DIVISOR = 5.0


def _pair_logits(image: torch.Tensor, text: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor):
    """``s·v_i·t_i`` [N] and ``s·v_i·t̄_{i,k}`` [N,K] for image, text [N,D] and neg [N,K,D]."""
    return scale * (image * text).sum(-1), scale * torch.einsum("nd,nkd->nk", image, neg)


def _all_valid(neg: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    if valid is None:
        return torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device)
    return valid.bool()


def cmr_thresholds(pos_logits: torch.Tensor, neg_logits: torch.Tensor, valid: Optional[torch.Tensor] = None,
                   threshold_type: str = "mean", fixed_threshold: float = 10.0,
                   upper_bound: Optional[float] = 10.0) -> torch.Tensor:
    """Per-slot CMR margins θ [K], detached.

    pos_logits [N] (s·v_i·t_i), neg_logits [N,K] (s·v_i·t̄_{i,k}), valid [N,K] bool. ``mean``: mean positive
    logit minus the mean valid logit of slot k; a slot with no valid entry gets 0. ``max`` (the released
    code's): the largest ``valid_ik·(pos_i − neg_ik)`` of slot k (an invalid pair counts 0), divided by 5. Both
    are clamped to [0, upper_bound] (no upper clamp if None). ``fixed``: ``fixed_threshold`` for every slot.
    """
    k = neg_logits.shape[1]
    if threshold_type == "fixed":
        return neg_logits.new_full((k,), float(fixed_threshold))
    if threshold_type not in THRESHOLD_TYPES:
        raise ValueError(f"--ceclip-threshold-type must be one of {THRESHOLD_TYPES}, got {threshold_type!r}")
    valid = _all_valid(neg_logits, valid)
    pos_logits, neg_logits = pos_logits.detach(), neg_logits.detach()
    if threshold_type == "max":
        gaps = torch.where(valid, pos_logits.unsqueeze(1) - neg_logits, torch.zeros_like(neg_logits))
        return (gaps.max(0).values / MAX_THRESHOLD_DIVISOR).clamp(min=0, max=upper_bound)
    count = valid.sum(0)
    neg_mean = neg_logits.masked_fill(~valid, 0).sum(0) / count.clamp(min=1)
    theta = (pos_logits.mean() - neg_mean).clamp(min=0, max=upper_bound)
    return torch.where(count > 0, theta, torch.zeros_like(theta))


def cmr_loss(image: torch.Tensor, text: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor,
             valid: Optional[torch.Tensor] = None,
             thresholds: Optional[Union[torch.Tensor, float]] = None, average: str = "valid") -> torch.Tensor:
    """Cross-modal rank loss: relu(θ_k + s·v_i·t̄_{i,k} − s·v_i·t_i) summed over valid (i,k), divided by the
    number of valid pairs (``average='valid'``) or by all N·K pairs (``'all'``, the released code's mean).

    image, text [N,D]; neg [N,K,D]; valid [N,K] bool; thresholds θ [K] or a scalar (None: the ``mean``
    margins of this batch). With no valid pair the loss is 0 (still attached to the graph).
    """
    if average not in CMR_AVERAGES:
        raise ValueError(f"--ceclip-cmr-average must be one of {CMR_AVERAGES}, got {average!r}")
    valid = _all_valid(neg, valid)
    pos, negl = _pair_logits(image, text, neg, scale)
    if thresholds is None:
        thresholds = cmr_thresholds(pos, negl, valid)
    hinge = F.relu(thresholds + negl - pos.unsqueeze(1))
    count = valid.sum().clamp(min=1) if average == "valid" else valid.numel()
    return torch.where(valid, hinge, torch.zeros_like(hinge)).sum() / count


def imc_loss(image: torch.Tensor, text: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor,
             valid: Optional[torch.Tensor] = None, mode: str = "paper") -> torch.Tensor:
    """Intra-modal contrast: each positive text t_i against all N·K negatives of the batch (image-major).

    image, text [M,D] (the query rows: all N, or one rank's); neg [N,K,D]; valid [N,K] bool (invalid columns
    −inf). ``paper``: logits
    [s·v_i·t_i, s·t_i·t̄_allᵀ] with target 0. ``reference``: logits s·t_i·t̄_allᵀ with target 0 for every row,
    column 0 (t̄_{0,0}) never masked.
    """
    if mode not in IMC_MODES:
        raise ValueError(f"--ceclip-imc-mode must be one of {IMC_MODES}, got {mode!r}")
    n, k, d = neg.shape
    keep = _all_valid(neg, valid).reshape(n * k)
    text_neg = scale * text @ neg.reshape(n * k, d).T
    if mode == "paper":
        logits = torch.cat([scale * (image * text).sum(-1, keepdim=True), text_neg], 1)
        keep = torch.cat([keep.new_ones(1), keep])
    else:
        logits = text_neg
        keep = keep.clone()
        keep[0] = True
    logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class CEClipLoss(GatheredLoss):
    """CE-CLIP loss (``--loss ce-clip``); returns ``{"contrastive_loss", "imc_loss", "cmr_loss"}`` (weighted).

    Without ``neg_text_features`` (e.g. the validation loop's 2-D text) it is plain CLIP InfoNCE and returns
    ``{"contrastive_loss"}`` only. With ``threshold_from='previous'`` the adaptive margins live in the buffer
    ``previous_thresholds`` ([K], empty = zeros, the state at the start of an epoch); ``start_epoch()`` resets
    it, as the released loop does at each epoch (so a run resumed at an epoch boundary continues exactly).
    """

    def __init__(self, imc_weight: float = 0.3, cmr_weight: float = 0.2, imc_mode: str = "paper",
                 threshold_type: str = "mean", fixed_threshold: float = 10.0, upper_bound: Optional[float] = 10.0,
                 threshold_from: str = "current", cmr_average: str = "valid", accum_freq: int = 1, **distributed):
        if distributed.get("local_loss"):
            raise ValueError("--local-loss is not supported by --loss ce-clip: its IMC and CMR terms need the "
                             "gathered global batch")
        super().__init__(**distributed)
        if imc_mode not in IMC_MODES:
            raise ValueError(f"--ceclip-imc-mode must be one of {IMC_MODES}, got {imc_mode!r}")
        if threshold_type not in THRESHOLD_TYPES:
            raise ValueError(f"--ceclip-threshold-type must be one of {THRESHOLD_TYPES}, got {threshold_type!r}")
        if threshold_from not in THRESHOLD_FROM:
            raise ValueError(f"--ceclip-threshold-from must be one of {THRESHOLD_FROM}, got {threshold_from!r}")
        if cmr_average not in CMR_AVERAGES:
            raise ValueError(f"--ceclip-cmr-average must be one of {CMR_AVERAGES}, got {cmr_average!r}")
        if threshold_from == "previous" and accum_freq > 1:
            raise ValueError("--ceclip-threshold-from previous applies the previous batch's margins, as the "
                             "released loop (which had no gradient accumulation); with --accum-freq "
                             f"{accum_freq} the loss runs {accum_freq} times per step: use --accum-freq 1")
        self.imc_weight = imc_weight
        self.cmr_weight = cmr_weight
        self.imc_mode = imc_mode
        self.threshold_type = threshold_type
        self.fixed_threshold = fixed_threshold
        self.upper_bound = upper_bound
        self.threshold_from = threshold_from
        self.cmr_average = cmr_average
        self.register_buffer("previous_thresholds", torch.zeros(0), persistent=False)

    def start_epoch(self) -> None:
        """Previous-batch margins restart at 0 (the released loop initialises them in each epoch)."""
        self.previous_thresholds = self.previous_thresholds.new_zeros(0)

    def _thresholds(self, pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor,
                    margin_factor: float = 1.0) -> torch.Tensor:
        """θ [K] for this batch's CMR; in 'previous' mode the stored θ, replaced by this batch's for the next.
        ``margin_factor`` rescales the fixed margin and the upper bound (the sigmoid form's s/100)."""
        upper = None if self.upper_bound is None else self.upper_bound * margin_factor
        current = cmr_thresholds(pos, neg, valid, self.threshold_type, self.fixed_threshold * margin_factor, upper)
        if self.threshold_from == "current" or self.threshold_type == "fixed":
            return current
        previous = self.previous_thresholds
        if previous.numel() == 0:
            previous = torch.zeros_like(current)
        self.previous_thresholds = current
        return previous

    def terms(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              neg_text_features: Optional[torch.Tensor] = None, neg_text_valid: Optional[torch.Tensor] = None,
              hard_image_features: Optional[torch.Tensor] = None, **unused) -> Dict[str, torch.Tensor]:
        if hard_image_features is not None:
            raise ValueError("hard-negative images (--csv-hardimg-key) are used by --loss negclip only")
        return self._losses(image_features, text_features, logit_scale, neg_text_features, neg_text_valid)

    def _losses(self, image, text, scale, neg, valid):
        if neg is None:
            image, text = self.gather(image, text)
            labels = torch.arange(image.shape[0], device=image.device)
            logits = scale * image @ text.T
            return {"contrastive_loss": (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2}
        valid = _all_valid(neg, valid)
        image, text, neg, valid = self.gather(image, text, neg, valid)
        labels = torch.arange(image.shape[0], device=image.device)
        itc = (F.cross_entropy(negclip_logits(image, text, neg, valid, scale), labels)
               + F.cross_entropy(scale * text @ image.T, labels)) / 2
        thresholds = self._thresholds(*_pair_logits(image, text, neg, scale), valid)
        return {"contrastive_loss": itc,
                "imc_loss": self.imc_weight * imc_loss(image, text, neg, scale, valid, self.imc_mode),
                "cmr_loss": self.cmr_weight * cmr_loss(image, text, neg, scale, valid, thresholds, self.cmr_average)}
