"""BiVLC (Miranda et al., NeurIPS 2024 D&B; ``IMirandaM/BiVLC@84f0d17``): bidirectional 2×2 compositionality.

Each instance is a COCO val2017 image I0 with its caption C0, SugarCrepe's negative caption C1 and a generated
image I1 of C1 (HF ``imirandam/BiVLC``, split ``test``, 2,933 rows; columns ``image, caption, negative_caption,
negative_image, type, subtype``). With s(C, I) the cosine of normalised embeddings and every comparison strict
(``src/CLIP_fine_tuning/CLIP_utils.py`` L136-179, ``main_evaluation_BiVLC.py`` L87-106):
  I2T   = s(C0,I0) > s(C1,I0) and s(C1,I1) > s(C0,I1)   (each image picks its caption; Winoground's *text* score)
  T2I   = s(C0,I0) > s(C0,I1) and s(C1,I1) > s(C1,I0)   (each caption picks its image; Winoground's *image* score)
  group = I2T and T2I;  diagnostics Ipos_2T, Ineg_2T, Tpos_2I, Tneg_2I = the four comparisons alone.
Micro over instances, overall and per ``type`` (replace/swap/add), as the official script prints; per
``type/subtype`` is ours. I1 is always synthetic and I0 real, so a real-vs-generated shortcut exists.

The released parquet shards embed the images; ``python -m open_clip_align.eval.fetch bivlc`` extracts them
(``write_extracted``: image bytes unchanged) to ``<root>/images/<row>_{0,1}.<ext>`` plus ``<root>/test.jsonl``,
so this loader never needs pyarrow.
"""
import io
import json
from pathlib import Path
from typing import Iterable, List, Sequence

import torch
from PIL import Image

from . import winoground
from .items import EvalDataError, Item, data_missing, existing_image, read_jsonl, text_field

NAME = "bivlc"
ANNOTATIONS = "test.jsonl"
TYPES = ("replace", "swap", "add")
SUBTYPES = ("obj", "att", "rel")
COLUMNS = ("image", "caption", "negative_caption", "negative_image", "type", "subtype")
LAYOUT = (f"<root>/{ANNOTATIONS}, one JSON object a line {{'row', 'image', 'negative_image', 'caption', "
          f"'negative_caption', 'type', 'subtype'}} with image paths relative to <root> (images/<row>_0.jpg is the "
          f"COCO image, images/<row>_1.jpg the generated negative), as `python -m open_clip_align.eval.fetch bivlc` "
          f"extracts the official parquet shards (HF imirandam/BiVLC, split test)")
PROTOCOL = {"tie_policy": "official (strict comparisons: a tie is wrong)",
            "averaging": "micro over instances, overall and per type (official); per type/subtype (ours)",
            "score": "cosine of L2-normalised embeddings",
            "split": "BiVLC test (2,933 instances)"}
HEADLINE = {"BiVLC I2T": "bivlc/I2T", "BiVLC T2I": "bivlc/T2I", "BiVLC group": "bivlc/group"}
_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


def load(root) -> List[Item]:
    """One 2×2 item per line: ``images = [I0, I1]``, ``captions = [C0, C1]``, ``match = [[T, F], [F, T]]``,
    ``group`` = type, ``meta["subtype"]``."""
    root = Path(root)
    path = root / ANNOTATIONS
    if not path.is_file():
        shards = sorted(root.glob("data/*.parquet")) + sorted(root.glob("*.parquet"))
        found = f" (found {len(shards)} parquet shard(s): extract them with the fetcher)" if shards else ""
        raise data_missing(NAME, f"{path} not found{found}", LAYOUT, NAME, root)
    items = []
    for line_no, entry in read_jsonl(path):
        where = f"{path}: line {line_no}"
        if not isinstance(entry, dict):
            raise EvalDataError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        missing = [k for k in COLUMNS if k not in entry]
        if missing:
            raise EvalDataError(f"{where} lacks {missing}")
        kind, subtype = entry["type"], entry["subtype"]
        if kind not in TYPES or subtype not in SUBTYPES:
            raise EvalDataError(f"{where}: type/subtype must be one of {TYPES} / {SUBTYPES}, got {kind!r}/{subtype!r}")
        images = [existing_image(root / text_field(entry, key, where), where, key)
                  for key in ("image", "negative_image")]
        captions = [text_field(entry, key, where) for key in ("caption", "negative_caption")]
        items.append(Item(id=str(entry.get("row", line_no - 1)), images=images, captions=captions,
                          match=[[True, False], [False, True]], group=kind, meta={"subtype": subtype}))
    if not items:
        raise EvalDataError(f"{path}: no instances")
    return items


