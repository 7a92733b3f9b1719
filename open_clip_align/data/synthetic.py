"""ShapeCrepe: a synthetic compositional benchmark of coloured shapes, rendered with PIL in seconds.

Each image shows two objects (shape, colour, size) in a spatial relation (left of, right of, above, below),
with distinct shapes and distinct colours, jittered geometry, colour noise and a grainy background. Captions
are closed-world: they mention every object, and a size word exactly when the size is not medium. Everything
is deterministic given --seed. Held-out (colour, shape) combinations never occur in any training or
pretraining image or caption, negatives included.

Usage:
  python -m open_clip_align.data.synthetic --out DIR [--preset ci] [--seed 0] [--overwrite] ...

Outputs under DIR (every path written inside a file is relative to that file's directory):
  images/train/*.png        training images
  train.csv                 TAB-separated: filepath, title (positive caption), neg_caption (a Python list
                            literal of K hard negatives, each verified false), neg_types (their types among
                            swap_att, swap_obj, replace_att, replace_obj, replace_rel)
  train_degla.json          the same rows as DeGLA JSON:
                            [{"image", "image_id", "original", "enhanced", "types"}, ...]
  train-wds/shard-*.tar     the same rows as webdataset shards: KEY.png, KEY.txt (the positive caption),
                            KEY.json ({"original", "enhanced", "types"}); sizes.json gives the shard sizes
  pretrain.csv              TAB-separated: filepath, title = the words of a caption in random order, so a
                            model learns which attributes are present but not which object has which.
                            Row i reuses training image i mod train-size (rendering and creating files
                            dominate the run time), with a template and word order of its own
  sugarcrepe/{iid,heldout}/ SugarCrepe format: <subset>.json for replace_obj, replace_att, replace_rel,
                            swap_obj, swap_att, add_obj, add_att ({"0": {"filename", "caption",
                            "negative_caption"}, ...}) and val2017/<filename>. Counterbalanced: items 2k and
                            2k+1 are a pair of scenes whose captions trade places, so every negative is
                            another item's positive and any text-only scorer gets exactly 50%. The iid split
                            avoids held-out combinations; in heldout the first scene of each pair has one.
  winoground/{iid,heldout}/pairs.jsonl   the same pairs as 2x2 items: {"image_0", "image_1", "caption_0",
                            "caption_1", "tags": [subset]}, caption_i true of image_i only
  scenes.jsonl              the scene graph of every image: {"image", "set", "seed", "objects": [{"shape",
                            "colour", "size", "center", "radius", "rotation", "bbox"}], "relation"}
                            (relation of object 0 to object 1; image y grows downwards)
  zeroshot/{iid,heldout}/   zero-shot classification over the colour x shape classes, as an ImageFolder that
                            open_clip_align.eval.zeroshot reads: test/<colour>_<shape>/<n>.png, each image ONE
                            object of that colour and shape (random size and position), so it measures
                            recognition, not binding; classnames.txt ("red circle", one per line in sorted
                            folder order); zeroshot_classification_templates.txt ("a photo of a {c}.", ...);
                            scenes.jsonl (their scene graphs, relation null). Like the SugarCrepe splits,
                            heldout has the held-out combinations as classes and iid all the others.
                            --zeroshot-per-class images per class; 0 writes no zeroshot/ at all
  manifest.json             written last: version, options, counts, held-out combinations, colour RGBs

Notes:
  - Training rows use only scenes whose colour swap names no held-out pair either, so that every row can
    have its swap_att negative without leaking one.
  - Swap test pairs are kept only when bag-identical: "an orange star ... a small gray cross" swaps to
    "a gray star ... a small orange cross", which loses "an".
  - Python API: generate(out_dir, **options) returns the manifest; Scene.from_dict reads a scenes.jsonl line,
    parse_caption / caption_is_true / describe work on structured captions, render redraws an image,
    zeroshot_classes lists the class folders of a zero-shot split.
"""
import argparse
import csv
import io
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..cli_checks import non_finite_flags, output_problem, range_problem, range_problems
from ..eval.sugarcrepe import SUBSETS

VERSION = "1.0"

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {  # far apart in RGB, so they stay distinct under +-_COLOUR_JITTER per channel
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (45, 90, 235), "yellow": (235, 220, 50),
    "purple": (150, 60, 205), "orange": (245, 140, 25), "white": (240, 240, 240), "gray": (128, 128, 128),
}
SIZES = ("small", "medium", "large")
RELATIONS = ("left", "right", "above", "below")
TRAIN_NEG_TYPES = ("swap_att", "swap_obj", "replace_att", "replace_obj", "replace_rel")
SPLITS = ("iid", "heldout")

_LONG = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
TEMPLATES = {  # name -> (format, relation words); extra objects are listed in {objects} or appended "and ..."
    "plain": ("{s} {r} {o}", _LONG),
    "copula": ("{s} is {r} {o}", _LONG),
    "with": ("{o} with {s} {r}", {"left": "to its left", "right": "to its right", "above": "above it",
                                  "below": "below it"}),
    "there_is": ("there is {objects}; the {ss} is {r} the {os}",
                 {"left": "left of", "right": "right of", "above": "above", "below": "below"}),
}

_RADIUS = {"small": 0.09, "medium": 0.13, "large": 0.18}  # bounding-circle radius / image side
_RADIUS_JITTER = 0.08  # relative; the size classes stay disjoint
_ROTATION_JITTER = 12.0  # degrees; keeps squares and diamonds apart
_CLEAR = 2.0  # a generated relation's main-axis offset is at least this times the other offset
_COLOUR_JITTER = 15
_GRAIN = 4  # background grain amplitude; 2x2-pixel blocks keep PNGs small
_REPLACE_SIZE_PROB = 0.25  # share of replace_att test pairs that change a size rather than a colour
_MAX_TRIES = 10_000

