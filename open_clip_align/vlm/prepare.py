"""Convert the seed's caption sources to AlignVLM training data (CSV/TSV or webdataset shards) or, for COCO
Karpathy, to the evaluation file: streaming, resumable, one line naming file and row for a malformed record.

    python -m open_clip_align.vlm.prepare pixmo-cap pixmo-cap/data/*.parquet --download --out data/pixmo --format wds
    python -m open_clip_align.vlm.prepare localized-narratives the_cauldron/localized_narratives/*.parquet \\
        --out data/ln --format wds
    python -m open_clip_align.vlm.prepare localized-narratives coco_train_localized_narratives.jsonl \\
        --image-root /data/coco/train2017 --out data/ln-coco --format csv
    python -m open_clip_align.vlm.prepare coco-karpathy dataset_coco.json --split train,restval \\
        --image-root /data/coco --out data/coco-train --format csv
    python -m open_clip_align.vlm.prepare coco-karpathy dataset_coco.json --split test --image-root /data/coco \\
        --out data/coco-test --format karpathy          # -> data/coco-test/coco_karpathy_test.json for vlm.evaluate

Sources (:mod:`.caption_sources`): PixMo-Cap (parquet / JSONL: ``image_url`` + ``caption``, or ``image_path``),
Localized Narratives (the_cauldron parquet with embedded images, or Google's JSONL release + ``--image-root``),
COCO Karpathy (``dataset_coco.json`` with ``--split``, or a BLIP-format split file). One sample per caption
(``--captions first`` keeps one per image).

Outputs in ``--out``:

* ``--format wds``: ``shard-NNNNNN.tar`` (``KEY.<jpg|png|webp>`` + ``KEY.txt``), ``sizes.json``;
  train with ``--train-data 'OUT/shard-{000000..00000N}.tar'``;
* ``--format csv``: ``captions.tsv`` (``filepath`` TAB ``title``; images already on disk by their absolute path,
  embedded or downloaded ones written under ``images/``); train with ``--train-data OUT/captions.tsv``;
* ``--format karpathy`` (coco-karpathy only): ``coco_karpathy_<split>.json`` (``[{"image", "caption": [...]}]``,
  paths relative to ``--image-root``), the ``vlm.evaluate --data`` / ``--support`` format.

Resumable: every ``--shard-size`` samples the work so far is committed (a shard renamed into place, or the TSV
fsync'd) and ``progress.json`` records where the sources stand; run the same command again after an interruption
and it continues from there (other settings for the same ``--out`` are refused). Images are checked as they are
written (a file that is missing or not an image stops the run naming the row). ``--download`` fetches PixMo's
URLs (``--download-workers`` at a time); a URL that fails is not an error of the record: it is listed in
``skipped.jsonl`` (row, URL, reason) and counted in the summary.
"""
import argparse
import csv
import io
import json
import os
import sys
import tarfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from PIL import Image

from ..cli_checks import console_logging, output_problem, range_problems
from ..data.formats import SHARD_NAME, write_atomic
from ..errors import UserError, run_cli
from .caption_sources import SOURCES, SourceRow, read_rows, source_row

__all__ = ["PrepareError", "convert", "main"]

PROGRESS, SIZES, SKIPPED, TABLE = "progress.json", "sizes.json", "skipped.jsonl", "captions.tsv"
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
USER_AGENT = "open_clip_align-prepare/1.0"


class PrepareError(UserError):
    """Bad converter input or flags; the message names the file and row, or the flag."""


