"""``--loss comalign``: train a ComAlign head on a frozen CLIP (a ``comalign-*`` model; spec comalign.md §6, a
RECONSTRUCTION of the unreleased loss). Its flags (``--comalign-*``), their rules, its data (a component store or
captioned images rendered into views), its model set-up (the head checkpoint) and its loss are declared here."""
from ..flag_rules import FlagRule
from ..methods.hardneg import SOFTMAX_REFUSALS
from ..methods.registry import Method, ModelNeeds, UsageError, register_method
from .boxes import add_box_arguments

COMALIGN_DATA = ("features", "images")
_LOCKS = ("--lock-image", "--lock-image-unlocked-groups", "--lock-image-freeze-bn-stats", "--lock-text",
          "--lock-text-unlocked-layers", "--lock-text-freeze-layer-norm")
_PREPROCESS = ("--force-image-size", "--image-mean", "--image-std", "--image-interpolation", "--image-resize-mode")


def _features(args) -> bool:
    return args.comalign_data == "features"


@register_method
class ComAlign(Method):
    name = "comalign"
    flag_prefix = "comalign"
    summary = "a comalign-* model: frozen CLIP, only the head trains"
    refused_flags = SOFTMAX_REFUSALS + (
        FlagRule(("--dataset-resampled", "--train-data-upsampling-factors", "--train-num-samples"),
                 "ComAlign's data reads every image once per epoch"),
        FlagRule(_LOCKS, "the ComAlign base is frozen already (only the head trains); unlocked groups/layers would "
                         "unfreeze part of it"),
        FlagRule(("--grad-checkpointing",), "the frozen base runs without gradients and the head is two layers: "
                                            "there is nothing to checkpoint"),
        FlagRule(("--force-patch-dropout",), "the frozen base always runs in eval mode, where patch dropout is off"),
        FlagRule(("--aug-cfg",), "ComAlign views use the deterministic (validation) transform"),
        FlagRule(_PREPROCESS, "the store's features were computed with the store's own preprocessing", _features,
                 "--comalign-data features"),
    )

    def add_arguments(self, g):
        g.add_argument(
            "--comalign-data", default=None, choices=COMALIGN_DATA,
            help="Required. 'features': --train-data is a component store (.h5) written by python -m "
                 "open_clip_align.comalign.embed (fast: no image is decoded); 'images': --train-data is a caption "
                 "file (COCO captions JSON, Karpathy JSON or CSV/TSV) and views are rendered from boxes per step.")
        g.add_argument("--comalign-annotation-format", default="auto", choices=("auto", "coco", "karpathy", "csv"),
                       help="'images': format of --train-data (auto: by extension and content). CSV/TSV columns "
                            "come from --csv-img-key/--csv-caption-key/--csv-separator.")
        g.add_argument("--comalign-image-root", default=None,
                       help="'images': folder relative image paths resolve against (default: the caption file's).")
        add_box_arguments(g, prefix="comalign-", default="grid")  # 'images': boxes per image, as embed and eval
        g.add_argument("--comalign-render", default="grey", choices=("grey", "crop"),
                       help="How a view shows its box: the whole image greyed outside it (the paper's figure), or "
                            "a crop.")
        g.add_argument("--comalign-letterbox", action="store_true", default=False,
                       help="Pad images to a square before rendering views, so centre-cropping cannot cut boxes.")
        g.add_argument("--comalign-max-captions", type=int, default=5,
                       help="Captions kept per image; one of them is drawn per image per epoch.")
        g.add_argument("--comalign-head", default=None,
                       help="Start the head from this checkpoint (the released ComAlign-CLIP-VIT-B32.pt or ours).")
        g.add_argument("--comalign-temperature", type=float, default=0.07,
                       help="τ: every contrastive term divides its scores by τ.")
        g.add_argument("--comalign-entity-weight", type=float, default=1.0, help="λ_e: the entity max-mean term.")
        g.add_argument("--comalign-relation-weight", type=float, default=1.0,
                       help="λ_r: the relation max-mean term.")
        g.add_argument("--comalign-global-weight", type=float, default=1.0,
                       help="λ_g: CLIP loss between the refined global token and the caption embedding.")
        g.add_argument("--comalign-padding", default="masked", choices=("masked", "reference"),
                       help="'masked': max and mean over real components only; 'reference': zero pads stay in the "
                            "means (the released scorer's semantics, an ablation for training).")
        g.add_argument("--comalign-smooth-max", type=float, default=0.0, metavar="TAU_M",
                       help="Replace the hard max by TAU_M*logsumexp(x/TAU_M) (e.g. 0.05); 0 keeps the hard max.")

    def check(self, args):
        if args.comalign_data is None:
            raise UsageError("--loss comalign trains on ComAlign components and needs --comalign-data "
                             "features|images")
        if args.hardneg_format != "none":
            raise UsageError("--comalign-data and --hardneg-format cannot be combined")

    def needs(self, args) -> ModelNeeds:
        return ModelNeeds(components=True)

    def owns_train_data(self, args) -> bool:
        return True

    def train_data(self, args, preprocess_fns, tokenizer, epoch=0):
        from .data import get_comalign_train_data  # needs open_clip_train's data stack: training only
        # views are the cached/evaluated kind: the deterministic (val) transform, no augmentation
        return get_comalign_train_data(args, preprocess_fns[1], tokenizer, epoch=epoch)

    def setup_model(self, model, args):
        from .model import load_comalign_head
        if args.comalign_head:
            load_comalign_head(model.comalign_head, args.comalign_head)

    def create_loss(self, args):
        from .loss import ComAlignLoss
        return ComAlignLoss(temperature=args.comalign_temperature, entity_weight=args.comalign_entity_weight,
                            relation_weight=args.comalign_relation_weight,
                            global_weight=args.comalign_global_weight, padding=args.comalign_padding,
                            smooth=args.comalign_smooth_max or None, **ComAlignLoss.distributed(args))