_STAR = tuple((r * math.sin(math.pi * k / 5), -r * math.cos(math.pi * k / 5))
              for k, r in zip(range(10), [1.0, 0.42] * 5))
_OUTLINES = {  # unit polygons inside the unit circle, y downwards
    "square": ((-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)),
    "diamond": ((0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)),
    "triangle": ((0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)),
    "star": _STAR,
    "cross": ((-0.28, -0.95), (0.28, -0.95), (0.28, -0.28), (0.95, -0.28), (0.95, 0.28), (0.28, 0.28),
              (0.28, 0.95), (-0.28, 0.95), (-0.28, 0.28), (-0.95, 0.28), (-0.95, -0.28), (-0.28, -0.28)),
}

_OUTPUTS = ("manifest.json", "images", "train.csv", "train_degla.json", "train-wds", "pretrain.csv",
            "sugarcrepe", "winoground", "scenes.jsonl", "zeroshot")
ZEROSHOT_TEMPLATES = ("a photo of a {c}.", "a {c}.", "an image of a {c}.", "a rendering of a {c}.")


# ---------------------------------------------------------------------------------------------- scenes

@dataclass(frozen=True, order=True)
class Phrase:
    """One object as a caption names it; size "medium" is the unwritten default."""
    shape: str
    colour: str
    size: str = "medium"

    def __str__(self):
        words = ([self.size] if self.size != "medium" else []) + [self.colour, self.shape]
        return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


@dataclass(frozen=True)
class Obj:
    """One drawn object: what it is, and where (centre, bounding-circle radius, rotation in degrees)."""
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    rotation: float

    @property
    def phrase(self) -> Phrase:
        return Phrase(self.shape, self.colour, self.size)

    def outline(self) -> list:
        """Polygon vertices in pixels (a circle is drawn as an ellipse and has none)."""
        cos, sin = math.cos(math.radians(self.rotation)), math.sin(math.radians(self.rotation))
        return [(self.cx + self.radius * (x * cos - y * sin), self.cy + self.radius * (x * sin + y * cos))
                for x, y in _OUTLINES.get(self.shape, ())]

    @property
    def bbox(self) -> tuple:
        """Tight box (x0, y0, x1, y1) in pixels."""
        if self.shape == "circle":
            return (self.cx - self.radius, self.cy - self.radius, self.cx + self.radius, self.cy + self.radius)
        xs, ys = zip(*self.outline())
        return (min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True)
class Scene:
    """The scene graph of one image. The captioned relation is the one of object 0 to object 1."""
    objects: tuple

    def to_dict(self) -> dict:
        return {"objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "center": [o.cx, o.cy],
                             "radius": o.radius, "rotation": o.rotation,
                             "bbox": [round(v, 2) for v in o.bbox]} for o in self.objects],
                "relation": relation(self.objects[0], self.objects[1]) if len(self.objects) > 1 else None}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls(tuple(Obj(o["shape"], o["colour"], o["size"], *o["center"], o["radius"], o["rotation"])
                         for o in data["objects"]))


def relation(a: Obj, b: Obj, ratio: float = 1.0):
    """Where ``a`` is relative to ``b``: the direction of the dominant axis if it dominates by ``ratio``,
    else None. With ratio 1 exactly one relation holds for any two distinct centres off the diagonals."""
    return _direction(a.cx - b.cx, a.cy - b.cy, ratio)


def _direction(dx: float, dy: float, ratio: float):
    if abs(dx) > ratio * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) > ratio * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def _combos(items) -> set:
    """The (colour, shape) pairs of objects or phrases."""
    return {(item.colour, item.shape) for item in items}


def _gap(image_size: int) -> float:
    """The least distance between two objects' bounding circles."""
    return max(1.0, 0.03 * image_size)


def _fits(objects, image_size: int) -> bool:
    """Every object inside the image, no two overlapping, and a clear relation between objects 0 and 1."""
    gap = _gap(image_size)
    inside = all(o.radius + 1 <= c <= image_size - 1 - o.radius for o in objects for c in (o.cx, o.cy))
    apart = all(math.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius + gap
                for i, a in enumerate(objects) for b in objects[i + 1:])
    return inside and apart and relation(objects[0], objects[1], _CLEAR) is not None


def _new_obj(rng, shape: str, colour: str, size: str, image_size: int) -> Obj:
    """An unplaced object with jittered radius and rotation."""
    radius = image_size * _RADIUS[size] * rng.uniform(1 - _RADIUS_JITTER, 1 + _RADIUS_JITTER)
    return Obj(shape, colour, size, 0.0, 0.0, round(radius, 2),
               round(rng.uniform(-_ROTATION_JITTER, _ROTATION_JITTER), 1))


def _moved(rng, obj: Obj, image_size: int) -> Obj:
    """``obj`` at a uniformly random centre where it lies fully inside the image."""
    low, high = obj.radius + 1, image_size - 1 - obj.radius
    return replace(obj, cx=round(rng.uniform(low, high), 2), cy=round(rng.uniform(low, high), 2))


def _resized(obj: Obj, size: str) -> Obj:
    """``obj`` with another size class, keeping its jitter."""
    return replace(obj, size=size, radius=round(obj.radius * _RADIUS[size] / _RADIUS[obj.size], 2))