# ------------------------------------------------------------------------------------------------- images
def image_payload(data: bytes, where: str) -> Tuple[bytes, str]:
    """``(bytes, extension)`` of an image the trainer reads (jpg/png/webp kept as they are, any other format
    PIL reads re-encoded as PNG); :class:`PrepareError` naming ``where`` when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if fmt in FORMATS:
                img.verify()
                return data, FORMATS[fmt]
            out = io.BytesIO()
            img.convert("RGB").save(out, format="PNG")
            return out.getvalue(), "png"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise PrepareError(f"{where}: the image is not a readable image file ({type(err).__name__}: {err})") from None


def _file_bytes(path: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PrepareError(f"{where}: image file not found: {path} (check --image-root / --image-pattern)") from None
    except OSError as err:
        raise PrepareError(f"{where}: cannot read image {path} ({err.strerror or err})") from None


def _check_image_file(path: str, where: str) -> None:
    """The file exists and starts like an image PIL knows (its header only: the CSV path keeps the file)."""
    if not os.path.isfile(path):
        raise PrepareError(f"{where}: image file not found: {path} (check --image-root / --image-pattern)")
    try:
        with Image.open(path):
            pass
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise PrepareError(f"{where}: {path} is not a readable image file ({type(err).__name__})") from None


def fetch(url: str, timeout: float, retries: int = 2) -> bytes:
    """The bytes at ``url`` (``retries`` more tries on a network error); raises ``OSError`` when it fails."""
    last: Optional[Exception] = None
    for _ in range(retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except (OSError, ValueError) as err:       # URLError / HTTPError / timeouts are OSErrors
            last = err
            if getattr(err, "code", None) in (403, 404, 410):
                break
    raise OSError(str(last))


# ------------------------------------------------------------------------------------------------ writers
class _ShardOut:
    """One webdataset shard per commit, written to ``NAME.tmp``, fsync'd and renamed; ``sizes.json`` after."""

    def __init__(self, out: Path, state: dict):
        self.out, self.state = out, state
        self.samples: List[Tuple[str, bytes, str, str]] = []

    def add(self, key: str, caption: str, row: SourceRow, image: Optional[Tuple[bytes, str]]) -> None:
        if image is None:
            image = image_payload(_file_bytes(row.image_path, row.where), row.where)
        self.samples.append((key, image[0], image[1], caption))

    def commit(self) -> None:
        if not self.samples:
            return
        name = SHARD_NAME.format(self.state["shards"])
        final, tmp = self.out / name, self.out / (name + ".tmp")
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for key, data, ext, caption in self.samples:
                    for member, payload in ((f"{key}.{ext}", data), (f"{key}.txt", caption.encode("utf-8"))):
                        info = tarfile.TarInfo(member)
                        info.size, info.mode, info.mtime = len(payload), 0o644, 0
                        tar.addfile(info, io.BytesIO(payload))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.state["sizes"][name] = len(self.samples)
        self.state["shards"] += 1
        write_atomic(self.out / SIZES, json.dumps(self.state["sizes"], indent=1).encode(), PrepareError)
        self.samples = []

    def finish(self) -> str:
        last = self.state["shards"] - 1
        return str(self.out / (f"shard-{{000000..{last:06d}}}.tar" if last > 0 else SHARD_NAME.format(0)))

    def start(self) -> None:
        """Drop a shard half-written by a killed run."""
        for stale in self.out.glob("shard-*.tar.tmp"):
            stale.unlink()


class _TableOut:
    """``captions.tsv.partial`` appended and fsync'd per commit; its committed length is in the progress, so a
    resumed run cuts off what came after; renamed to ``captions.tsv`` at the end."""

    def __init__(self, out: Path, state: dict):
        self.out, self.state = out, state
        self.partial = out / (TABLE + ".partial")
        self.rows: List[Tuple[str, str]] = []

    def add(self, key: str, caption: str, row: SourceRow, image: Optional[Tuple[bytes, str]]) -> None:
        if image is None:
            self.rows.append((os.path.abspath(row.image_path), caption))
            return
        folder = self.out / "images" / key[:-4]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{key}.{image[1]}"
        (folder / name).write_bytes(image[0])
        self.rows.append((f"images/{key[:-4]}/{name}", caption))

    def start(self) -> None:
        """Start the TSV, or cut a resumed one back to its committed length."""
        if self.state["table_bytes"] == 0:
            with open(self.partial, "w", newline="") as f:
                csv.writer(f, delimiter="\t", lineterminator="\n").writerow(["filepath", "title"])
            self.state["table_bytes"] = self.partial.stat().st_size
            return
        if not self.partial.is_file() and (self.out / TABLE).is_file():   # killed between finish and the record
            os.replace(self.out / TABLE, self.partial)
        if self.partial.is_file():
            os.truncate(self.partial, self.state["table_bytes"])
        else:
            raise PrepareError(f"{self.partial}: missing, but {self.out / PROGRESS} says rows were written; start "
                               "again in an empty --out")

    def commit(self) -> None:
        with open(self.partial, "a", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(self.rows)
            f.flush()
            os.fsync(f.fileno())
        self.state["table_bytes"] = self.partial.stat().st_size
        self.rows = []

    def finish(self) -> str:
        os.replace(self.partial, self.out / TABLE)
        return str(self.out / TABLE)


# ----------------------------------------------------------------------------------------------- convert
def _settings(args) -> dict:
    return {"source": args.source, "inputs": [os.path.abspath(p) for p in args.inputs], "format": args.format,
            "image_root": args.image_root and os.path.abspath(args.image_root), "image_pattern": args.image_pattern,
            "split": args.split, "captions": args.captions, "shard_size": args.shard_size, "limit": args.limit,
            "download": args.download}


def _start(out: Path, settings: dict) -> dict:
    """The progress to continue from (a fresh one for an empty or new ``out``)."""
    progress = out / PROGRESS
    if progress.is_file():
        try:
            state = json.loads(progress.read_text())
            saved = state["settings"]
        except (ValueError, KeyError, TypeError):
            raise PrepareError(f"{progress}: not a progress file of this converter; start in an empty --out") \
                from None
        diff = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
        if diff:
            raise PrepareError(f"--out {out}: holds a conversion with other settings ({'; '.join(diff)}); use the "
                               "same command to continue it, or another --out")
        return state
    if out.is_dir() and any(out.iterdir()):
        raise PrepareError(f"--out {out}: not empty and no {PROGRESS}; choose an empty or new folder")
    return {"settings": settings, "file": 0, "row": 0, "rows": 0, "samples": 0, "skipped": 0, "shards": 0,
            "sizes": {}, "table_bytes": 0, "complete": False, "result": None}


def _fetch_all(rows: Sequence[SourceRow], workers: int, timeout: float) -> List[Optional[object]]:
    """Download every URL row concurrently (in order); an entry is the bytes or the ``OSError``."""
    urls = [r.image_url for r in rows]

    def one(url):
        if url is None:
            return None
        try:
            return fetch(url, timeout)
        except OSError as err:
            return err
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, urls))


