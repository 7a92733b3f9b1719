"""The maths of the hard-negative losses, as tensor functions and ``GatheredLoss`` modules (no registry: the
training methods in ``open_clip_align.methods`` build them from flags). ``sigmoid`` holds their SigLIP forms."""
from .base import GatheredLoss
from .ceclip import CEClipLoss
from .degla import DeGLALoss, degla_terms
from .negclip import NegCLIPLoss, negclip_logits
from .sigmoid import SigmoidCEClipLoss, SigmoidDeGLALoss, SigmoidNegCLIPLoss, sigmoid_negclip_loss

__all__ = ["CEClipLoss", "DeGLALoss", "GatheredLoss", "NegCLIPLoss", "SigmoidCEClipLoss", "SigmoidDeGLALoss",
           "SigmoidNegCLIPLoss", "degla_terms", "negclip_logits", "sigmoid_negclip_loss"]
