"""``--loss degla`` (Hu et al., DeGLA; spec degla.md): NegCLIP's term + Image-Grounded Contrast + Text-Grounded
Contrast + self-distillation to an EMA teacher (any model gets one, a frozen copy taken after the pretrained
weights load; ``degla-*`` aliases own one by config). In sigmoid form (``--siglip`` or a model with a logit_bias)
the contrastive term is sig-negclip and IGC/TGC/distill carry over (``losses.sigmoid``).

Everything DeGLA is here or named here: its flags (``--degla-*``), their rules, its model needs (hard negatives;
the teacher while TGC or distill is on, with ``--degla-ema-decay``), and its loss (maths in ``losses.degla``; the
teacher's EMA in ``models.ema``).
"""
import argparse

from ..losses.degla import DISTILL_REDUCTIONS, TGC_MODES, DeGLALoss
from ..losses.sigmoid import SigmoidDeGLALoss
from .hardneg import HARDNEG_REFUSALS, HardNegativeMethod, sigmoid_form, sigmoid_options
from .registry import ModelNeeds, UsageError, register_method


@register_method
class DeGLA(HardNegativeMethod):
    name = "degla"
    flag_prefix = "degla"
    summary = "IGC + TGC + self-distillation to an EMA teacher"
    has_sigmoid_form = True
    refused_flags = HARDNEG_REFUSALS

    def add_arguments(self, g):
        g.add_argument("--degla-igc-weight", type=float, default=0.1,
                       help="λ_I: Image-Grounded Contrast (each image vs its positive and its own K negatives).")
        g.add_argument("--degla-tgc-weight", type=float, default=0.1,
                       help="λ_T: Text-Grounded Contrast (each positive vs the teacher's copy and its K negatives).")
        g.add_argument("--degla-distill-weight", type=float, default=0.005,
                       help="λ_D: squared distance to the EMA teacher's embeddings. With the default 'sum' "
                            "reduction the term grows with the global batch N: keep λ_D·N constant (0.005 at "
                            "N = 256).")
        g.add_argument("--degla-tgc-scale", type=float, default=10.0, help="Fixed logit scale τ of the TGC term.")
        g.add_argument("--degla-igc-scale", type=float, default=None,
                       help="Fixed logit scale of the IGC term (default: the model's own scale s, as the paper). "
                            "Useful in sigmoid form, where a SigLIP checkpoint's s sets IGC's sharpness.")
        g.add_argument("--degla-tgc-mode", default="fixed", choices=TGC_MODES,
                       help="'fixed': each text against its own negatives; 'reference': the released code's tiling "
                            "mask (row i sees negatives k·N + i), for parity with released checkpoints.")
        g.add_argument("--degla-distill-reduction", default="sum", choices=DISTILL_REDUCTIONS,
                       help="'sum' over all embedding vectors (the paper's) or 'mean' (sum / number of vectors).")
        g.add_argument("--degla-distill-negatives", default=True, action=argparse.BooleanOptionalAction,
                       help="Distil the negative captions' embeddings too (the paper's default).")
        g.add_argument("--degla-ema-decay", "--ema-decay", dest="ema_decay", type=float, default=0.9996,
                       help="EMA teacher decay α, applied once per optimizer step: θ_T ← α·θ_T + (1−α)·θ_S. "
                            "1.0 keeps the teacher frozen at the starting weights.")

    def check(self, args):
        if not 0.0 <= args.ema_decay <= 1.0:
            raise UsageError(f"argument --degla-ema-decay/--ema-decay: expected a decay in [0, 1], got "
                             f"{args.ema_decay}")
        if args.degla_igc_scale is not None and args.degla_igc_scale <= 0:
            raise UsageError(f"argument --degla-igc-scale: expected a scale > 0, got {args.degla_igc_scale}")
        if sigmoid_form(args) and args.degla_tgc_mode == "reference":
            raise UsageError("--degla-tgc-mode reference reproduces the released softmax code's tiling over the "
                             "global batch; the sigmoid form (--siglip or a model with a logit_bias) has 'fixed' "
                             "only")

    def needs(self, args) -> ModelNeeds:
        return ModelNeeds(hardneg=True, teacher=args.degla_tgc_weight > 0 or args.degla_distill_weight > 0,
                          ema_decay=args.ema_decay)

    def create_loss(self, args):
        common = dict(igc_weight=args.degla_igc_weight, tgc_weight=args.degla_tgc_weight,
                      distill_weight=args.degla_distill_weight, tgc_scale=args.degla_tgc_scale,
                      igc_scale=args.degla_igc_scale, distill_reduction=args.degla_distill_reduction,
                      distill_negatives=args.degla_distill_negatives)
        if sigmoid_form(args):
            return SigmoidDeGLALoss(**common, **sigmoid_options(args), **SigmoidDeGLALoss.distributed(args))
        return DeGLALoss(**common, tgc_mode=args.degla_tgc_mode, **DeGLALoss.distributed(args))
