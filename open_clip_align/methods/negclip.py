"""``--loss negclip`` (Yuksekgonul et al., ARO; spec degla.md §8): CLIP InfoNCE with the hard negatives as extra
image→text columns, and NegCLIP's hard-negative images (``--csv-hardimg-key``) as a doubled image set.

No flags of its own: the data flags (``--hardneg-format``, ``--num-hardneg``, ``--csv-hardimg-key`` ...) are the
shared hard-negative formats'. The maths is ``losses.negclip``.
"""
from ..losses.negclip import NegCLIPLoss
from .hardneg import HardNegativeMethod
from .registry import register_method


@register_method
class NegCLIP(HardNegativeMethod):
    name = "negclip"
    summary = "hard negatives as extra columns"
    hard_images = True

    def create_loss(self, args):
        return NegCLIPLoss(**NegCLIPLoss.distributed(args))
