"""The base of the hard-negative methods (NegCLIP, DeGLA, CE-CLIP and users' own): they train on the shared
hard-negative formats (``--hardneg-format``), need a model that encodes ``[B, 1+K, L]`` text, and compute a
softmax contrast, so open_clip's sigmoid, CoCa and fixed-teacher options mean nothing to them."""
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


class HardNegativeMethod(Method):
    """A method whose loss reads ``neg_text_features [B,K,D]``/``neg_text_valid [B,K]`` (see ``Method``)."""

    refused_flags = SOFTMAX_REFUSALS

    def needs(self, args) -> ModelNeeds:
        return ModelNeeds(hardneg=True)
