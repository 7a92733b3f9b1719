"""Training losses by name: ``register_loss``, ``list_losses()``, ``create_loss(name, args)``."""
import open_clip

from .negclip import NegCLIPLoss, negclip_logits
from .registry import create_loss, list_losses, loss_uses_hardneg, register_loss


@register_loss("clip")
def _clip(args):
    """open_clip's own loss selection (ClipLoss, or SigLIP/CoCa/distill as its flags say)."""
    return open_clip.create_loss(args)


@register_loss("negclip", uses_hardneg=True)
def _negclip(args):
    return NegCLIPLoss(local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, rank=args.rank,
                       world_size=args.world_size, use_horovod=args.horovod)


__all__ = ["NegCLIPLoss", "create_loss", "list_losses", "loss_uses_hardneg", "negclip_logits", "register_loss"]
