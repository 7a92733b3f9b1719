"""A deterministic 'model' for evaluation tests: hand-set scores, no weights.

Image features come from an image's top-left pixel (red channel → angle on the unit circle), text features
from a caption table, so every cosine in a test is known in advance. ``scorer_for(table)`` wraps it in the
suite's ``DualEncoderScorer``.
"""
import math

import torch
from PIL import Image

from open_clip_align.eval.scoring import DualEncoderScorer


def angle_image(path, degrees: float, size: int = 4) -> str:
    """Write an image whose feature is (cos θ, sin θ) with θ = degrees (0..90, stored in the red channel)."""
    Image.new("RGB", (size, size), (round(degrees / 90 * 255), 0, 0)).save(path)
    return str(path)


def unit(degrees: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


class LookupModel:
    """``encode_image``: angle from the red channel; ``encode_text``: ``table[caption]``; counts image encodes."""

    def __init__(self, table):
        self.table = dict(table)
        self.vocab = list(self.table)
        self.images_encoded = 0

    def tokenizer(self, texts):
        return torch.tensor([[self.vocab.index(t)] for t in texts])

    @staticmethod
    def preprocess(image):
        return torch.tensor(image.getpixel((0, 0))).float().div(255).view(3, 1, 1).expand(3, 2, 2)

    def encode_image(self, pixels, normalize=False):
        self.images_encoded += len(pixels)
        angle = pixels[:, 0, 0, 0] * torch.pi / 2
        return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def encode_text(self, tokens, normalize=False):
        return torch.stack([self.table[self.vocab[int(t[0])]] for t in tokens]).float()


def scorer_for(table, **kwargs):
    model = LookupModel(table)
    return DualEncoderScorer(model, model.preprocess, model.tokenizer, progress=False, **kwargs), model


def vector_image(path, index: int, size: int = 4) -> str:
    """Write an image that ``VectorModel`` maps to its image vector number ``index`` (0..255, the red channel)."""
    Image.new("RGB", (size, size), (index, 0, 0)).save(path)
    return str(path)


class VectorModel:
    """Seeded random ``dim``-d features: ``encode_image`` takes row ``index`` of an image table (the red value of
    the top-left pixel, see ``vector_image``), ``encode_text`` the caption's row of a text table. High-dimensional
    on purpose: a float32 matmul splits identical columns by ~1e-9 at these sizes (2-d features never do)."""

    def __init__(self, captions, dim: int = 64, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.vocab = list(dict.fromkeys(captions))
        self.images = torch.randn(256, dim, generator=generator)
        self.texts = torch.randn(len(self.vocab), dim, generator=generator)
        self.texts_encoded = 0

    def tokenizer(self, texts):
        return torch.tensor([[self.vocab.index(t)] for t in texts])

    @staticmethod
    def preprocess(image):
        return torch.tensor(image.getpixel((0, 0))).float().view(3, 1, 1)

    def encode_image(self, pixels, normalize=False):
        return self.images[pixels[:, 0, 0, 0].long()]

    def encode_text(self, tokens, normalize=False):
        self.texts_encoded += len(tokens)
        return self.texts[tokens[:, 0]]


def vector_scorer(captions, **kwargs):
    model = VectorModel(captions, **{k: kwargs.pop(k) for k in ("dim", "seed") if k in kwargs})
    return DualEncoderScorer(model, model.preprocess, model.tokenizer, progress=False, **kwargs), model