def _place(rng, objects, rel: str, image_size: int):
    """Scene with objects 0 and 1 re-placed so that 0 is clearly ``rel`` of 1, or None if no try fits.
    Samples the main-axis distance (beyond touching) and a cross-axis offset inside the clarity cone
    directly, so that few tries fail."""
    a, b = objects[:2]
    low_a, low_b, nearest = a.radius + 1, b.radius + 1, a.radius + b.radius + _gap(image_size)
    farthest = image_size - low_a - low_b
    for _ in range(100 if farthest > nearest else 0):
        distance = rng.uniform(nearest, farthest)
        main_a = rng.uniform(low_a, image_size - low_b - distance)
        main_b = main_a + distance
        if rel in ("right", "below"):  # mirror: each centre stays inside its own range
            main_a, main_b = image_size - main_a, image_size - main_b
        cross_a = rng.uniform(low_a, image_size - low_a)
        cross_b = cross_a + rng.uniform(-0.95, 0.95) * distance / _CLEAR
        ax, ay, bx, by = (round(v, 2) for v in ((main_a, cross_a, main_b, cross_b) if rel in ("left", "right")
                                                else (cross_a, main_a, cross_b, main_b)))
        placed = (replace(a, cx=ax, cy=ay), replace(b, cx=bx, cy=by), *objects[2:])
        if relation(placed[0], placed[1], _CLEAR) == rel and _fits(placed, image_size):
            return Scene(placed)
    return None


def _sample_scene(rng, cfg, accept):
    """Two objects with distinct shapes and colours that pass ``accept(objects)``, placed in a random
    relation; None if rejected (callers retry)."""
    shapes, colours = rng.sample(cfg.shapes, 2), rng.sample(cfg.colours, 2)
    objects = [_new_obj(rng, s, c, rng.choice(SIZES), cfg.image_size) for s, c in zip(shapes, colours)]
    if not accept(objects):
        return None
    return _place(rng, objects, rng.choice(RELATIONS), cfg.image_size)


def _edit(rng, scene: Scene, subset: str, cfg):
    """The partner scene of a counterbalanced test pair: ``scene`` changed by the subset's operation, or None
    if the change does not apply or does not fit."""
    objects = list(scene.objects)
    a, b = objects
    absent_shapes = [s for s in cfg.shapes if s not in (a.shape, b.shape)]
    absent_colours = [c for c in cfg.colours if c not in (a.colour, b.colour)]
    i = rng.randrange(2)
    if subset == "swap_att":
        objects = [replace(a, colour=b.colour), replace(b, colour=a.colour)]
    elif subset == "swap_obj":  # the objects trade places: exchange what they are, keep where they are
        objects = [_resized(replace(a, shape=b.shape, colour=b.colour), b.size),
                   _resized(replace(b, shape=a.shape, colour=a.colour), a.size)]
    elif subset == "replace_obj":
        objects[i] = replace(objects[i], shape=rng.choice(absent_shapes))
    elif subset == "replace_att":
        sized = [j for j, o in enumerate(objects) if o.size != "medium"]
        if sized and rng.random() < _REPLACE_SIZE_PROB:
            j = rng.choice(sized)
            objects[j] = _resized(objects[j], "large" if objects[j].size == "small" else "small")
        else:
            objects[i] = replace(objects[i], colour=rng.choice(absent_colours))
    elif subset == "replace_rel":
        return _place(rng, objects, rng.choice([r for r in RELATIONS if r != relation(a, b)]), cfg.image_size)
    elif subset == "add_obj":
        extra = _new_obj(rng, rng.choice(absent_shapes), rng.choice(absent_colours), rng.choice(SIZES),
                         cfg.image_size)
        objects.append(_moved(rng, extra, cfg.image_size))
    elif subset == "add_att":
        if objects[i].size != "medium":
            return None
        objects[i] = _resized(objects[i], rng.choice(("small", "large")))
    else:
        raise ValueError(f"unknown subset {subset!r}")
    return Scene(tuple(objects)) if _fits(objects, cfg.image_size) else None


# -------------------------------------------------------------------------------------------- captions

@dataclass(frozen=True)
class Caption:
    """A structured caption: ``subj`` is ``rel`` of ``obj``; ``extras`` are further objects (no relation)."""
    subj: Phrase
    rel: str
    obj: Phrase
    extras: tuple = ()
    template: str = "plain"

    @property
    def phrases(self) -> tuple:
        return (self.subj, self.obj, *self.extras)

    def __str__(self):
        fmt, words = TEMPLATES[self.template]
        phrases = [str(p) for p in self.phrases]
        listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        text = fmt.format(s=phrases[0], o=phrases[1], r=words[self.rel], objects=listed,
                          ss=self.subj.shape, os=self.obj.shape)
        return text if "{objects}" in fmt else text + "".join(f" and {p}" for p in phrases[2:])


def describe(scene: Scene, template: str = "plain", subject: int = 0) -> Caption:
    """The closed-world caption of ``scene``: object ``subject`` related to the other of the first two
    (subject 1 gives the inverted relation), followed by any further objects."""
    first, second = scene.objects[subject], scene.objects[1 - subject]
    return Caption(first.phrase, relation(first, second), second.phrase,
                   tuple(o.phrase for o in scene.objects[2:]), template)


def caption_is_true(scene: Scene, caption: Caption) -> bool:
    """Closed-world truth: the caption names exactly the scene's objects (shape, colour, size) and its
    relation holds between the two related objects."""
    if sorted(caption.phrases) != sorted(o.phrase for o in scene.objects):
        return False
    by_phrase = {o.phrase: o for o in scene.objects}
    return relation(by_phrase[caption.subj], by_phrase[caption.obj]) == caption.rel


def caption_words(text: str) -> list:
    """The words of a caption, without punctuation (the bag-of-words view)."""
    return re.findall(r"[a-z]+", text)


_PHRASE_RE = rf"an? (?:(?:small|large) )?(?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"