def _flush(pending: List[SourceRow], position: Tuple[int, int], writer, state: dict, out: Path, args) -> None:
    """Write the pending rows' samples, commit them, then record the sources' position."""
    fetched = _fetch_all(pending, args.download_workers, args.timeout) if args.download else [None] * len(pending)
    skipped = []
    for row, data in zip(pending, fetched):
        image = None
        if row.image_url is not None:
            if isinstance(data, OSError):
                skipped.append({"where": row.where, "url": row.image_url, "reason": str(data)})
                continue
            try:
                image = image_payload(data, row.where)
            except PrepareError as err:
                skipped.append({"where": row.where, "url": row.image_url, "reason": str(err)})
                continue
        elif row.image_bytes is not None:
            image = image_payload(row.image_bytes, row.where)
        for caption in row.captions:
            writer.add(f"{state['samples']:09d}", caption, row, image)
            state["samples"] += 1
    writer.commit()
    if skipped:
        with open(out / SKIPPED, "a") as f:
            f.write("".join(json.dumps(s) + "\n" for s in skipped))
            f.flush()
            os.fsync(f.fileno())
        state["skipped"] += len(skipped)
    state["file"], state["row"] = position
    write_atomic(out / PROGRESS, json.dumps(state, indent=1).encode(), PrepareError)


def _karpathy_json(args, out: Path) -> dict:
    """``--format karpathy``: the evaluation file of the selected split(s), written at once (it is small)."""
    entries = []
    rows = 0
    for path in args.inputs:
        for _, raw, where in read_rows(Path(path)):
            if args.limit and rows >= args.limit:
                break
            rows += 1
            row = source_row(args.source, raw, where, None, None, _splits(args), args.captions == "first")
            if row is not None:
                full = row.image_path if args.image_root is None else os.path.join(args.image_root, row.image_path)
                _check_image_file(full, where)
                entries.append({"image": row.image_path, "caption": row.captions})
    name = f"coco_karpathy_{(args.split or 'all').replace(',', '_')}.json"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / name, json.dumps(entries).encode(), PrepareError)
    return {"images": len(entries), "captions": sum(len(e["caption"]) for e in entries), "file": str(out / name)}


def _splits(args) -> Optional[List[str]]:
    return [s.strip() for s in args.split.split(",") if s.strip()] if args.split else None


