"""``--loss negclip`` (Yuksekgonul et al., ARO; spec degla.md §8): CLIP InfoNCE with the hard negatives as extra
image→text columns, and NegCLIP's hard-negative images (``--csv-hardimg-key``) as a doubled image set; in sigmoid
form (``--siglip`` or a model with a logit_bias) the negatives are extra label −1 pairs (``losses.sigmoid``).

No flags of its own: the data flags (``--hardneg-format``, ``--num-hardneg``, ``--csv-hardimg-key`` ...) are the
shared hard-negative formats', the ``--siglip-hardneg-*`` flags the sigmoid form's. The maths is
``losses.negclip``/``losses.sigmoid``.
"""
from ..losses.negclip import NegCLIPLoss
from ..losses.sigmoid import SigmoidNegCLIPLoss
from .hardneg import HARDNEG_REFUSALS, HardNegativeMethod, sigmoid_form, sigmoid_options
from .registry import register_method


@register_method
class NegCLIP(HardNegativeMethod):
    name = "negclip"
    summary = "hard negatives as extra columns"
    hard_images = True
    has_sigmoid_form = True
    refused_flags = HARDNEG_REFUSALS

    def create_loss(self, args):
        if sigmoid_form(args):
            return SigmoidNegCLIPLoss(**sigmoid_options(args), **SigmoidNegCLIPLoss.distributed(args))
        return NegCLIPLoss(**NegCLIPLoss.distributed(args))
