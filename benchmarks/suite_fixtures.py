"""Realistic-size data for every benchmark of the evaluation suite, in each benchmark's official file format, made
from rendered ShapeCrepe scenes (no download): ``write(name, pool, root, scale)`` for each name of ``SIZES``.

``SIZES`` holds the released sets' shapes: items, unique images, captions per item, crops (ARO's and CREPE's
boxes), per-item text variants (ARO-Order's perturbations are made by the adapter, zero-shot prompts are classes ×
templates). Counts marked ``~`` are approximate (the released files are not on this machine); ``scale`` multiplies
every count of items and images (sets of at most 400 items are kept whole). Images are ShapeCrepe scenes linked
under the names the format expects; captions are the scenes' captions in ShapeCrepe's four templates, with the
subject/object swap that inverts the relation and the generator's rule-made negatives, so the texts are as varied
as the format needs (a caption repeats across items of one image as in the released sets).
"""
import ast
import csv
import json
import os
import random
from pathlib import Path
from typing import Dict, List

from open_clip_align.data.synthetic import TEMPLATES, Caption, generate, parse_caption

INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
SMALL = 400  # sets of at most this many items are never scaled down

# benchmark -> official shape; "~" in a note marks approximate counts
SIZES: Dict[str, dict] = {
    "sugarcrepe": {"items": {"replace_obj": 1652, "replace_att": 788, "replace_rel": 1406, "swap_obj": 245,
                             "swap_att": 666, "add_obj": 2062, "add_att": 692}, "images": 1560},
    "aro": {"items": {"vg_relation": 23937, "vg_attribution": 28748, "coco_order": 5000, "flickr30k_order": 1000},
            "note": "VG: one crop per item over ~items/3 images; Order: images with 5 captions, 4 perturbations "
                    "each made at load time (spaCy)"},
    "valse": {"items": {"existence": 534, "plurals": 851, "counting-hard": 1000, "counting-small-quant": 1000,
                        "counting-adversarial": 756, "relations": 535, "action-replacement": 648,
                        "actant-swap": 949, "coreference-standard": 708, "coreference-hard": 132, "foil-it": 1000},
              "note": "~ per-instrument counts; one image per ~2 items"},
    "winoground": {"items": 400, "images": 800},
    "retrieval": {"images": 5000, "captions_per_image": 5, "note": "COCO Karpathy test (a few images have 6-7)"},
    "zeroshot": {"images": 10000, "classes": 100, "templates": 18, "note": "CIFAR-100-sized ImageFolder"},
    "synthetic": {"pairs": 500, "note": "ShapeCrepe's default preset (2 splits x 7 subsets x 2 x pairs)"},
    "sugarcrepe_pp": {"items": {"replace_att": 788, "replace_obj": 1652, "replace_rel": 1406, "swap_att": 666,
                                "swap_obj": 245}, "images": 1500},
    "whatsup": {"items": {"controlled_a": 412, "controlled_b": 408, "coco_qa_one_obj": 2247, "coco_qa_two_obj": 438,
                          "vg_qa_one_obj": 2000, "vg_qa_two_obj": 1000}, "note": "~ COCO/VG-QA counts"},
    "mmvp_vlm": {"pairs": 135},
    "eqben": {"items": 2000, "note": "~ an EqBen_Mini-sized all_select.json (the full set's 251k items is GPU-scale)"},
    "spec": {"queries": 1000, "keys": 4, "note": "~ per subset and direction, 6 subsets"},
    "negbench": {"mcq": {"coco_mcq": 5914, "voc2007_mcq": 5032}, "retrieval_images": 5000, "captions_per_image": 5,
                 "note": "~ counts; two retrieval files (standard, negated) over the same images"},
    "bivlc": {"items": 2933},
    "colorswap": {"items": 300},
    "crepe": {"rows_per_file": 1000, "negatives": 5,
              "note": "~ 27 productivity files (3 types x complexity 4-12) and 6 systematicity files; a crop per row"},
}


def scaled(count: int, scale: float) -> int:
    """``count`` × ``scale`` (at least 1), except that sets of at most ``SMALL`` items keep their size."""
    return count if count <= SMALL else max(1, round(count * scale))