def _pct(hits: torch.Tensor):
    return 100.0 * hits.float().mean().item() if len(hits) else None


def metrics(items: Sequence[Item], scores: Sequence[torch.Tensor]) -> dict:
    """I2T, T2I, group and the four single comparisons (%), overall; I2T/T2I/group per type (``*_by_type``) and per
    type/subtype (``by_subtype``); tie counts. ``scores[k]``: ``[2, 2]``, rows = images (I0, I1), columns = captions
    (C0, C1)."""
    if len(items) != len(scores) or any(tuple(s.shape) != (2, 2) for s in scores):
        raise ValueError(f"BiVLC needs one 2x2 score matrix per item ({len(items)} items, {len(scores)} matrices)")
    s = torch.stack(list(scores)) if scores else torch.zeros(0, 2, 2)
    i2t, t2i, group, tie = winoground.decisions(s)
    single = {"Ipos_2T": s[:, 0, 0] > s[:, 0, 1], "Ineg_2T": s[:, 1, 1] > s[:, 1, 0],
              "Tpos_2I": s[:, 0, 0] > s[:, 1, 0], "Tneg_2I": s[:, 1, 1] > s[:, 0, 1]}
    result = {"I2T": _pct(i2t), "T2I": _pct(t2i), "group": _pct(group), **{k: _pct(v) for k, v in single.items()}}
    kinds = [k for k in TYPES if any(it.group == k for it in items)]
    index = {k: torch.tensor([j for j, it in enumerate(items) if it.group == k], dtype=torch.long) for k in kinds}
    for name, hits in (("I2T", i2t), ("T2I", t2i), ("group", group)):
        result[f"{name}_by_type"] = {k: _pct(hits[index[k]]) for k in kinds}
    by_subtype = {}
    for key in dict.fromkeys(f"{it.group}/{it.meta['subtype']}" for it in items):
        idx = torch.tensor([j for j, it in enumerate(items) if f"{it.group}/{it.meta['subtype']}" == key])
        by_subtype[key] = {"I2T": _pct(i2t[idx]), "T2I": _pct(t2i[idx]), "group": _pct(group[idx]), "n": len(idx),
                           "ties": int(tie[idx].sum())}
    result.update(by_subtype=by_subtype, n_items=len(items), n_ties=int(tie.sum()))
    return result


def parts(scorer, root) -> List[tuple]:
    """``[(dataset, task, metrics, protocol, items, metrics_fn)]`` for the test split."""
    items = load(root)
    return [(NAME, "compositionality", metrics(items, scorer.score_items(items)), dict(PROTOCOL), items, metrics)]


def _extension(data: bytes, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
    except (OSError, ValueError) as err:
        raise EvalDataError(f"{where}: the embedded image is not readable ({err})") from None
    return _FORMATS.get(fmt, f".{(fmt or 'img').lower()}")


def write_extracted(rows: Iterable[dict], dest) -> int:
    """Write ``rows`` (the parquet's records in order: images as HF ``{"bytes", "path"}`` structs) as
    ``dest/images/<row>_{0,1}.<ext>`` (bytes unchanged, extension from the image format) and ``dest/test.jsonl``;
    returns the number of rows. ``dest`` should be a fresh folder (the fetcher renames it into place)."""
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    count = 0
    with (dest / ANNOTATIONS).open("w", encoding="utf-8") as out:
        for row_index, row in enumerate(rows):
            where = f"BiVLC row {row_index}"
            missing = [k for k in COLUMNS if k not in row]
            if missing:
                raise EvalDataError(f"{where} lacks columns {missing}; expected {list(COLUMNS)}")
            record = {"row": row_index}
            for side, key in enumerate(("image", "negative_image")):
                cell = row[key]
                data = cell.get("bytes") if isinstance(cell, dict) else None
                if not isinstance(data, (bytes, bytearray)) or not data:
                    raise EvalDataError(f"{where}: column {key!r} must be an image struct with 'bytes'")
                name = f"images/{row_index}_{side}{_extension(bytes(data), where)}"
                (dest / name).write_bytes(bytes(data))
                record[key] = name
            record.update({k: row[k] for k in ("caption", "negative_caption", "type", "subtype")})
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def parquet_rows(paths: Sequence) -> Iterable[dict]:
    """The records of the parquet shards ``paths``, in order (needs pyarrow, imported here only)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EvalDataError("extracting BiVLC's parquet shards needs pyarrow (pip install pyarrow); the shards are "
                            "kept, rerun the fetcher after installing it") from None
    for path in paths:
        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=64, columns=list(COLUMNS)):
            yield from batch.to_pylist()
