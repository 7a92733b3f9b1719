"""Training losses by name: ``register_loss``, ``list_losses()``, ``create_loss(name, args)``."""
import open_clip

from .ceclip import CEClipLoss
from .comalign import ComAlignLoss
from .degla import DeGLALoss, degla_terms
from .negclip import NegCLIPLoss, negclip_logits
from .registry import create_loss, list_losses, loss_uses_hardneg, loss_uses_teacher, register_loss


def _dist(args) -> dict:
    return dict(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, rank=args.rank,
                world_size=args.world_size, use_horovod=args.horovod)


@register_loss("clip")
def _clip(args):
    """open_clip's own loss selection (ClipLoss, or SigLIP/CoCa/distill as its flags say)."""
    return open_clip.create_loss(args)


@register_loss("negclip", uses_hardneg=True)
def _negclip(args):
    return NegCLIPLoss(**_dist(args))


@register_loss("degla", uses_hardneg=True,
               uses_teacher=lambda args: args.degla_tgc_weight > 0 or args.degla_distill_weight > 0)
def _degla(args):
    return DeGLALoss(igc_weight=args.degla_igc_weight, tgc_weight=args.degla_tgc_weight,
                     distill_weight=args.degla_distill_weight, tgc_scale=args.degla_tgc_scale,
                     tgc_mode=args.degla_tgc_mode, distill_reduction=args.degla_distill_reduction,
                     distill_negatives=args.degla_distill_negatives, **_dist(args))


@register_loss("ce-clip", uses_hardneg=True)
def _ceclip(args):
    return CEClipLoss(imc_weight=args.ceclip_imc_weight, cmr_weight=args.ceclip_cmr_weight,
                      imc_mode=args.ceclip_imc_mode, threshold_type=args.ceclip_threshold_type,
                      fixed_threshold=args.ceclip_fixed_threshold, upper_bound=args.ceclip_upper_bound,
                      threshold_from=args.ceclip_threshold_from, cmr_average=args.ceclip_cmr_average,
                      accum_freq=args.accum_freq, **_dist(args))


@register_loss("comalign")
def _comalign(args):
    return ComAlignLoss(temperature=args.comalign_temperature, entity_weight=args.comalign_entity_weight,
                        relation_weight=args.comalign_relation_weight, global_weight=args.comalign_global_weight,
                        padding=args.comalign_padding, smooth=args.comalign_smooth_max or None, **_dist(args))


__all__ = ["CEClipLoss", "ComAlignLoss", "DeGLALoss", "NegCLIPLoss", "create_loss", "degla_terms", "list_losses", "loss_uses_hardneg",
           "loss_uses_teacher", "negclip_logits", "register_loss"]
