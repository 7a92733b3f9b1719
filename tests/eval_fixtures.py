"""A deterministic 'model' for evaluation tests: hand-set scores, no weights.

Image features come from an image's top-left pixel (red channel → angle on the unit circle), text features
from a caption table, so every cosine in a test is known in advance. ``scorer_for(table)`` wraps it in the
suite's ``DualEncoderScorer``.
"""
import csv
import json
import math
from pathlib import Path

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


# ---------------------------------------------------------------- 2024-26 benchmarks: stub scorer and official files

class TableScorer:
    """A stub scorer with fixed scores: s(image, caption) = ``pairs[(image file name, caption)]`` and t(a, b) =
    ``texts[(a, b)]`` (or ``texts[(b, a)]``; t(a, a) = 1), float32 like the suite's scorers; anything not in the
    tables scores ``default``. ``text_norms`` (the blind caption prior) is the caption length."""

    def __init__(self, pairs, texts=None, default=0.0):
        self.pairs, self.texts, self.default = dict(pairs), dict(texts or {}), default

    def _pair(self, ref, caption):
        return self.pairs.get((Path(ref.path).name, caption), self.default)

    def _text(self, a, b):
        return 1.0 if a == b else self.texts.get((a, b), self.texts.get((b, a), self.default))

    def score_items(self, items):
        return [torch.tensor([[self._pair(r, c) for c in it.captions] for r in it.images], dtype=torch.float32)
                for it in items]

    def score_text_pairs(self, items):
        return [torch.tensor([[self._text(a, b) for b in it.captions] for a in it.captions], dtype=torch.float32)
                for it in items]

    def text_norms(self, texts):
        return {t: float(len(t)) for t in texts}


def png(path, colour=(0, 0, 0), size: int = 8) -> str:
    """A tiny RGB PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="PNG")
    return str(path)


def write_json(path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_csv(path, header, rows) -> Path:
    """A CSV file with ``header`` and ``rows`` (lists), folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_sugarcrepe_pp(root, subset: str, records) -> Path:
    """``<root>/data/<subset>.json`` (a list of {id, filename, caption, caption2, negative_caption}) and a PNG per
    filename under ``<root>/images/``."""
    for record in records:
        png(Path(root) / "images" / record["filename"])
    return write_json(Path(root) / "data" / f"{subset}.json", list(records))


def write_mmvp(root, rows, folder_type: str = "Orientation") -> Path:
    """``<root>/Questions.csv`` (header + ``rows`` of (qid, type, statement)) and ``MLLM_VLM Images/<Type>/<qid>.jpg``
    for every qid (in the first row's Type folder of each pair, as the official script reads them)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["Question ID,Type,Statement"] + [f"{qid},{kind},{text}" for qid, kind, text in rows]
    (root / "Questions.csv").write_text("\n".join(lines) + "\n")
    for k in range(0, len(rows) - 1, 2):
        for qid, _, _ in rows[k:k + 2]:
            png(root / "MLLM_VLM Images" / rows[k][1] / f"{qid}.jpg")
    return root / "Questions.csv"