def _template_regex(fmt: str, words: dict):
    alternatives = {"s": _PHRASE_RE, "o": _PHRASE_RE, "r": "|".join(map(re.escape, words.values())),
                    "ss": "|".join(SHAPES), "os": "|".join(SHAPES),
                    "objects": rf"{_PHRASE_RE}(?:(?:, | and ){_PHRASE_RE})+"}
    pattern = "".join(f"(?P<{part[1:-1]}>{alternatives[part[1:-1]]})" if part.startswith("{") else re.escape(part)
                      for part in re.split(r"(\{\w+\})", fmt))
    if "{objects}" not in fmt:
        pattern += rf"(?P<extras>(?: and {_PHRASE_RE})*)"
    return re.compile(pattern)


_TEMPLATE_RES = {name: _template_regex(*spec) for name, spec in TEMPLATES.items()}


def _parse_phrase(text: str) -> Phrase:
    words = text.split()[1:]
    return Phrase(words[-1], words[-2], words[0] if len(words) == 3 else "medium")


def parse_caption(text: str) -> Caption:
    """The structured form of a caption written by this module (inverse of ``str(caption)``)."""
    for name, regex in _TEMPLATE_RES.items():
        match = regex.fullmatch(text)
        if match:
            break
    else:
        raise ValueError(f"not a ShapeCrepe caption: {text!r}")
    rel = {w: r for r, w in TEMPLATES[name][1].items()}[match["r"]]
    if name != "there_is":
        extras = tuple(_parse_phrase(p) for p in match["extras"].split(" and ")[1:])
        return Caption(_parse_phrase(match["s"]), rel, _parse_phrase(match["o"]), extras, name)
    phrases = [_parse_phrase(p) for p in re.split(", | and ", match["objects"])]
    named = {p.shape: p for p in phrases}
    if match["ss"] not in named or match["os"] not in named:
        raise ValueError(f"relation names an unlisted object: {text!r}")
    subj, obj = named[match["ss"]], named[match["os"]]
    return Caption(subj, rel, obj, tuple(p for p in phrases if p not in (subj, obj)), name)


def _caption_edits(caption: Caption, neg_type: str, cfg) -> list:
    """All negatives of one training type for a two-object caption (not yet checked against the scene)."""
    subj, rel, obj, template = caption.subj, caption.rel, caption.obj, caption.template
    if neg_type == "swap_att":
        return [Caption(Phrase(subj.shape, obj.colour, subj.size), rel, Phrase(obj.shape, subj.colour, obj.size),
                        (), template)]
    if neg_type == "swap_obj":
        return [Caption(obj, rel, subj, (), template)]
    if neg_type == "replace_rel":
        return [Caption(subj, r, obj, (), template) for r in RELATIONS if r != rel]
    edited = []
    for phrase, other, subject_first in ((subj, obj, True), (obj, subj, False)):
        if neg_type == "replace_obj":
            new = [Phrase(s, phrase.colour, phrase.size) for s in cfg.shapes if s not in (subj.shape, obj.shape)]
        else:  # replace_att: an absent colour, or the opposite non-medium size
            new = [Phrase(phrase.shape, c, phrase.size) for c in cfg.colours if c not in (subj.colour, obj.colour)]
            if phrase.size != "medium":
                new.append(Phrase(phrase.shape, phrase.colour, "large" if phrase.size == "small" else "small"))
        edited += [Caption(p, rel, other, (), template) if subject_first else Caption(other, rel, p, (), template)
                   for p in new]
    return edited


# ------------------------------------------------------------------------------------------ rendering

def render(scene: Scene, image_size: int, seed: int) -> Image.Image:
    """Draw ``scene`` in jittered colours on a dark, slightly tinted background with a grain of 2x2-pixel
    blocks; ``seed`` fixes every noise draw."""
    rng = np.random.default_rng(seed)
    tint = rng.integers(15, 45, 3, dtype=np.int16)
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3 * len(scene.objects)).tolist()
    half = (image_size + 1) // 2
    grain = rng.integers(-_GRAIN, _GRAIN + 1, (half, half, 1), dtype=np.int16)
    image = Image.fromarray((tint + grain).astype(np.uint8)).resize((2 * half,) * 2, Image.NEAREST)
    image = image.crop((0, 0, image_size, image_size)) if image_size % 2 else image
    draw = ImageDraw.Draw(image)
    for i, obj in enumerate(scene.objects):
        fill = tuple(min(255, max(0, c + j)) for c, j in zip(COLOURS[obj.colour], jitter[3 * i:3 * i + 3]))
        if obj.shape == "circle":
            draw.ellipse(obj.bbox, fill=fill)
        else:
            draw.polygon(obj.outline(), fill=fill)
    return image


def _png(scene: Scene, image_size: int, seed: int) -> bytes:
    """PNG bytes of ``render``; the fastest compression, since the grain dominates the size anyway."""
    buffer = io.BytesIO()
    render(scene, image_size, seed).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- planning

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
                raise ValueError(message)


PRESETS = {
    "default": {},
    "ci": {"image_size": 32, "train_size": 300, "pretrain_size": 200, "test_pairs": 25, "shard_size": 100,
           "zeroshot_per_class": 4},
}


