"""The sigmoid (SigLIP) forms of the hard-negative losses (spec backbones.md §2.4-2.5).

Notation: s = exp(logit_scale), b = logit_bias, z(v, t) = s·⟨v, t⟩ + b, ℓ⁺(z) = softplus(−z), ℓ⁻(z) = softplus(z).
A rank holds B images V, positives T, negatives T̄ ``[B,K,D]`` with validity M ``[B,K]``; N = W·B is the global
batch. Every loss is written per rank, over its **local query rows** against **all columns**:

    sig-negclip  L_r = (1/B) Σ_{i∈r} [ ℓ⁺(z_ii) + Σ_{j≠i, all ranks} ℓ⁻(z_ij) + λ_hn Σ_{(n,k)∈C(i)} M_nk ℓ⁻(z(v_i, t̄_nk)) ]
                 C(i) = {(i, k)} ('own', no communication) or every global negative ('all')
    sig-degla    sig-negclip + λ_I·IGC + λ_T·TGC + λ_D·distill   (IGC/TGC: means over local rows; distill's sums ×W)
    sig-ce-clip  sig-negclip + λ_imc·IMC + λ_cmr·CMR            (IMC over all N·K negatives; CMR margins × s/100)

Columns from other ranks arrive through ``torch.distributed.nn.all_gather`` (gradients flow back to the sender),
so the gradient reaching a rank's features is W × the single-process gradient on the concatenated batch and
DDP's mean over ranks is exactly that gradient; means over local rows (and sums multiplied by W) make the mean
of the ranks' losses the single-process loss. Hence ``--local-loss``/``--gather-with-grad`` change nothing here
(the sigmoid form is always local rows with grad-carrying gathers). CMR's adaptive margins come from detached
gathers of every rank's logits, so all ranks use the same θ. Every term is fp32 with autocast off
(``GatheredLoss``).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .base import GatheredLoss
from .ceclip import CEClipLoss, imc_loss
from .degla import DISTILL_REDUCTIONS, _mask_negatives
from .gather import gather_blocks

HARDNEG_COLUMNS = ("own", "all")


def sigmoid_negclip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                         neg: Optional[torch.Tensor] = None, valid: Optional[torch.Tensor] = None,
                         all_text: Optional[torch.Tensor] = None, offset: int = 0,
                         all_neg: Optional[torch.Tensor] = None, all_valid: Optional[torch.Tensor] = None,
                         hardneg_weight: float = 1.0) -> torch.Tensor:
    """sig-negclip for B local rows: image, text [B,D]; all_text [N,D] every rank's positives (default ``text``),
    this rank's positives at rows ``offset..offset+B``; own negatives ``neg [B,K,D]``/``valid [B,K]``, or, when
    ``all_neg [N,K,D]``/``all_valid [N,K]`` are given, every global negative for every row. Returns the scalar
    ``(1/B) Σ_i [...]``."""
    batch = image.shape[0]
    all_text = text if all_text is None else all_text
    logits = scale * image @ all_text.T + bias  # [B, N]
    labels = -torch.ones_like(logits)
    labels[torch.arange(batch, device=image.device), offset + torch.arange(batch, device=image.device)] = 1.0
    total = -F.logsigmoid(labels * logits).sum()
    if all_neg is not None:
        columns = all_neg.reshape(-1, all_neg.shape[-1])
        neg_logits = scale * image @ columns.T + bias  # [B, N*K]
        keep = all_valid.reshape(1, -1)
    elif neg is not None:
        neg_logits = scale * torch.einsum("bd,bkd->bk", image, neg) + bias  # [B, K]
        keep = valid
    else:
        return total / batch
    keep = torch.ones_like(neg_logits, dtype=torch.bool) if keep is None else keep
    hard = torch.where(keep, F.softplus(neg_logits), torch.zeros_like(neg_logits)).sum()
    return (total + hardneg_weight * hard) / batch


class SigmoidNegCLIPLoss(GatheredLoss):
    """``--loss negclip`` in sigmoid form; returns ``{"contrastive_loss"}``. NegCLIP's hard-negative images join
    the local batch as extra rows (pairwise terms do not depend on the column order)."""

    def __init__(self, hardneg_weight: float = 1.0, columns: str = "own", local_loss: bool = False,
                 gather_with_grad: bool = False, **distributed):
        if columns not in HARDNEG_COLUMNS:
            raise ValueError(f"--siglip-hardneg-columns must be one of {HARDNEG_COLUMNS}, got {columns!r}")
        if hardneg_weight < 0:
            raise ValueError(f"--siglip-hardneg-weight must be >= 0, got {hardneg_weight}")
        super().__init__(**distributed)  # always local rows with grad-carrying gathers: the two flags are moot
        self.hardneg_weight, self.columns = hardneg_weight, columns

    def exchange(self, *blocks: Optional[torch.Tensor]):
        """Each ``[B, ...]`` block gathered to ``[W*B, ...]`` with gradients flowing back to its rank."""
        return gather_blocks(*blocks, rank=self.rank, world_size=self.world_size, gather_with_grad=True,
                             use_horovod=False)

    def contrastive(self, image, text, scale, bias, neg, valid) -> torch.Tensor:
        if bias is None:
            raise ValueError("the sigmoid loss needs the model's logit_bias (build it with --siglip or use a model "
                             "whose config sets init_logit_bias)")
        if neg is not None and valid is None:
            valid = torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device)
        all_text, = self.exchange(text)
        all_neg = all_valid = None
        if neg is not None and self.columns == "all":
            all_neg, all_valid = self.exchange(neg, valid)
        return sigmoid_negclip_loss(image, text, scale, bias, neg, valid, all_text, self.rank * image.shape[0],
                                    all_neg, all_valid, self.hardneg_weight)

    def terms(self, image_features, text_features, logit_scale, logit_bias=None, neg_text_features=None,
              neg_text_valid=None, hard_image_features=None, hard_text_features=None, hard_neg_text_features=None,
              hard_neg_text_valid=None, **unused) -> Dict[str, torch.Tensor]:
        image, text, neg, valid = image_features, text_features, neg_text_features, neg_text_valid
        if hard_image_features is not None:
            image, text = torch.cat([image, hard_image_features]), torch.cat([text, hard_text_features])
            neg = None if neg is None else torch.cat([neg, hard_neg_text_features])
            valid = None if valid is None else torch.cat([valid, hard_neg_text_valid])
        return {"contrastive_loss": self.contrastive(image, text, logit_scale, logit_bias, neg, valid)}


def igc_loss(image: torch.Tensor, text: torch.Tensor, neg: torch.Tensor, valid: Optional[torch.Tensor],
             scale: torch.Tensor) -> torch.Tensor:
    """Image-grounded contrast, mean over rows: CE(scale·[⟨v_i,t_i⟩, ⟨v_i,t̄_ik⟩_k], 0), invalid negatives −inf.
    image, text [B,D]; neg [B,K,D]; valid [B,K]. The bias cancels in the softmax."""
    logits = scale * torch.cat([(image * text).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", image, neg)], 1)
    return F.cross_entropy(_mask_negatives(logits, valid), torch.zeros(len(image), dtype=torch.long,
                                                                       device=image.device))


def tgc_loss(text: torch.Tensor, teacher_text: torch.Tensor, neg: torch.Tensor, valid: Optional[torch.Tensor],
             tgc_scale: float) -> torch.Tensor:
    """Text-grounded contrast ('fixed'), mean over rows: CE(τ·[⟨t_i,t*_i⟩, ⟨t_i,t̄_ik⟩_k], 0)."""
    positive = (text * teacher_text.detach()).sum(-1, keepdim=True)
    logits = tgc_scale * torch.cat([positive, torch.einsum("bd,bkd->bk", text, neg)], 1)
    return F.cross_entropy(_mask_negatives(logits, valid), torch.zeros(len(text), dtype=torch.long,
                                                                       device=text.device))


class SigmoidDeGLALoss(SigmoidNegCLIPLoss):
    """``--loss degla`` in sigmoid form: weighted ``{contrastive_loss, igc_loss, tgc_loss, distill_loss}``.

    ``igc_scale`` None uses the model's s (as the softmax form); the spec offers a fixed scale because a SigLIP
    checkpoint's s need not be ≈100. TGC is the 'fixed' form only (the released 'reference' tiling is a property of
    the softmax code's global layout)."""

    def __init__(self, igc_weight: float = 0.1, tgc_weight: float = 0.1, distill_weight: float = 0.005,
                 tgc_scale: float = 10.0, igc_scale: Optional[float] = None, distill_reduction: str = "sum",
                 distill_negatives: bool = True, **kwargs):
        super().__init__(**kwargs)
        if distill_reduction not in DISTILL_REDUCTIONS:
            raise ValueError(f"--degla-distill-reduction must be one of {DISTILL_REDUCTIONS}, "
                             f"got {distill_reduction!r}")
        self.igc_weight, self.tgc_weight, self.distill_weight = igc_weight, tgc_weight, distill_weight
        self.tgc_scale, self.igc_scale = tgc_scale, igc_scale
        self.distill_reduction, self.distill_negatives = distill_reduction, distill_negatives

    def distill(self, image, text, neg, valid, t_image, t_text, t_neg) -> torch.Tensor:
        """W × this rank's squared distances to the teacher ('sum'), or that over the global vector count ('mean')."""
        total = (image - t_image.detach()).pow(2).sum() + (text - t_text.detach()).pow(2).sum()
        count = 2.0 * len(image)
        if self.distill_negatives:
            per_vector = (neg - t_neg.detach()).pow(2).sum(-1)
            total = total + (per_vector * valid).sum()
            count = count + valid.sum()
        total = total * self.world_size
        if self.distill_reduction == "sum":
            return total
        count = torch.as_tensor(count, dtype=total.dtype, device=total.device).detach()
        if self.world_size > 1:
            count = count.clone()
            torch.distributed.all_reduce(count)
        return total / count

    def terms(self, image_features, text_features, logit_scale, logit_bias=None, neg_text_features=None,
              neg_text_valid=None, teacher_image_features=None, teacher_text_features=None,
              teacher_neg_text_features=None, hard_image_features=None, **unused) -> Dict[str, torch.Tensor]:
        if hard_image_features is not None:
            raise ValueError("hard-negative images (--csv-hardimg-key) are used by --loss negclip only")
        image, text, neg = image_features, text_features, neg_text_features
        out = {"contrastive_loss": self.contrastive(image, text, logit_scale, logit_bias, neg, neg_text_valid)}
        if neg is None:
            return out
        valid = (torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device) if neg_text_valid is None
                 else neg_text_valid)
        zero = out["contrastive_loss"].new_zeros(())
        scale = logit_scale if self.igc_scale is None else self.igc_scale
        out["igc_loss"] = self.igc_weight * igc_loss(image, text, neg, valid, scale) if self.igc_weight else zero
        needs_teacher = self.tgc_weight > 0 or self.distill_weight > 0
        if needs_teacher and (teacher_text_features is None or teacher_image_features is None
                              or teacher_neg_text_features is None):
            raise ValueError("--loss degla with --degla-tgc-weight/--degla-distill-weight > 0 needs the EMA "
                             "teacher's features")
        out["tgc_loss"] = (self.tgc_weight * tgc_loss(text, teacher_text_features, neg, valid, self.tgc_scale)
                           if self.tgc_weight else zero)
        out["distill_loss"] = (self.distill_weight * self.distill(image, text, neg, valid.float(),
                                                                  teacher_image_features, teacher_text_features,
                                                                  teacher_neg_text_features)
                               if self.distill_weight else zero)
        return out


