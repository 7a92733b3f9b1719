"""``generate``: plan, render and write a whole ShapeCrepe dataset, then its manifest."""
import os
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from ...eval.sugarcrepe import SUBSETS
from ..formats import JSON_CAPTION, JSON_NEGATIVES, JSON_TYPES, ShardWriter, wds_members
from .captions import TEMPLATES
from .config import SPLITS, VERSION, choose_heldout, make_config
from .plan import plan_units, run_units, zeroshot_classes, zeroshot_split
from .scenes import COLOURS, RADIUS, RELATIONS, SIZES
from .writers import ZEROSHOT_TEMPLATES, prepare_out_dir, write_json, write_tests, write_training, write_zeroshot

def generate(out_dir, *, overwrite: bool = False, workers: int = None, progress: bool = True, **options) -> dict:
    """Write the ShapeCrepe dataset to ``out_dir`` and return its manifest.

    ``options`` are the fields of ``Config``; ``preset`` picks the base values. ``workers`` (default: up to
    4 CPUs) changes only the speed, never the output.
    """
    cfg = make_config(**options)
    out = Path(out_dir)
    prepare_out_dir(out, overwrite)
    workers = workers or min(4, os.cpu_count() or 1)
    heldout = set(choose_heldout(cfg))
    splits = SPLITS if heldout else ("iid",)
    units = plan_units(cfg, splits)
    zeroshot = {split: zeroshot_classes(cfg, heldout, split) for split in splits} if cfg.zeroshot_per_class else {}
    for directory in ["images/train", *(f"sugarcrepe/{split}/val2017" for split in splits),
                      *(f"zeroshot/{split}/test/{name}" for split, names in zeroshot.items() for name in names)]:
        (out / directory).mkdir(parents=True)
    rows = {}
    total = cfg.train_size + 2 * cfg.test_pairs * len(SUBSETS) * len(splits)  # scenes.jsonl, without zero-shot
    zeroshot_lines = {split: [] for split in zeroshot}
    images = total + cfg.zeroshot_per_class * len(cfg.colours) * len(cfg.shapes)
    with (open(out / "scenes.jsonl", "w") as scenes, ShardWriter(out / "train-wds", cfg.shard_size) as shards,
          tqdm(total=images, desc="ShapeCrepe", unit="img", disable=not progress) as bar):
        for unit, (unit_rows, lines, pngs) in zip(units, run_units([(cfg, heldout, u, out) for u in units], workers)):
            if unit.part.startswith("zeroshot/"):
                zeroshot_lines[zeroshot_split(unit.part.split("/")[1], heldout)].extend(lines)
            else:
                scenes.writelines(line + "\n" for line in lines)
            for index, (row, png) in enumerate(zip(unit_rows, pngs), unit.start):  # training rows only
                meta = {JSON_CAPTION: row["original"], JSON_NEGATIVES: row["enhanced"], JSON_TYPES: row["types"]}
                shards.add(f"{index:06d}", wds_members("png", png, row["original"], meta))
            rows.setdefault(unit.part, []).extend(unit_rows)
            bar.update(len(lines))
    write_json(out / "train-wds/sizes.json", shards.sizes)
    write_training(out, rows.get("train", []), cfg.pretrain_size)
    bag_identical = {split: write_tests(out, split, {s: rows.get(f"{split}/{s}", []) for s in SUBSETS})
                     for split in splits}
    for split, names in zeroshot.items():
        write_zeroshot(out / "zeroshot" / split, names, zeroshot_lines[split])

    manifest = {
        "generator": "open_clip_align.data.synthetic",
        "version": VERSION,
        "seed": cfg.seed,
        "options": asdict(cfg),
        "world": {"shapes": list(cfg.shapes), "colours": {c: list(COLOURS[c]) for c in cfg.colours},
                  "sizes": list(SIZES), "unwritten_size": "medium", "relations": list(RELATIONS),
                  "templates": {name: fmt for name, (fmt, _) in TEMPLATES.items()},
                  "radius_fraction": RADIUS, "image_y_axis": "down",
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
    write_json(out / "manifest.json", manifest, indent=2)
    return manifest