def make_config(preset: str = "default", **options) -> Config:
    """The preset's values, overridden by every option that is not None."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {tuple(PRESETS)}")
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


def _retry(attempt, what: str):
    """Call ``attempt()`` until it returns something; fail loudly rather than loop forever."""
    for _ in range(_MAX_TRIES):
        result = attempt()
        if result is not None:
            return result
    raise ValueError(f"could not sample {what} in {_MAX_TRIES} tries; the options are too restrictive")


@dataclass(frozen=True)
class TrainRow:
    """A training image with its positive caption, K (type, negative caption) pairs and the bag-of-words
    captions of the pretraining rows that reuse the image."""
    scene: Scene
    seed: int
    caption: Caption
    negatives: tuple
    bags: tuple

    def images(self):
        return ((self.scene, self.seed),)

    def row(self, paths) -> dict:
        return {"image": paths[0], "original": str(self.caption), "enhanced": [str(c) for _, c in self.negatives],
                "types": [t for t, _ in self.negatives], "bags": list(self.bags)}


@dataclass(frozen=True)
class ItemPair:
    """Two scenes and their captions, each true of its own scene only: item A is (scene A, caption A,
    negative caption B), item B the reverse."""
    scene_a: Scene
    seed_a: int
    scene_b: Scene
    seed_b: int
    caption_a: Caption
    caption_b: Caption

    def images(self):
        return ((self.scene_a, self.seed_a), (self.scene_b, self.seed_b))

    def row(self, paths) -> dict:
        return {"images": paths, "captions": [str(self.caption_a), str(self.caption_b)]}


def _train_row(rng, bag_rng, cfg: Config, heldout: set):
    """A training scene, its positive and K distinct negatives that are false and avoid held-out pairs,
    including a swap_att and then a swap_obj negative as far as K allows, and its pretraining captions, drawn
    from ``bag_rng`` so that --pretrain-size leaves the training rows unchanged (None: scene rejected, retry)."""
    required = [t for t in ("swap_att", "swap_obj") if t in cfg.train_neg_types][:cfg.num_negatives]

    def accept(objects):  # no held-out pair in the scene, nor in its colour swap when that is required
        a, b = objects
        swapped = {(b.colour, a.shape), (a.colour, b.shape)} if "swap_att" in required else set()
        return not (_combos(objects) | swapped) & heldout

    scene = _sample_scene(rng, cfg, accept)
    if scene is None:
        return None
    caption = describe(scene, rng.choice(cfg.train_templates), rng.randrange(2))
    pools = {}

    def draw(neg_type):  # a random unused negative of this type that passes the checks, or None
        pool = pools.setdefault(neg_type, _caption_edits(caption, neg_type, cfg))
        while pool:
            negative = pool.pop(rng.randrange(len(pool)))
            if not _combos(negative.phrases) & heldout and not caption_is_true(scene, negative):
                return negative
        return None

    negatives = [(t, draw(t)) for t in required]  # never None: accept() ruled out held-out swaps
    types = list(cfg.train_neg_types)
    while len(negatives) < cfg.num_negatives:
        if not types:
            raise ValueError(f"num_negatives={cfg.num_negatives} (--num-negatives) exceeds the {len(negatives)} "
                             "distinct negatives available for a training row; ask for fewer")
        t = rng.choice(types)
        negative = draw(t)
        if negative is None:
            types.remove(t)
        else:
            negatives.append((t, negative))
    rng.shuffle(negatives)
    bags = tuple(_bag_of_words(bag_rng, scene, cfg) for _ in range(_bags_per_row(cfg)))
    return TrainRow(scene, rng.getrandbits(32), caption, tuple(negatives), bags)


def _bag_of_words(rng, scene: Scene, cfg: Config) -> str:
    """A pretraining caption: the words of a training-style caption of ``scene`` in random order."""
    words = caption_words(str(describe(scene, rng.choice(cfg.train_templates), rng.randrange(2))))
    rng.shuffle(words)
    return " ".join(words)


def _bags_per_row(cfg: Config) -> int:
    """Pretraining row i uses training image i mod train_size, so each image serves this many rows."""
    return -(-cfg.pretrain_size // cfg.train_size) if cfg.train_size else 0


def _test_pair(rng, cfg: Config, heldout: set, split: str, subset: str):
    """A counterbalanced pair for one split and subset (None: rejected, retry). Scene A avoids held-out
    pairs in iid and has one in heldout; scene B is A edited by the subset's operation (in iid it must avoid
    held-out pairs too). Both captions use the same template and subject."""
    wanted = split == "heldout"
    scene_a = _sample_scene(rng, cfg, lambda objects: bool(_combos(objects) & heldout) == wanted)
    if scene_a is None:
        return None
    scene_b = _edit(rng, scene_a, subset, cfg)
    if scene_b is None or (split == "iid" and _combos(scene_b.objects) & heldout):
        return None
    template, subject = rng.choice(cfg.test_templates), rng.randrange(2)
    caption_a, caption_b = describe(scene_a, template, subject), describe(scene_b, template, subject)
    if subset.startswith("swap") and sorted(caption_words(str(caption_a))) != sorted(caption_words(str(caption_b))):
        return None  # "an orange" can become "a small orange": swaps must keep the bag of words
    truths = [caption_is_true(s, c) for s in (scene_a, scene_b) for c in (caption_a, caption_b)]
    if truths != [True, False, False, True]:
        raise RuntimeError(f"bug: {subset} pair is not counterbalanced: {caption_a} / {caption_b}")
    return ItemPair(scene_a, rng.getrandbits(32), scene_b, rng.getrandbits(32), caption_a, caption_b)


def zeroshot_classes(cfg: Config, heldout, split: str) -> list:
    """The class folder names ``<colour>_<shape>`` of one zero-shot split, sorted (their class indices):
    the held-out (colour, shape) pairs in heldout, all others in iid (all pairs when none is held out)."""
    return sorted(f"{c}_{s}" for c in cfg.colours for s in cfg.shapes if ((c, s) in heldout) == (split == "heldout"))


def _zeroshot_scene(rng, cfg: Config, colour: str, shape: str) -> Scene:
    """One object of the class, with a random size, the usual jitter and a random position inside the image."""
    return Scene((_moved(rng, _new_obj(rng, shape, colour, rng.choice(SIZES), cfg.image_size), cfg.image_size),))


# ---------------------------------------------------------------------------------------- work units

_CHUNK = 250  # rows or pairs per work unit; each unit has its own random stream, so this shapes the output


@dataclass(frozen=True)
class _Unit:
    """A chunk of one part ("train" or "<split>/<subset>") planned and rendered by one worker.
    Fixed chunks with their own streams make the output independent of the number of workers, and let
    e.g. --train-size change without changing the test sets."""
    part: str
    start: int
    count: int


def _units(cfg: Config, splits) -> list:
    """The work units, zero-shot classes ("zeroshot/<colour>_<shape>") last; a class's stream does not depend
    on its split."""
    sizes = {"train": cfg.train_size, **{f"{split}/{subset}": cfg.test_pairs for split in splits for subset in SUBSETS},
             **{f"zeroshot/{name}": cfg.zeroshot_per_class
                for name in sorted(f"{c}_{s}" for c in cfg.colours for s in cfg.shapes)}}
    return [_Unit(part, start, min(_CHUNK, size - start))
            for part, size in sizes.items() for start in range(0, size, _CHUNK)]


def _work(job):
    """Plan one unit and write its images: ``(cfg, heldout, unit, out) -> (rows, scene lines, pngs)``.
    Rows are records as plain data (``row()``), cheap to pickle; the PNG bytes come back only for training
    images, which also go into the shards. Workers write the files: file creation is slow on some disks."""
    cfg, heldout, unit, out = job
    rng = random.Random(f"{cfg.seed}:{unit.part}:{unit.start}")
    if unit.part.startswith("zeroshot/"):
        return _zeroshot_work(rng, cfg, heldout, unit, out)
    if unit.part == "train":
        make = partial(_train_row, rng, random.Random(f"{cfg.seed}:pretrain:{unit.start}"), cfg, heldout)
    else:
        make = partial(_test_pair, rng, cfg, heldout, *unit.part.split("/"))
    rows, lines, pngs = [], [], []
    for index in range(unit.start, unit.start + unit.count):
        record, paths = _retry(make, f"a {unit.part} item"), _image_paths(unit.part, index)
        rows.append(record.row(paths))
        for path, (scene, seed) in zip(paths, record.images()):
            png = _png(scene, cfg.image_size, seed)
            (out / path).write_bytes(png)
            lines.append(json.dumps({"image": path, "set": unit.part.split("/")[0], "seed": seed, **scene.to_dict()}))
            pngs.append(png)
    return rows, lines, pngs if unit.part == "train" else []


def _zeroshot_work(rng, cfg: Config, heldout: set, unit: _Unit, out: Path):
    """Images of one zero-shot class: ``([], scene lines, [])``, the lines' paths relative to the split folder
    ``zeroshot/<split>`` (where its scenes.jsonl goes)."""
    name = unit.part.split("/")[1]
    colour, shape = name.split("_")
    split = _zeroshot_split(name, heldout)
    lines = []
    for index in range(unit.start, unit.start + unit.count):
        scene = _zeroshot_scene(rng, cfg, colour, shape)
        seed, path = rng.getrandbits(32), f"test/{name}/{index:05d}.png"
        (out / "zeroshot" / split / path).write_bytes(_png(scene, cfg.image_size, seed))
        lines.append(json.dumps({"image": path, "set": "zeroshot", "seed": seed, **scene.to_dict()}))
    return [], lines, []


def _zeroshot_split(name: str, heldout) -> str:
    """The zero-shot split of class folder ``<colour>_<shape>``."""
    return "heldout" if tuple(name.split("_")) in heldout else "iid"


def _image_paths(part: str, index: int) -> list:
    """Paths (relative to the output root) of the images of record ``index`` of ``part``."""
    if part == "train":
        return [f"images/train/{index:06d}.png"]
    split, subset = part.split("/")
    return [f"sugarcrepe/{split}/val2017/{subset}_{index:05d}_{ab}.png" for ab in "ab"]


def _run(jobs: list, workers: int):
    """``_work`` over ``jobs`` in order, in a pool of ``workers`` processes when more than one."""
    if workers <= 1:
        yield from map(_work, jobs)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(_work, jobs)


# -------------------------------------------------------------------------------------------- writing

def _prepare_out_dir(out: Path, overwrite: bool):
    """Refuse to mix with an earlier run unless ``overwrite``; then remove only what this module writes,
    the manifest first, so an interrupted rewrite is visibly unfinished."""
    present = [name for name in _OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        what = ("a finished ShapeCrepe dataset (manifest.json)" if "manifest.json" in present
                else "the remains of an unfinished run (no manifest.json)")
        raise FileExistsError(f"{out} already contains {what}; pass --overwrite (overwrite=True) to replace it")
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, data, indent=None):
    """Write JSON through a temporary file and a rename, so the file is either complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, path)


