"""ShapeCrepe's world and scene geometry: the vocabulary, objects, scenes, spatial relations, placing objects
so that a relation holds clearly, and the edits that make a test pair's partner scene."""
import math
from dataclasses import dataclass, replace

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {  # far apart in RGB, so they stay distinct under +-COLOUR_JITTER per channel
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (45, 90, 235), "yellow": (235, 220, 50),
    "purple": (150, 60, 205), "orange": (245, 140, 25), "white": (240, 240, 240), "gray": (128, 128, 128),
}
SIZES = ("small", "medium", "large")
RELATIONS = ("left", "right", "above", "below")
RADIUS = {"small": 0.09, "medium": 0.13, "large": 0.18}  # bounding-circle radius / image side
RADIUS_JITTER = 0.08  # relative; the size classes stay disjoint
_ROTATION_JITTER = 12.0  # degrees; keeps squares and diamonds apart
_CLEAR = 2.0  # a generated relation's main-axis offset is at least this times the other offset
_REPLACE_SIZE_PROB = 0.25  # share of replace_att test pairs that change a size rather than a colour
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


def combos(items) -> set:
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


def new_obj(rng, shape: str, colour: str, size: str, image_size: int) -> Obj:
    """An unplaced object with jittered radius and rotation."""
    radius = image_size * RADIUS[size] * rng.uniform(1 - RADIUS_JITTER, 1 + RADIUS_JITTER)
    return Obj(shape, colour, size, 0.0, 0.0, round(radius, 2),
               round(rng.uniform(-_ROTATION_JITTER, _ROTATION_JITTER), 1))


def moved(rng, obj: Obj, image_size: int) -> Obj:
    """``obj`` at a uniformly random centre where it lies fully inside the image."""
    low, high = obj.radius + 1, image_size - 1 - obj.radius
    return replace(obj, cx=round(rng.uniform(low, high), 2), cy=round(rng.uniform(low, high), 2))


def _resized(obj: Obj, size: str) -> Obj:
    """``obj`` with another size class, keeping its jitter."""
    return replace(obj, size=size, radius=round(obj.radius * RADIUS[size] / RADIUS[obj.size], 2))


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


def sample_scene(rng, cfg, accept):
    """Two objects with distinct shapes and colours that pass ``accept(objects)``, placed in a random
    relation; None if rejected (callers retry)."""
    shapes, colours = rng.sample(cfg.shapes, 2), rng.sample(cfg.colours, 2)
    objects = [new_obj(rng, s, c, rng.choice(SIZES), cfg.image_size) for s, c in zip(shapes, colours)]
    if not accept(objects):
        return None
    return _place(rng, objects, rng.choice(RELATIONS), cfg.image_size)


def edit_scene(rng, scene: Scene, subset: str, cfg):
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
        extra = new_obj(rng, rng.choice(absent_shapes), rng.choice(absent_colours), rng.choice(SIZES),
                         cfg.image_size)
        objects.append(moved(rng, extra, cfg.image_size))
    elif subset == "add_att":
        if objects[i].size != "medium":
            return None
        objects[i] = _resized(objects[i], rng.choice(("small", "large")))
    else:
        raise ValueError(f"unknown subset {subset!r}")
    return Scene(tuple(objects)) if _fits(objects, cfg.image_size) else None
