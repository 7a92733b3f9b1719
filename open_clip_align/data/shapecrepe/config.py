"""ShapeCrepe's options (``Config``, the presets) and the held-out (colour, shape) pairs they imply."""
import random
from dataclasses import dataclass

from ...errors import UserError
from .captions import TEMPLATES, TRAIN_NEG_TYPES
from .scenes import COLOURS, SHAPES

VERSION = "1.0"
SPLITS = ("iid", "heldout")


class OptionError(UserError):
    """Options that cannot make a dataset (a ``ValueError``, as for any bad argument)."""


@dataclass(frozen=True)
class Config:
    """Every option that shapes the data; the field defaults are the default preset."""
    seed: int = 0
    preset: str = "default"
    image_size: int = 64
    train_size: int = 20_000
    pretrain_size: int = 20_000
    test_pairs: int = 500
    zeroshot_per_class: int = 20
    num_negatives: int = 4
    shard_size: int = 1000
    heldout_fraction: float = 1 / 6
    train_neg_types: tuple = TRAIN_NEG_TYPES
    train_templates: tuple = tuple(TEMPLATES)
    test_templates: tuple = tuple(TEMPLATES)
    shapes: tuple = SHAPES
    colours: tuple = tuple(COLOURS)

    def __post_init__(self):
        for name in ("train_neg_types", "train_templates", "test_templates", "shapes", "colours"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        checks = [
            (self.image_size >= 16, "image_size must be at least 16"),
            (min(self.train_size, self.pretrain_size, self.test_pairs, self.zeroshot_per_class,
                 self.num_negatives) >= 0,
             "sizes and num_negatives must not be negative"),
            (self.shard_size >= 1, "shard_size must be positive"),
            (self.train_size > 0 or self.pretrain_size == 0, "pretraining rows reuse training images: need train_size"),
            (0 <= self.heldout_fraction <= 0.5, "heldout_fraction must lie in [0, 0.5]"),
            (set(self.train_neg_types) <= set(TRAIN_NEG_TYPES) and self.train_neg_types,
             f"train_neg_types must be a non-empty subset of {TRAIN_NEG_TYPES}"),
            (set(self.train_templates + self.test_templates) <= set(TEMPLATES)
             and self.train_templates and self.test_templates,
             f"templates must be non-empty subsets of {tuple(TEMPLATES)}"),
            (set(self.shapes) <= set(SHAPES) and len(set(self.shapes)) == len(self.shapes) >= 3,
             f"need 3+ distinct shapes from {SHAPES}"),
            (set(self.colours) <= set(COLOURS) and len(set(self.colours)) == len(self.colours) >= 3,
             f"need 3+ distinct colours from {tuple(COLOURS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)


PRESETS = {
    "default": {},
    "ci": {"image_size": 32, "train_size": 300, "pretrain_size": 200, "test_pairs": 25, "shard_size": 100,
           "zeroshot_per_class": 4},
}


def make_config(preset: str = "default", **options) -> Config:
    """The preset's values, overridden by every option that is not None."""
    if preset not in PRESETS:
        raise OptionError(f"unknown preset {preset!r}; choose from {tuple(PRESETS)}")
    return Config(preset=preset, **{**PRESETS[preset], **{k: v for k, v in options.items() if v is not None}})


def choose_heldout(cfg: Config) -> tuple:
    """The held-out (colour, shape) pairs, drawn from the seed and spread evenly, so that every colour and
    every shape keeps most of its partners in training."""
    pairs = [(c, s) for c in cfg.colours for s in cfg.shapes]
    count = round(cfg.heldout_fraction * len(pairs))
    count = max(count, 1) if cfg.heldout_fraction > 0 else 0
    random.Random(f"{cfg.seed}:heldout").shuffle(pairs)
    chosen, limit = [], 0
    while len(chosen) < count:
        limit += 1
        for colour, shape in pairs:
            if (len(chosen) < count and (colour, shape) not in chosen
                    and sum(c == colour for c, _ in chosen) < limit and sum(s == shape for _, s in chosen) < limit):
                chosen.append((colour, shape))
    return tuple(sorted(chosen))