def _write_lines(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def _write_tsv(path: Path, header: list, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


class _ShardWriter:
    """Webdataset shards of ``shard_size`` samples, byte-identical across runs (fixed member metadata)."""

    def __init__(self, directory: Path, shard_size: int):
        self.directory, self.shard_size = directory, shard_size
        self.sizes, self.name, self.tar = {}, None, None  # shard name -> samples; the open shard
        directory.mkdir(parents=True)

    def add(self, key: str, members: dict):
        if self.tar is None or self.sizes[self.name] == self.shard_size:
            self.close()
            self.name = f"shard-{len(self.sizes):06d}.tar"
            self.sizes[self.name] = 0
            self.tar = tarfile.open(self.directory / self.name, "w", format=tarfile.USTAR_FORMAT)
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.sizes[self.name] += 1

    def close(self):
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def _write_training(out: Path, train: list, pretrain_size: int):
    """train.csv, train_degla.json and pretrain.csv (the shards are written while rendering)."""
    _write_tsv(out / "train.csv", ["filepath", "title", "neg_caption", "neg_types"],
               ([row["image"], row["original"], repr(row["enhanced"]), repr(row["types"])] for row in train))
    _write_json(out / "train_degla.json",
                [{"image": row["image"], "image_id": i, "original": row["original"], "enhanced": row["enhanced"],
                  "types": row["types"]} for i, row in enumerate(train)], indent=1)
    _write_tsv(out / "pretrain.csv", ["filepath", "title"],
               ([train[i % len(train)]["image"], train[i % len(train)]["bags"][i // len(train)]]
                for i in range(pretrain_size)))


def _write_tests(out: Path, split: str, pairs_by_subset: dict) -> dict:
    """The SugarCrepe JSONs and Winoground pairs of one split; returns each subset's bag-identical share."""
    wino, bag_identical = [], {}
    for subset, pairs in pairs_by_subset.items():
        items = {}
        for k, pair in enumerate(pairs):
            (path_a, path_b), (a, b) = pair["images"], pair["captions"]
            items[str(2 * k)] = {"filename": Path(path_a).name, "caption": a, "negative_caption": b}
            items[str(2 * k + 1)] = {"filename": Path(path_b).name, "caption": b, "negative_caption": a}
            wino.append({"image_0": f"../../{path_a}", "image_1": f"../../{path_b}", "caption_0": a,
                         "caption_1": b, "tags": [subset]})
        _write_json(out / f"sugarcrepe/{split}/{subset}.json", items, indent=1)
        same = [sorted(caption_words(p["captions"][0])) == sorted(caption_words(p["captions"][1])) for p in pairs]
        bag_identical[subset] = sum(same) / len(same) if same else None
    _write_lines(out / f"winoground/{split}/pairs.jsonl", map(json.dumps, wino))
    return bag_identical


def _write_zeroshot(root: Path, names: list, lines: list):
    """The text files of one zero-shot split (the images are written while rendering)."""
    _write_lines(root / "classnames.txt", (name.replace("_", " ") for name in names))
    _write_lines(root / "zeroshot_classification_templates.txt", ZEROSHOT_TEMPLATES)
    _write_lines(root / "scenes.jsonl", lines)


def generate(out_dir, *, overwrite: bool = False, workers: int = None, progress: bool = True, **options) -> dict:
    """Write the ShapeCrepe dataset to ``out_dir`` and return its manifest.

    ``options`` are the fields of ``Config``; ``preset`` picks the base values. ``workers`` (default: up to
    4 CPUs) changes only the speed, never the output.
    """
    cfg = make_config(**options)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    workers = workers or min(4, os.cpu_count() or 1)
    heldout = set(choose_heldout(cfg))
    splits = SPLITS if heldout else ("iid",)
    units = _units(cfg, splits)
    zeroshot = {split: zeroshot_classes(cfg, heldout, split) for split in splits} if cfg.zeroshot_per_class else {}
    for directory in ["images/train", *(f"sugarcrepe/{split}/val2017" for split in splits),
                      *(f"zeroshot/{split}/test/{name}" for split, names in zeroshot.items() for name in names)]:
        (out / directory).mkdir(parents=True)
    rows = {}
    shards = _ShardWriter(out / "train-wds", cfg.shard_size)
    total = cfg.train_size + 2 * cfg.test_pairs * len(SUBSETS) * len(splits)  # scenes.jsonl, without zero-shot
    zeroshot_lines = {split: [] for split in zeroshot}
    with open(out / "scenes.jsonl", "w") as scenes, tqdm(total=total + cfg.zeroshot_per_class * len(cfg.colours)
                                                         * len(cfg.shapes), desc="ShapeCrepe", unit="img",
                                                         disable=not progress) as bar:
        for unit, (unit_rows, lines, pngs) in zip(units, _run([(cfg, heldout, u, out) for u in units], workers)):
            if unit.part.startswith("zeroshot/"):
                zeroshot_lines[_zeroshot_split(unit.part.split("/")[1], heldout)].extend(lines)
            else:
                scenes.writelines(line + "\n" for line in lines)
            for index, (row, png) in enumerate(zip(unit_rows, pngs), unit.start):  # training rows only
                sidecar = {key: row[key] for key in ("original", "enhanced", "types")}
                shards.add(f"{index:06d}", {"png": png, "txt": row["original"].encode(),
                                            "json": json.dumps(sidecar).encode()})
            rows.setdefault(unit.part, []).extend(unit_rows)
            bar.update(len(lines))
    shards.close()
    _write_json(out / "train-wds/sizes.json", shards.sizes)
    _write_training(out, rows.get("train", []), cfg.pretrain_size)
    bag_identical = {split: _write_tests(out, split, {s: rows.get(f"{split}/{s}", []) for s in SUBSETS})
                     for split in splits}
    for split, names in zeroshot.items():
        _write_zeroshot(out / "zeroshot" / split, names, zeroshot_lines[split])

    manifest = {
        "generator": "open_clip_align.data.synthetic",
        "version": VERSION,
        "seed": cfg.seed,
        "options": asdict(cfg),
        "world": {"shapes": list(cfg.shapes), "colours": {c: list(COLOURS[c]) for c in cfg.colours},
                  "sizes": list(SIZES), "unwritten_size": "medium", "relations": list(RELATIONS),
                  "templates": {name: fmt for name, (fmt, _) in TEMPLATES.items()},
                  "radius_fraction": _RADIUS, "image_y_axis": "down",
                  "zeroshot_templates": list(ZEROSHOT_TEMPLATES)},
        "heldout_combos": [list(pair) for pair in sorted(heldout)],
        "files": {"train_csv": "train.csv", "train_degla": "train_degla.json", "pretrain_csv": "pretrain.csv",
                  "scenes": "scenes.jsonl", "train_wds": [f"train-wds/{name}" for name in shards.sizes],
                  "sugarcrepe": {split: f"sugarcrepe/{split}" for split in splits},
                  "winoground": {split: f"winoground/{split}/pairs.jsonl" for split in splits},
                  "zeroshot": {split: f"zeroshot/{split}" for split in zeroshot}},
        "pretrain_images": "the training images: pretrain.csv row i uses images/train image i mod train_size",
        "counts": {"images": total, "train": cfg.train_size, "pretrain": cfg.pretrain_size,
                   "wds_samples": sum(shards.sizes.values()), "wds_shards": len(shards.sizes),
                   "sugarcrepe_items": {split: {s: 2 * cfg.test_pairs for s in SUBSETS} for split in splits},
                   "winoground_pairs": {split: cfg.test_pairs * len(SUBSETS) for split in splits},
                   "zeroshot_classes": {split: len(names) for split, names in zeroshot.items()},
                   "zeroshot_images": {split: len(names) * cfg.zeroshot_per_class
                                       for split, names in zeroshot.items()}},
        "bag_identical_share": bag_identical,
    }
    _write_json(out / "manifest.json", manifest, indent=2)
    return manifest


# ------------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    default, ci = Config(), PRESETS["ci"]

    def note(name):
        return f"(default {getattr(default, name)}" + (f"; ci preset {ci[name]})" if name in ci else ")")

    parser = argparse.ArgumentParser(prog="python -m open_clip_align.data.synthetic",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="ci: tiny (32 px, 50 items per subset, a few hundred training rows, 4 zero-shot "
                             "images per class)")
    parser.add_argument("--seed", type=int, help=f"fixes everything {note('seed')}")
    parser.add_argument("--image-size", type=int, help=f"image side in pixels {note('image_size')}")
    parser.add_argument("--train-size", type=int, help=f"training rows {note('train_size')}")
    parser.add_argument("--pretrain-size", type=int, help=f"bag-of-words pretraining rows {note('pretrain_size')}")
    parser.add_argument("--test-pairs", type=int,
                        help=f"counterbalanced pairs (2 items each) per subset and split {note('test_pairs')}")
    parser.add_argument("--zeroshot-per-class", type=int,
                        help=f"images per colour-shape class of the zero-shot sets zeroshot/<split>; 0: none "
                             f"{note('zeroshot_per_class')}")
    parser.add_argument("--num-negatives", type=int, help=f"hard negatives per training row {note('num_negatives')}")
    parser.add_argument("--shard-size", type=int, help=f"samples per webdataset shard {note('shard_size')}")
    parser.add_argument("--heldout-fraction", type=float,
                        help="share of (colour, shape) pairs kept out of training (default 1/6)")
    parser.add_argument("--train-neg-types", nargs="+", choices=TRAIN_NEG_TYPES, metavar="TYPE",
                        help=f"negative types for training rows, from {', '.join(TRAIN_NEG_TYPES)} (default: all)")
    parser.add_argument("--train-templates", nargs="+", choices=tuple(TEMPLATES), metavar="TEMPLATE",
                        help=f"caption templates of training and pretraining captions, from {', '.join(TEMPLATES)} "
                             "(default: all)")
    parser.add_argument("--test-templates", nargs="+", choices=tuple(TEMPLATES), metavar="TEMPLATE",
                        help="caption templates of the test sets (default: all)")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, metavar="SHAPE",
                        help=f"shape vocabulary, from {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--colours", nargs="+", choices=tuple(COLOURS), metavar="COLOUR",
                        help=f"colour vocabulary, from {', '.join(COLOURS)} (default: all)")
    parser.add_argument("--workers", type=int, help="worker processes (default: up to 4 CPUs); the output is the same")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


_FLAG_MINIMUMS = {"image_size": 16, "train_size": 0, "pretrain_size": 0, "test_pairs": 0, "zeroshot_per_class": 0,
                  "num_negatives": 0, "shard_size": 1, "workers": 1}


def _flag_problem(namespace: argparse.Namespace) -> Optional[str]:
    """One line naming the first flag whose value cannot make a dataset (before anything is written)."""
    problem = (non_finite_flags(namespace) or range_problems(namespace, _FLAG_MINIMUMS)
               or range_problem("--heldout-fraction", namespace.heldout_fraction, 0, 0.5)
               or output_problem(namespace.out, "--out", directory=True))
    if problem:
        return problem
    preset = {**asdict(Config()), **PRESETS[namespace.preset]}
    train, pretrain = (preset[k] if getattr(namespace, k) is None else getattr(namespace, k)
                       for k in ("train_size", "pretrain_size"))
    if train == 0 and pretrain > 0:
        default = f" (the {namespace.preset} preset's)" if namespace.pretrain_size is None else ""
        return (f"--train-size 0 with --pretrain-size {pretrain}{default}: pretraining rows reuse the training "
                f"images; give --train-size of at least 1, or --pretrain-size 0 for a test-only dataset")
    return None


def main(argv=None):
    parser = _parser()
    namespace = parser.parse_args(argv)
    try:
        problem = _flag_problem(namespace)
    except ValueError as error:
        problem = str(error)
    if problem:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    args = vars(namespace)
    out, overwrite, workers, quiet = (args.pop(k) for k in ("out", "overwrite", "workers", "quiet"))
    start = time.perf_counter()
    try:
        manifest = generate(out, overwrite=overwrite, workers=workers, progress=not quiet, **args)
    except (FileExistsError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    counts = manifest["counts"]
    print(f"ShapeCrepe: {counts['images']} images ({counts['train']} train, {counts['images'] - counts['train']} "
          f"test), {counts['pretrain']} pretraining rows, {sum(counts['zeroshot_images'].values())} zero-shot "
          f"images, written to {out} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