class Pool:
    """Rendered ShapeCrepe scenes: ``path(i)``, ``caption(i, variant)`` (8 phrasings: 4 templates × the inverted
    relation) and ``negative(i, j)`` (the generator's rule-made hard negatives). Written once by ``make``; the same
    folder is the ``synthetic`` benchmark's root."""

    def __init__(self, root: Path):
        self.root = Path(root)
        with open(self.root / "train.csv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        self.paths = [str(self.root / row["filepath"]) for row in rows]
        self.captions = [row["title"] for row in rows]
        self.negatives = [ast.literal_eval(row["neg_caption"]) for row in rows]
        self.size = json.loads((self.root / "manifest.json").read_text())["options"]["image_size"]

    @staticmethod
    def make(root: Path, images: int, pairs: int, image_size: int, seed: int = 0) -> "Pool":
        if not (Path(root) / "manifest.json").is_file():
            generate(root, preset="default", seed=seed, train_size=images, pretrain_size=0, test_pairs=pairs,
                     image_size=image_size, num_negatives=4, progress=False, overwrite=True)
        return Pool(root)

    def __len__(self):
        return len(self.paths)

    def path(self, i: int) -> str:
        return self.paths[i % len(self.paths)]

    def caption(self, i: int, variant: int = 0) -> str:
        parsed = parse_caption(self.captions[i % len(self.paths)])
        names = list(TEMPLATES)
        template = names[variant % len(names)]
        if (variant // len(names)) % 2:
            return str(Caption(parsed.obj, INVERSE[parsed.rel], parsed.subj, parsed.extras, template))
        return str(Caption(parsed.subj, parsed.rel, parsed.obj, parsed.extras, template))

    def negative(self, i: int, j: int = 0) -> str:
        negatives = self.negatives[i % len(self.paths)]
        return negatives[j % len(negatives)]

    def box(self, rng: random.Random) -> List[float]:
        """A random crop box (x, y, w, h) covering at least a third of each side."""
        w, h = (rng.randint(self.size // 3, self.size) for _ in range(2))
        return [rng.randint(0, self.size - w), rng.randint(0, self.size - h), w, h]


def _link(pool: Pool, i: int, path: Path) -> str:
    """``path`` made a symbolic link to scene ``i`` (folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.symlink(pool.path(i), path)
    return str(path)


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _csv(path: Path, header: List[str], rows: List[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def sugarcrepe(pool: Pool, root: Path, scale: float, start: int = 0) -> None:
    sizes = SIZES["sugarcrepe"]
    n_images = scaled(sizes["images"], scale)
    k = 0
    for subset, count in sizes["items"].items():
        entries = {}
        for _ in range(scaled(count, scale)):
            image = start + k % n_images
            name = f"{image:012d}.jpg"
            _link(pool, image, root / "val2017" / name)
            entries[str(len(entries))] = {"filename": name, "caption": pool.caption(image, k // n_images),
                                          "negative_caption": pool.negative(image, k)}
            k += 1
        _json(root / f"{subset}.json", entries)


def aro(pool: Pool, root: Path, scale: float) -> None:
    rng = random.Random(0)
    items = SIZES["aro"]["items"]
    relations = ["on", "has", "wearing", "behind", "in front of", "holding", "sitting on", "above", "below", "near"]
    for dataset, field in (("vg_relation", "relation_name"), ("vg_attribution", "attributes")):
        n = scaled(items[dataset], scale)
        n_images, entries = max(1, n // 3), []
        for k in range(n):
            image = k % n_images
            _link(pool, image, root / "images" / f"{image}.jpg")
            x, y, w, h = pool.box(rng)
            group = (relations[k % len(relations)] if field == "relation_name"
                     else [f"attr{k % 7}", f"attr{(k // 7) % 5}"])
            entries.append({"image_path": f"{image}.jpg", "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
                            "true_caption": pool.caption(image, k // n_images),
                            "false_caption": pool.negative(image, k), field: group})
        _json(root / f"visual_genome_{dataset.split('_')[1]}.json", entries)
    for dataset, file, folder in (("coco_order", "coco_karpathy_test.json", "val2014"),
                                  ("flickr30k_order", "flickr30k_test.json", "flickr30k-images")):
        entries = []
        for image in range(scaled(items[dataset], scale)):
            _link(pool, image, root / folder / f"{image}.jpg")
            entries.append({"image": f"{folder}/{image}.jpg", "caption": [pool.caption(image, v) for v in range(5)]})
        _json(root / file, entries)


def valse(pool: Pool, root: Path, scale: float) -> None:
    k = 0
    for instrument, count in SIZES["valse"]["items"].items():
        n = scaled(count, scale)
        entries = {}
        for j in range(n):
            image = k // 2
            _link(pool, image, root / "images" / "visual7w" / f"{image}.jpg")
            entries[str(j)] = {"dataset": "visual7w", "image_file": f"{image}.jpg", "caption": pool.caption(image, k),
                               "foil": pool.negative(image, k), "classes": None, "classes_foil": None,
                               "mturk": {"caption": 3, "foil": 0, "other": 0}}
            k += 1
        _json(root / f"{instrument}.json", entries)


def winoground(pool: Pool, root: Path, scale: float) -> None:
    lines = []
    for k in range(SIZES["winoground"]["items"]):
        names = [_link(pool, 2 * k + j, root / "images" / f"{2 * k + j}.png") for j in range(2)]
        lines.append(json.dumps({"id": k, "image_0": os.path.relpath(names[0], root),
                                 "image_1": os.path.relpath(names[1], root), "caption_0": pool.caption(2 * k),
                                 "caption_1": pool.caption(2 * k + 1), "tags": ["object"]}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")


def retrieval(pool: Pool, root: Path, scale: float) -> None:
    entries = []
    for image in range(scaled(SIZES["retrieval"]["images"], scale)):
        _link(pool, image, root / "val2014" / f"COCO_val2014_{image:012d}.jpg")
        per = SIZES["retrieval"]["captions_per_image"] + (1 if image % 50 == 0 else 0)
        entries.append({"image": f"val2014/COCO_val2014_{image:012d}.jpg",
                        "caption": [pool.caption(image, v) for v in range(per)]})
    _json(root / "coco_karpathy_test.json", entries)


def zeroshot(pool: Pool, root: Path, scale: float) -> None:
    sizes = SIZES["zeroshot"]
    classes = [f"class {c:03d} thing" for c in range(sizes["classes"])]
    for image in range(scaled(sizes["images"], scale)):
        _link(pool, image, root / "test" / f"c{image % len(classes):03d}" / f"{image}.png")
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    templates = [f"a photo of the {{c}}, variant {t}." for t in range(sizes["templates"])]
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")


def sugarcrepe_pp(pool: Pool, root: Path, scale: float) -> None:
    sizes = SIZES["sugarcrepe_pp"]
    n_images, k = scaled(sizes["images"], scale), 0
    for subset, count in sizes["items"].items():
        records = []
        for j in range(scaled(count, scale)):
            image = k % n_images
            _link(pool, image, root / "images" / f"{image:012d}.jpg")
            records.append({"id": j, "filename": f"{image:012d}.jpg", "caption": pool.caption(image, k // n_images),
                            "caption2": pool.caption(image, 4 + k // n_images),
                            "negative_caption": pool.negative(image, k)})
            k += 1
        _json(root / "data" / f"{subset}.json", records)


def whatsup(pool: Pool, root: Path, scale: float) -> None:
    items = SIZES["whatsup"]["items"]
    words = {"controlled_a": {"left_of": "to the left of", "right_of": "to the right of", "on": "on", "under": "under"},
             "controlled_b": {"left_of": "to the left of", "right_of": "to the right of", "in-front_of": "in front of",
                              "behind": "behind"}}
    image = 0
    for subset, file, folder in (("controlled_a", "controlled_images_dataset.json", "controlled_images"),
                                 ("controlled_b", "controlled_clevr_dataset.json", "controlled_clevr")):
        records = []
        for pair in range(items[subset] // 4):
            for prep, phrase in words[subset].items():
                name = f"obj{pair}_{prep}_thing{pair}.jpeg"
                _link(pool, image, root / folder / name)
                options = [f"A obj{pair} {phrase} a thing{pair}"] + [f"A obj{pair} {w} a thing{pair}"
                                                                      for p, w in words[subset].items() if p != prep]
                records.append({"image_path": f"data/{folder}/{name}", "caption_options": options})
                image += 1
        _json(root / file, records)
    for subset, folder, digits in (("coco_qa_one_obj", "val2017", 12), ("coco_qa_two_obj", "val2017", 12),
                                   ("vg_qa_one_obj", "vg_images", 0), ("vg_qa_two_obj", "vg_images", 0)):
        records = []
        for k in range(scaled(items[subset], scale)):
            _link(pool, image, root / folder / f"{image:0{digits}d}.jpg")
            records.append([image, pool.caption(image), pool.negative(image, k)])
            image += 1
        _json(root / f"{subset}.json", records)


def mmvp_vlm(pool: Pool, root: Path, scale: float) -> None:
    from open_clip_align.eval.mmvp import CATEGORIES, IMAGE_DIR, PAIRS_PER_CATEGORY

    rows = []
    for pair in range(SIZES["mmvp_vlm"]["pairs"]):
        category = CATEGORIES[pair // PAIRS_PER_CATEGORY]
        for qid in (2 * pair + 1, 2 * pair + 2):
            _link(pool, qid, root / IMAGE_DIR / category / f"{qid}.jpg")
            rows.append([qid, category, pool.caption(qid)])
    _csv(root / "Questions.csv", ["Question ID", "Type", "Statement"], rows)


def eqben(pool: Pool, root: Path, scale: float) -> None:
    records = []
    for k in range(scaled(SIZES["eqben"]["items"], scale)):
        names = [f"eqbenkubric_attr/{2 * k + j}.png" for j in range(2)]
        for j, name in enumerate(names):
            _link(pool, 2 * k + j, root / "images" / name)
        records.append({"image0": names[0], "caption0": pool.caption(2 * k), "image1": names[1],
                        "caption1": pool.caption(2 * k + 1)})
    _json(root / "all_select.json", records)


def spec(pool: Pool, root: Path, scale: float) -> None:
    from open_clip_align.eval.spec import SUBSETS

    n, keys = scaled(SIZES["spec"]["queries"], scale), SIZES["spec"]["keys"]
    image = 0
    for subset in SUBSETS:
        i2t, t2i = [], []
        for q in range(n):
            _link(pool, image, root / subset / "images" / f"{image}.jpg")
            i2t.append({"query": f"images/{image}.jpg", "label": q % keys,
                        "keys": [pool.caption(image, v) if v == q % keys else pool.negative(image, v)
                                 for v in range(keys)]})
            group = [image + 1 + v for v in range(keys)]
            for member in group:
                _link(pool, member, root / subset / "images" / f"{member}.jpg")
            t2i.append({"query": pool.caption(group[q % keys]), "label": q % keys,
                        "keys": [f"images/{member}.jpg" for member in group]})
            image += 1 + keys
        _json(root / subset / "image2text.json", i2t)
        _json(root / subset / "text2image.json", t2i)


def negbench(pool: Pool, root: Path, scale: float) -> None:
    from open_clip_align.eval.negbench import MCQ_FILES, RETRIEVAL_FILES

    sizes, image = SIZES["negbench"], 0
    for task, count in sizes["mcq"].items():
        rows, voc = [], task.startswith("voc")
        for k in range(scaled(count, scale)):
            path = (root / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{image:06d}.jpg" if voc
                    else root / "val2017" / f"{image:012d}.jpg")
            _link(pool, image, path)
            recorded = f"/datasets/{'VOC2007/JPEGImages' if voc else 'coco/val2017'}/{path.name}"
            template = ("positive", "negative", "hybrid")[k % 3]
            rows.append([0, pool.caption(image), *(pool.negative(image, j) for j in range(3)), template, recorded])
            image += 1
        _csv(root / MCQ_FILES[task], ["correct_answer", "caption_0", "caption_1", "caption_2", "caption_3",
                                      "correct_answer_template", "image_path"], rows)
    for task in RETRIEVAL_FILES:
        rows = []
        for k in range(scaled(sizes["retrieval_images"], scale)):
            _link(pool, k, root / "val2017" / f"{k:012d}.jpg")
            caps = [pool.caption(k, v) for v in range(sizes["captions_per_image"])]
            if "negated" in task:
                caps = [f"{c}, with no {pool.negative(k, v).split()[-1]}" for v, c in enumerate(caps)]
            rows.append([f"/datasets/coco/val2017/{k:012d}.jpg", repr(caps)])
        _csv(root / RETRIEVAL_FILES[task], ["filepath", "captions"], rows)


def bivlc(pool: Pool, root: Path, scale: float) -> None:
    from open_clip_align.eval.bivlc import SUBTYPES, TYPES

    lines = []
    for k in range(scaled(SIZES["bivlc"]["items"], scale)):
        names = [_link(pool, 2 * k + j, root / "images" / f"{k}_{j}.jpg") for j in range(2)]
        lines.append(json.dumps({"row": k, "image": os.path.relpath(names[0], root),
                                 "negative_image": os.path.relpath(names[1], root), "caption": pool.caption(2 * k),
                                 "negative_caption": pool.negative(2 * k, k), "type": TYPES[k % 3],
                                 "subtype": SUBTYPES[(k // 3) % 3]}))
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")


def colorswap(pool: Pool, root: Path, scale: float) -> None:
    examples = []
    for k in range(SIZES["colorswap"]["items"]):
        for j in (1, 2):
            _link(pool, 2 * k + j, root / "images" / f"img_{k}_{j}.png")
        examples.append({"id": k, "caption_1": pool.caption(2 * k + 1), "caption_2": pool.caption(2 * k + 2),
                         "image_1": f"images/img_{k}_1.png", "image_2": f"images/img_{k}_2.png",
                         "image_source": "midjourney", "caption_source": "human"})
    _json(root / "test.json", examples)


def crepe(pool: Pool, root: Path, scale: float) -> None:
    from open_clip_align.eval.crepe import COMPLEXITIES, PROD_TYPES, SYST_CORPORA, SYST_SPLITS, prod_file, syst_file

    rng, sizes = random.Random(0), SIZES["crepe"]
    n, negatives = scaled(sizes["rows_per_file"], scale), sizes["negatives"]
    files = [(prod_file(root, kind, k), "hard_negs") for kind in PROD_TYPES for k in COMPLEXITIES]
    files += [(syst_file(root, split, corpus), None) for split in SYST_SPLITS for corpus in SYST_CORPORA]
    row_id = 0
    for path, column in files:
        rows = []
        for _ in range(n):
            image = row_id // 4
            _link(pool, image, root / "VG_100K" / f"{image}.jpg")
            negs = repr([pool.negative(image, row_id + j) + f" ({j})" for j in range(negatives)])
            x, y, w, h = pool.box(rng)
            cells = [image, pool.caption(image, row_id), x, y, w, h]
            rows.append(cells + ([negs] if column else [negs, negs, negs]))
            row_id += 1
        header = ["image_id", "caption", "x", "y", "width", "height"]
        header += [column] if column else [f"valid_hard_negs_{t}" for t in ("atom", "comp", "combined")]
        _csv(path, header, rows)


WRITERS = {"sugarcrepe": sugarcrepe, "aro": aro, "valse": valse, "winoground": winoground, "retrieval": retrieval,
           "zeroshot": zeroshot, "sugarcrepe_pp": sugarcrepe_pp, "whatsup": whatsup, "mmvp_vlm": mmvp_vlm,
           "eqben": eqben, "spec": spec, "negbench": negbench, "bivlc": bivlc, "colorswap": colorswap, "crepe": crepe}


def pool_images(scale: float) -> int:
    """Scenes the pool needs: the largest number of distinct images one benchmark uses at ``scale``."""
    s = SIZES
    return max(scaled(s["retrieval"]["images"], scale), scaled(s["zeroshot"]["images"], scale),
               scaled(sum(s["valse"]["items"].values()), scale), 4 * scaled(s["bivlc"]["items"], scale),
               2 * scaled(s["eqben"]["items"], scale), sum(scaled(c, scale) for c in s["whatsup"]["items"].values()),
               sum(scaled(c, scale) for c in s["negbench"]["mcq"].values()) + 1, 2 * 800,
               6 * (1 + s["spec"]["keys"]) * scaled(s["spec"]["queries"], scale))


def write(name: str, pool: Pool, root: Path, scale: float) -> Path:
    """The data of benchmark ``name`` at ``scale`` under ``root`` (the ``synthetic`` benchmark reads the pool's own
    folder); returns the benchmark's root."""
    if name == "synthetic":
        return pool.root
    if not (root / ".complete").is_file():
        WRITERS[name](pool, root, scale)
        (root / ".complete").write_text("")
    return root