class SigmoidCEClipLoss(CEClipLoss):
    """``--loss ce-clip`` in sigmoid form: weighted ``{contrastive_loss, imc_loss, cmr_loss}``.

    IMC is the softmax term of ``ceclip.imc_loss`` for this rank's rows against every global negative (gathered with
    grad). CMR is bias-free but its margins are in units of s: the fixed margin and the upper bound are multiplied
    by s/100 (CE-CLIP's values assume s ≈ 100); the adaptive margins come from every rank's detached logits."""

    def __init__(self, hardneg_weight: float = 1.0, columns: str = "own", local_loss: bool = False,
                 gather_with_grad: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.pairs = SigmoidNegCLIPLoss(hardneg_weight, columns, rank=self.rank, world_size=self.world_size)

    def terms(self, image_features, text_features, logit_scale, logit_bias=None, neg_text_features=None,
              neg_text_valid=None, hard_image_features=None, **unused) -> Dict[str, torch.Tensor]:
        if hard_image_features is not None:
            raise ValueError("hard-negative images (--csv-hardimg-key) are used by --loss negclip only")
        image, text, neg, scale = image_features, text_features, neg_text_features, logit_scale
        out = {"contrastive_loss": self.pairs.contrastive(image, text, scale, logit_bias, neg, neg_text_valid)}
        if neg is None:
            return out
        valid = (torch.ones(neg.shape[:2], dtype=torch.bool, device=neg.device) if neg_text_valid is None
                 else neg_text_valid.bool())
        all_neg, all_valid = self.pairs.exchange(neg, valid)
        out["imc_loss"] = self.imc_weight * imc_loss(image, text, all_neg, scale, all_valid, self.imc_mode)
        pos_logits = scale * (image * text).sum(-1)  # [B]
        neg_logits = scale * torch.einsum("bd,bkd->bk", image, neg)  # [B, K]
        with torch.no_grad():
            all_pos, all_negl = gather_blocks(pos_logits.detach(), neg_logits.detach(), rank=self.rank,
                                              world_size=self.world_size)
        theta = self._thresholds(all_pos, all_negl, all_valid, margin_factor=float(scale.detach()) / 100.0)
        hinge = torch.where(valid, F.relu(theta + neg_logits - pos_logits.unsqueeze(1)), torch.zeros_like(neg_logits))
        count = all_valid.sum().clamp(min=1) if self.cmr_average == "valid" else all_valid.numel()
        out["cmr_loss"] = self.cmr_weight * hinge.sum() * self.world_size / count
        return out
