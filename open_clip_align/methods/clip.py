"""``--loss clip``: open_clip's own loss selection (ClipLoss, or SigLIP/CoCa/distill as its own flags say)."""
import open_clip

from .registry import Method, register_method


@register_method
class Clip(Method):
    name = "clip"
    summary = "open_clip's own loss"

    def create_loss(self, args):
        return open_clip.create_loss(args)
