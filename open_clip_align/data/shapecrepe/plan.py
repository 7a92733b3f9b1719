"""Planning ShapeCrepe: training rows with verified negatives, counterbalanced test pairs and zero-shot images,
in fixed work units with their own random streams (so the output does not depend on the number of workers),
each planned and rendered by one worker process."""
import json
import multiprocessing
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ...eval.sugarcrepe import SUBSETS
from .captions import Caption, caption_edits, caption_is_true, caption_words, describe
from .config import Config, OptionError
from .render import png_bytes
from .scenes import SIZES, Scene, combos, edit_scene, moved, new_obj, sample_scene

_MAX_TRIES = 10_000
_CHUNK = 250  # rows or pairs per work unit; each unit has its own random stream, so this shapes the output


def _retry(attempt, what: str):
    """Call ``attempt()`` until it returns something; fail loudly rather than loop forever."""
    for _ in range(_MAX_TRIES):
        result = attempt()
        if result is not None:
            return result
    raise OptionError(f"could not sample {what} in {_MAX_TRIES} tries; the options are too restrictive")


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
        return not (combos(objects) | swapped) & heldout

    scene = sample_scene(rng, cfg, accept)
    if scene is None:
        return None
    caption = describe(scene, rng.choice(cfg.train_templates), rng.randrange(2))
    pools = {}

    def draw(neg_type):  # a random unused negative of this type that passes the checks, or None
        pool = pools.setdefault(neg_type, caption_edits(caption, neg_type, cfg))
        while pool:
            negative = pool.pop(rng.randrange(len(pool)))
            if not combos(negative.phrases) & heldout and not caption_is_true(scene, negative):
                return negative
        return None

    negatives = [(t, draw(t)) for t in required]  # never None: accept() ruled out held-out swaps
    types = list(cfg.train_neg_types)
    while len(negatives) < cfg.num_negatives:
        if not types:
            raise OptionError(f"num_negatives={cfg.num_negatives} (--num-negatives) exceeds the {len(negatives)} "
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
    scene_a = sample_scene(rng, cfg, lambda objects: bool(combos(objects) & heldout) == wanted)
    if scene_a is None:
        return None
    scene_b = edit_scene(rng, scene_a, subset, cfg)
    if scene_b is None or (split == "iid" and combos(scene_b.objects) & heldout):
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
    return Scene((moved(rng, new_obj(rng, shape, colour, rng.choice(SIZES), cfg.image_size), cfg.image_size),))


@dataclass(frozen=True)
class Unit:
    """A chunk of one part ("train" or "<split>/<subset>") planned and rendered by one worker.
    Fixed chunks with their own streams make the output independent of the number of workers, and let
    e.g. --train-size change without changing the test sets."""
    part: str
    start: int
    count: int


def plan_units(cfg: Config, splits) -> list:
    """The work units, zero-shot classes ("zeroshot/<colour>_<shape>") last; a class's stream does not depend
    on its split."""
    sizes = {"train": cfg.train_size, **{f"{split}/{subset}": cfg.test_pairs for split in splits for subset in SUBSETS},
             **{f"zeroshot/{name}": cfg.zeroshot_per_class
                for name in sorted(f"{c}_{s}" for c in cfg.colours for s in cfg.shapes)}}
    return [Unit(part, start, min(_CHUNK, size - start))
            for part, size in sizes.items() for start in range(0, size, _CHUNK)]


def work_unit(job):
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
            png = png_bytes(scene, cfg.image_size, seed)
            (out / path).write_bytes(png)
            lines.append(json.dumps({"image": path, "set": unit.part.split("/")[0], "seed": seed, **scene.to_dict()}))
            pngs.append(png)
    return rows, lines, pngs if unit.part == "train" else []


def _zeroshot_work(rng, cfg: Config, heldout: set, unit: Unit, out: Path):
    """Images of one zero-shot class: ``([], scene lines, [])``, the lines' paths relative to the split folder
    ``zeroshot/<split>`` (where its scenes.jsonl goes)."""
    name = unit.part.split("/")[1]
    colour, shape = name.split("_")
    split = zeroshot_split(name, heldout)
    lines = []
    for index in range(unit.start, unit.start + unit.count):
        scene = _zeroshot_scene(rng, cfg, colour, shape)
        seed, path = rng.getrandbits(32), f"test/{name}/{index:05d}.png"
        (out / "zeroshot" / split / path).write_bytes(png_bytes(scene, cfg.image_size, seed))
        lines.append(json.dumps({"image": path, "set": "zeroshot", "seed": seed, **scene.to_dict()}))
    return [], lines, []


def zeroshot_split(name: str, heldout) -> str:
    """The zero-shot split of class folder ``<colour>_<shape>``."""
    return "heldout" if tuple(name.split("_")) in heldout else "iid"


def _image_paths(part: str, index: int) -> list:
    """Paths (relative to the output root) of the images of record ``index`` of ``part``."""
    if part == "train":
        return [f"images/train/{index:06d}.png"]
    split, subset = part.split("/")
    return [f"sugarcrepe/{split}/val2017/{subset}_{index:05d}_{ab}.png" for ab in "ab"]


def run_units(jobs: list, workers: int):
    """``work_unit`` over ``jobs`` in order, in a pool of ``workers`` processes when more than one."""
    if workers <= 1:
        yield from map(work_unit, jobs)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(work_unit, jobs)
