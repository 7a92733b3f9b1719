"""The maths of the hard-negative losses, as tensor functions and ``GatheredLoss`` modules (no registry: the
training methods in ``open_clip_align.methods`` build them from flags)."""
from .base import GatheredLoss
from .ceclip import CEClipLoss
from .degla import DeGLALoss, degla_terms
from .negclip import NegCLIPLoss, negclip_logits

__all__ = ["CEClipLoss", "DeGLALoss", "GatheredLoss", "NegCLIPLoss", "degla_terms", "negclip_logits"]
