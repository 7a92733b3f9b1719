"""The base of the hard-negative methods (NegCLIP, DeGLA, CE-CLIP and users' own): they train on the shared
hard-negative formats (``--hardneg-format``) and need a model that encodes ``[B, 1+K, L]`` text, which every open_clip
CLIP, CustomTextCLIP and CoCa model does once adapted (``models.hardneg``).

Two loss forms: the softmax contrast (every method) and, for methods with ``has_sigmoid_form`` (the built-ins), a
pairwise sigmoid form (``losses.sigmoid``), trained when ``--siglip`` is given or the built model has a
``logit_bias`` (open_clip creates one exactly when the config sets ``init_logit_bias``: SigLIP/SigLIP2 and the
``*-siglip`` configs). The run set-up records the decision as ``args.hardneg_sigmoid`` (``sigmoid_form``).
"""
from ..flag_rules import FlagRule
from .registry import Method, ModelNeeds

SOFTMAX_REFUSALS = (
    FlagRule(("--siglip",), "selects open_clip's sigmoid loss, which only --loss clip uses; this loss is a softmax "
                            "contrast"),
    FlagRule(("--loss-dist-impl",), "configures open_clip's SigLIP loss (--loss clip --siglip) only"),
    FlagRule(("--coca-caption-loss-weight", "--coca-contrastive-loss-weight"),
             "weights open_clip's CoCa loss (--loss clip on a coca model) only"),
    FlagRule(("--distill-model", "--distill-pretrained"),
             "builds open_clip's fixed external teacher for --loss clip only (DeGLA's EMA teacher comes with the "
             "model, e.g. degla-ViT-B-32)"),
    FlagRule(("--horovod",), "this loss's block-wise gathers are tested with torch.distributed only: launch with "
                             "torchrun"),
)


def _not_caption_model(args) -> bool:
    from ..models.setup import builds_caption_decoder
    return not builds_caption_decoder(args)


def sigmoid_form(args) -> bool:
    """True when this run trains the sigmoid form of its hard-negative loss (see the module docstring)."""
    return bool(getattr(args, "hardneg_sigmoid", getattr(args, "siglip", False)))


def sigmoid_options(args) -> dict:
    """The sigmoid losses' keyword arguments from the run's ``--siglip-hardneg-*`` flags."""
    return dict(hardneg_weight=getattr(args, "siglip_hardneg_weight", 1.0),
                columns=getattr(args, "siglip_hardneg_columns", "own"))


HARDNEG_REFUSALS = (
    FlagRule(("--loss-dist-impl",), "configures open_clip's SigLipLoss exchange; the sigmoid hard-negative losses "
                                    "exchange columns with a grad-carrying all_gather"),
    FlagRule(("--coca-caption-loss-weight", "--coca-contrastive-loss-weight"),
             "weight a caption decoder's loss, which only CoCa models have", _not_caption_model, "non-CoCa models"),
    SOFTMAX_REFUSALS[3],
    SOFTMAX_REFUSALS[4],
)
NO_SIGMOID_FORM = FlagRule(("--siglip",), "this method has no sigmoid form (its loss is a softmax contrast; on a "
                                          "model with a logit_bias it trains softmax, and the bias stays fixed)")


class HardNegativeMethod(Method):
    """A method whose loss reads ``neg_text_features [B,K,D]``/``neg_text_valid [B,K]`` (see ``Method``).

    A subclass with a sigmoid form sets ``has_sigmoid_form = True``, uses ``HARDNEG_REFUSALS`` and builds its
    sigmoid loss when ``sigmoid_form(args)``."""

    has_sigmoid_form = False
    refused_flags = (NO_SIGMOID_FORM, *HARDNEG_REFUSALS)

    def needs(self, args) -> ModelNeeds:
        return ModelNeeds(hardneg=True)