def convert(args) -> dict:
    """Run the conversion of the parsed ``args`` (see :func:`build_parser`); returns the summary."""
    out = Path(args.out)
    if args.format == "karpathy":
        return _karpathy_json(args, out)
    state = _start(out, _settings(args))
    if state["complete"]:
        return {**state["result"], "already_complete": True}
    out.mkdir(parents=True, exist_ok=True)
    writer = (_ShardOut if args.format == "wds" else _TableOut)(out, state)
    writer.start()
    write_atomic(out / PROGRESS, json.dumps(state, indent=1).encode(), PrepareError)
    pending: List[SourceRow] = []
    queued, limit_hit = 0, False
    position = (state["file"], state["row"])
    splits, first_only = _splits(args), args.captions == "first"
    for file_index in range(state["file"], len(args.inputs)):
        start = state["row"] if file_index == state["file"] else 0
        for index, raw, where in read_rows(Path(args.inputs[file_index]), start):
            if args.limit and state["rows"] >= args.limit:
                limit_hit = True
                break
            state["rows"] += 1
            position = (file_index, index + 1)
            row = source_row(args.source, raw, where, args.image_root, args.image_pattern, splits, first_only)
            if row is None:
                continue
            if row.image_url is not None and not args.download:
                raise PrepareError(f"{where}: the image is a URL ({row.image_url:.80}); pass --download to fetch "
                                   "it, or give rows an image_path")
            if row.image_path is not None:
                _check_image_file(row.image_path, where)
            pending.append(row)
            queued += len(row.captions)
            if queued >= args.shard_size:
                _flush(pending, position, writer, state, out, args)
                pending, queued = [], 0
        if limit_hit:
            break
        position = (file_index + 1, 0)
    if pending:
        _flush(pending, position, writer, state, out, args)
    if state["samples"] == 0:
        raise PrepareError(f"{', '.join(args.inputs[:3])}: no samples"
                           + (f" (--split {args.split} matched no rows)" if args.split else ""))
    result = {"rows": state["rows"], "samples": state["samples"], "skipped_downloads": state["skipped"],
              "train_data": writer.finish(), "format": args.format}
    state.update(complete=True, result=result)
    write_atomic(out / PROGRESS, json.dumps(state, indent=1).encode(), PrepareError)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_clip_align.vlm.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=SOURCES)
    p.add_argument("inputs", nargs="+", help="source files (.parquet, .jsonl, .json), read in this order")
    p.add_argument("--out", required=True, help="output folder (new or empty; or the folder of a run to continue)")
    p.add_argument("--format", choices=("csv", "wds", "karpathy"), default="wds",
                   help="wds shards (default), csv (a TSV of image paths and captions) or, for coco-karpathy, the "
                        "evaluation JSON")
    p.add_argument("--image-root", default=None, help="folder that relative image paths are under")
    p.add_argument("--image-pattern", default=None,
                   help="Localized Narratives JSONL: image file name from {image_id} and {dataset_id} (default "
                        "{image_id:0>12}.jpg for COCO, {image_id}.jpg otherwise)")
    p.add_argument("--split", default=None, help="coco-karpathy dataset_coco.json: splits to keep, e.g. train,restval")
    p.add_argument("--captions", choices=("all", "first"), default="all",
                   help="one sample per caption (all, default) or only an image's first caption")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard / per commit (default 1000)")
    p.add_argument("--limit", type=int, default=None, help="read at most N source rows (in file order)")
    p.add_argument("--download", action="store_true", help="pixmo-cap: fetch image_url images (needs network)")
    p.add_argument("--download-workers", type=int, default=16, help="concurrent downloads (default 16)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per download try (default 20)")
    return p


def _check(args) -> None:
    problem = (range_problems(args, {"shard_size": 1, "limit": 1, "download_workers": 1})
               or (f"--timeout must be above 0, got {args.timeout:g}" if not args.timeout > 0 else None)
               or output_problem(args.out, "--out", directory=True))
    if problem:
        raise PrepareError(problem)
    if args.format == "karpathy" and args.source != "coco-karpathy":
        raise PrepareError("--format karpathy writes the COCO evaluation file; it needs the coco-karpathy source")
    if args.split and args.source != "coco-karpathy":
        raise PrepareError("--split selects splits of COCO Karpathy's dataset_coco.json (coco-karpathy source only)")
    if args.download and args.source != "pixmo-cap":
        raise PrepareError("--download fetches PixMo-Cap's image URLs (pixmo-cap source only)")
    if args.image_pattern and args.source != "localized-narratives":
        raise PrepareError("--image-pattern names Localized Narratives JSONL images (localized-narratives only)")
    for path in args.inputs:
        if not os.path.isfile(path):
            raise PrepareError(f"{path}: {'is a folder' if os.path.isdir(path) else 'not found'}; expected a "
                               ".parquet, .jsonl or .json source file")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    _check(args)
    result = convert(args)
    if args.format == "karpathy":
        print(f"wrote {result['file']}: {result['images']} images, {result['captions']} captions "
              "(vlm.evaluate --data / --support)")
    else:
        done = "already complete: " if result.get("already_complete") else ""
        print(f"{done}{result['samples']} samples from {result['rows']} rows"
              + (f", {result['skipped_downloads']} download(s) skipped (see {Path(args.out) / SKIPPED})"
                 if result["skipped_downloads"] else "")
              + f"; train with --train-data '{result['train_data']}'")
    return result


def cli() -> None:
    console_logging()
    sys.exit(run_cli(lambda: main() and 0, "open_clip_align.vlm.prepare",
                     interrupted="the committed part is kept; run the same command again to continue"))


if __name__ == "__main__":
    cli()
