"""``--loss ce-clip`` (Zhang et al., CE-CLIP; spec degla.md §8): NegCLIP's term + intra-modal contrast (IMC) +
the cross-modal rank loss (CMR) with adaptive per-type margins. Defaults are the corrected forms; the released
code's behaviour is a set of parity modes (``--ceclip-imc-mode reference``, ``--ceclip-threshold-from previous``,
``--ceclip-cmr-average all``). The maths is ``losses.ceclip``; its sigmoid form (``--siglip`` or a model with a
logit_bias) is ``losses.sigmoid.SigmoidCEClipLoss`` (sig-negclip + IMC + CMR with margins scaled by s/100).
"""
from ..flag_rules import FlagRule
from ..losses.ceclip import CMR_AVERAGES, IMC_MODES, THRESHOLD_FROM, THRESHOLD_TYPES, CEClipLoss
from ..losses.sigmoid import SigmoidCEClipLoss
from .hardneg import HARDNEG_REFUSALS, HardNegativeMethod, sigmoid_form, sigmoid_options
from .registry import UsageError, register_method


@register_method
class CEClip(HardNegativeMethod):
    name = "ce-clip"
    flag_prefix = "ceclip"
    summary = "IMC + CMR with per-type margins"
    has_sigmoid_form = True
    refused_flags = HARDNEG_REFUSALS + (
        FlagRule(("--local-loss",), "CE-CLIP's softmax IMC and CMR terms need the gathered global batch (the "
                                    "sigmoid form is always local)", lambda args: not sigmoid_form(args),
                 "softmax form"),)

    def add_arguments(self, g):
        g.add_argument("--ceclip-imc-weight", type=float, default=0.3,
                       help="λ_imc: intra-modal contrast (positive text vs the batch's negative texts); "
                            "CE-CLIP's own recipe 0.3, DeGLA's comparison recipe 0.2.")
        g.add_argument("--ceclip-cmr-weight", type=float, default=0.2,
                       help="λ_cmr: cross-modal rank loss with per-type margins; CE-CLIP's own 0.2, DeGLA's 0.4.")
        g.add_argument("--ceclip-imc-mode", default="paper", choices=IMC_MODES,
                       help="'paper': the image-text match is column 0 and must beat the text-negative "
                            "similarities; 'reference': the released code's target 0 = the batch's first negative "
                            "(a label bug).")
        g.add_argument("--ceclip-threshold-type", default="mean", choices=THRESHOLD_TYPES,
                       help="CMR margin per negative slot k: 'mean' = batch mean positive logit − mean logit of "
                            "slot k; 'max' = max over valid pairs of (positive − slot-k logit) / 5 (the released "
                            "code's); 'fixed' = --ceclip-fixed-threshold. Adaptive margins are detached.")
        g.add_argument("--ceclip-threshold-from", default="current", choices=THRESHOLD_FROM,
                       help="Adaptive margins from this batch ('current'), or from the previous batch, starting at "
                            "0 each epoch ('previous', the released training loop).")
        g.add_argument("--ceclip-cmr-average", default="valid", choices=CMR_AVERAGES,
                       help="CMR's mean over the valid (image, negative) pairs ('valid'), or over all N·K pairs "
                            "with invalid ones counting 0 ('all', the released code's).")
        g.add_argument("--ceclip-fixed-threshold", type=float, default=10.0,
                       help="CMR margin for 'fixed' thresholds.")
        g.add_argument("--ceclip-upper-bound", type=float, default=10.0,
                       help="Adaptive CMR margins are clamped to [0, this].")

    def check(self, args):
        if args.ceclip_threshold_from == "previous" and args.accum_freq > 1:
            raise UsageError("--ceclip-threshold-from previous applies the previous batch's margins, as the "
                             "released loop (which had no gradient accumulation); with --accum-freq "
                             f"{args.accum_freq} the loss runs {args.accum_freq} times per step: use --accum-freq 1")

    def create_loss(self, args):
        if sigmoid_form(args):
            return SigmoidCEClipLoss(
                imc_weight=args.ceclip_imc_weight, cmr_weight=args.ceclip_cmr_weight, imc_mode=args.ceclip_imc_mode,
                threshold_type=args.ceclip_threshold_type, fixed_threshold=args.ceclip_fixed_threshold,
                upper_bound=args.ceclip_upper_bound, threshold_from=args.ceclip_threshold_from,
                cmr_average=args.ceclip_cmr_average, accum_freq=args.accum_freq, **sigmoid_options(args),
                **SigmoidCEClipLoss.distributed(args))
        return CEClipLoss(imc_weight=args.ceclip_imc_weight, cmr_weight=args.ceclip_cmr_weight,
                          imc_mode=args.ceclip_imc_mode, threshold_type=args.ceclip_threshold_type,
                          fixed_threshold=args.ceclip_fixed_threshold, upper_bound=args.ceclip_upper_bound,
                          threshold_from=args.ceclip_threshold_from, cmr_average=args.ceclip_cmr_average,
                          accum_freq=args.accum_freq, **CEClipLoss.distributed(args))
