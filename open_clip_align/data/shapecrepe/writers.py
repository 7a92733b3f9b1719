"""ShapeCrepe's files: the output folder, the training files (through the hard-negative formats' writers), the
SugarCrepe and Winoground test files and the zero-shot text files."""
import json
import shutil
from pathlib import Path

from ..formats import (CSV_CAPTION, CSV_IMAGE, JSON_CAPTION, JSON_IMAGE, JSON_NEGATIVES, JSON_TYPES, csv_row,
                       write_atomic, write_degla_json, write_tsv)
from .captions import caption_words

OUTPUTS = ("manifest.json", "images", "train.csv", "train_degla.json", "train-wds", "pretrain.csv",
           "sugarcrepe", "winoground", "scenes.jsonl", "zeroshot")
_STAGED_SHARDS = ".train-wds.tmp-*"  # ShardWriter's folder, left behind only by a killed run
ZEROSHOT_TEMPLATES = ("a photo of a {c}.", "a {c}.", "an image of a {c}.", "a rendering of a {c}.")


def prepare_out_dir(out: Path, overwrite: bool):
    """Refuse to mix with an earlier run unless ``overwrite``; then remove only what ShapeCrepe writes,
    the manifest first, so an interrupted rewrite is visibly unfinished (and shards a killed run staged)."""
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        what = ("a finished ShapeCrepe dataset (manifest.json)" if "manifest.json" in present
                else "the remains of an unfinished run (no manifest.json)")
        raise FileExistsError(f"{out} already contains {what}; pass --overwrite (overwrite=True) to replace it")
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for staged in out.glob(_STAGED_SHARDS):
        shutil.rmtree(staged)
    out.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data, indent=None):
    """JSON and a newline, written whole or not at all (through a temporary file and a rename)."""
    write_atomic(path, (json.dumps(data, indent=indent) + "\n").encode())


def _write_lines(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def write_training(out: Path, train: list, pretrain_size: int):
    """train.csv, train_degla.json and pretrain.csv in the hard-negative formats (the shards are written while
    rendering); ``train`` holds ``TrainRow.row()`` dicts."""
    write_tsv(out / "train.csv", (csv_row(row["image"], row["original"], row["enhanced"], row["types"])
                                  for row in train))
    write_degla_json(out / "train_degla.json",
                     [{JSON_IMAGE: row["image"], "image_id": i, JSON_CAPTION: row["original"],
                       JSON_NEGATIVES: row["enhanced"], JSON_TYPES: row["types"]} for i, row in enumerate(train)],
                     final_newline=True)
    write_tsv(out / "pretrain.csv", ([train[i % len(train)]["image"], train[i % len(train)]["bags"][i // len(train)]]
                                     for i in range(pretrain_size)), header=(CSV_IMAGE, CSV_CAPTION))


def write_tests(out: Path, split: str, pairs_by_subset: dict) -> dict:
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
        write_json(out / f"sugarcrepe/{split}/{subset}.json", items, indent=1)
        same = [sorted(caption_words(p["captions"][0])) == sorted(caption_words(p["captions"][1])) for p in pairs]
        bag_identical[subset] = sum(same) / len(same) if same else None
    _write_lines(out / f"winoground/{split}/pairs.jsonl", map(json.dumps, wino))
    return bag_identical


def write_zeroshot(root: Path, names: list, lines: list):
    """The text files of one zero-shot split (the images are written while rendering)."""
    _write_lines(root / "classnames.txt", (name.replace("_", " ") for name in names))
    _write_lines(root / "zeroshot_classification_templates.txt", ZEROSHOT_TEMPLATES)
    _write_lines(root / "scenes.jsonl", lines)
