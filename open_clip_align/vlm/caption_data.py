"""Image-caption training data for AlignVLM: a CSV/TSV table or webdataset shards, batched with the token layout.

* ``csv``: a CSV/TSV file with an image-path column and a caption column (open_clip's ``--csv-img-key``,
  ``--csv-caption-key``, ``--csv-separator``; default TAB, ``filepath``, ``title``), paths relative to
  ``--image-root`` (default: the file's folder). Every row is validated before training starts.
* ``wds``: webdataset shards (brace patterns, ``::``-separated lists, or a folder of ``shard-*.tar`` as
  ``vlm.prepare`` writes) whose samples have an image member (png/jpg/jpeg/webp) and a ``.txt`` caption. Samples
  per epoch come from ``--train-num-samples`` or the ``sizes.json`` next to the shards.

Batches are dicts: ``images [B, 3, H, W]`` and ``input_ids``, ``attention_mask``, ``visual_mask``, ``labels``
``[B, L]`` (the captions are tokenised in the DataLoader workers). Both loaders are deterministic functions of
(seed, epoch); ``set_epoch(epoch, skip_batches)`` starts an epoch after its first ``skip_batches`` batches, so
a resumed run sees exactly the batches an uninterrupted one would have (also with several workers).
Bad data raises :class:`CaptionDataError` naming the file (row or shard sample) and the flag to check.
"""
import io
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, NoReturn, Optional, Sequence, Tuple

import pandas as pd
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..errors import UserError
from .layout import SequenceLayout

__all__ = [
    "CaptionBatcher",
    "CaptionDataError",
    "CaptionRecord",
    "CaptionShardLoader",
    "CaptionTableLoader",
    "check_shards",
    "read_caption_table",
    "shard_folder",
    "shard_sample_count",
]

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_SHUFFLE_BUFFER = 512
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_WORKER_MARKER = "CaptionDataError: "


class CaptionDataError(UserError):
    """Bad image-caption data or data flags; the message names the file (row / shard sample) and the problem."""


@dataclass(frozen=True)
class CaptionRecord:
    """One validated table row: resolved image path, caption, and where it came from ("file, line N")."""
    image: str
    caption: str
    where: str


def _open_rgb(source, where: str) -> Image.Image:
    try:
        with Image.open(source) as img:
            return img.convert("RGB")
    except _IMAGE_ERRORS as err:
        raise CaptionDataError(f"{where}: cannot read image: {type(err).__name__}: {err}") from None


def read_caption_table(path: str, image_key: str = "filepath", caption_key: str = "title",
                       separator: str = "\t", image_root: Optional[str] = None) -> List[CaptionRecord]:
    """Read and validate a CSV/TSV of image paths and captions (line numbers count the header as line 1).

    Raises :class:`CaptionDataError` for a missing or unparsable file, missing columns, an empty path or
    caption, no rows, or image files that do not exist (the first few are named).
    """
    if os.path.isdir(path):
        raise CaptionDataError(f"{path}: is a folder; expected a CSV/TSV file of image paths and captions, or "
                               "webdataset .tar shards (--train-data)")
    if not os.path.isfile(path):
        raise CaptionDataError(f"{path}: train data file not found (--train-data)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise CaptionDataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as err:
        raise CaptionDataError(f"{path}: cannot parse with --csv-separator {separator!r}: "
                               f"{str(err).strip().splitlines()[0]}") from None
    missing = [key for key in (image_key, caption_key) if key not in df.columns]
    if missing:
        raise CaptionDataError(f"{path}: missing column(s) {missing}; available columns: {list(df.columns)} "
                               f"(read with --csv-separator {separator!r}; see --csv-img-key/--csv-caption-key)")
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    records = []
    for i, (image, caption) in enumerate(zip(df[image_key], df[caption_key])):
        where = f"{path}, line {i + 2}"
        if not image.strip() and not caption.strip():
            continue
        if not image.strip():
            raise CaptionDataError(f"{where}: empty image path in column {image_key!r}")
        if not caption.strip():
            raise CaptionDataError(f"{where}: empty caption in column {caption_key!r}")
        records.append(CaptionRecord(os.path.join(root, image), caption.strip(), where))
    if not records:
        raise CaptionDataError(f"{path}: no data rows")
    absent = [r for r in records if not os.path.isfile(r.image)]
    if absent:
        examples = "; ".join(f"{r.where}: {r.image}" for r in absent[:3]) + ("; ..." if len(absent) > 3 else "")
        raise CaptionDataError(f"{path}: image file not found for {len(absent)} of {len(records)} rows: "
                               f"{examples} (check --image-root)")
    return records


class CaptionBatcher:
    """Collate ``[(image [3,H,W], caption), ...]`` into the model's batch dict (tokenising with ``layout``)."""

    def __init__(self, layout: SequenceLayout, tokenizer, prompt: str):
        self.layout, self.tokenizer, self.prompt = layout, tokenizer, prompt

    def __call__(self, samples: Sequence[Tuple[torch.Tensor, str]]) -> dict:
        images, captions = zip(*samples)
        batch = self.layout.encode(self.tokenizer, [self.prompt] * len(captions), list(captions), "right")
        batch["images"] = torch.stack(images)
        return batch


def _unwrap_worker_error(err: CaptionDataError) -> CaptionDataError:
    """A worker's CaptionDataError reaches the main process wrapped in traceback text; keep its message."""
    text = str(err)
    if "Original Traceback" in text and _WORKER_MARKER in text:
        return CaptionDataError(text.rsplit(_WORKER_MARKER, 1)[1].strip())
    return err


# ----------------------------------------------------------------------------------------- table (csv/tsv)
class _TableDataset(Dataset):
    def __init__(self, records: Sequence[CaptionRecord], transform: Callable):
        self.records, self.transform = list(records), transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, str]:
        record = self.records[idx]
        return self.transform(_open_rgb(record.image, f"{record.where} ({record.image})")), record.caption


class _EpochSampler(Sampler):
    """This rank's row indices for one epoch: a permutation seeded by (seed, epoch), cut to whole global
    batches, rows ``rank::world``, starting after ``skip_batches`` local batches."""

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, seed: int):
        self.n, self.batch_size, self.world_size, self.rank, self.seed = n, batch_size, world_size, rank, seed
        self.batches = n // (batch_size * world_size)
        self.epoch, self.skip = 0, 0

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[:self.batches * self.batch_size * self.world_size]
        mine = order[self.rank::self.world_size]
        return iter(mine[self.skip * self.batch_size:].tolist())

    def __len__(self) -> int:
        return (self.batches - self.skip) * self.batch_size


class CaptionTableLoader:
    """Batches from a validated caption table; ``steps_per_epoch`` full batches per rank and epoch."""

    def __init__(self, records: Sequence[CaptionRecord], transform: Callable, batcher: CaptionBatcher,
                 batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0, workers: int = 0):
        global_batch = batch_size * world_size
        if len(records) < global_batch:
            raise CaptionDataError(f"{records[0].where.rsplit(',', 1)[0]}: {len(records)} rows, fewer than one "
                                   f"global batch (--batch-size {batch_size} x {world_size} processes)")
        self.sampler = _EpochSampler(len(records), batch_size, world_size, rank, seed)
        self.steps_per_epoch = self.sampler.batches
        self.num_samples = len(records)
        self.loader = DataLoader(_TableDataset(records, transform), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, collate_fn=batcher, drop_last=True,
                                 pin_memory=torch.cuda.is_available())

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.sampler.epoch, self.sampler.skip = epoch, skip_batches

    def __iter__(self):
        try:
            yield from self.loader
        except CaptionDataError as err:
            raise _unwrap_worker_error(err) from None


# ----------------------------------------------------------------------------------------------- webdataset
def shard_folder(path: str) -> bool:
    """Whether ``path`` is a folder holding webdataset shards (``shard-*.tar``)."""
    return os.path.isdir(path) and any(Path(path).glob("shard-*.tar"))


def _expand(spec: str) -> List[str]:
    import braceexpand

    if shard_folder(spec):
        return sorted(str(p) for p in Path(spec).glob("shard-*.tar"))
    return [url for part in spec.split("::") for url in braceexpand.braceexpand(part)]


def shard_sample_count(urls: Sequence[str]) -> Optional[int]:
    """Samples in ``urls`` from the ``sizes.json`` next to the first shard (None when there is none)."""
    sizes_path = Path(urls[0]).parent / "sizes.json"
    if not sizes_path.is_file():
        return None
    try:
        sizes = json.loads(sizes_path.read_text())
    except json.JSONDecodeError as err:
        raise CaptionDataError(f"{sizes_path}: not valid JSON ({err})") from None
    missing = [u for u in urls if Path(u).name not in sizes]
    if missing:
        raise CaptionDataError(f"{sizes_path}: no size for shard(s) {[Path(u).name for u in missing[:3]]}; "
                               "pass --train-num-samples")
    return sum(int(sizes[Path(u).name]) for u in urls)


def _shard_error(exn: Exception) -> NoReturn:
    details = ", ".join(str(a) for a in exn.args if a is not None)
    raise CaptionDataError(f"cannot read webdataset shard: {type(exn).__name__}: {details}") from None


class _ShardStream(IterableDataset):
    """One rank's batches from webdataset shards, deterministic in (seed, epoch).

    Shards are shuffled by (seed, epoch) and split over ranks and then over *logical* workers; each logical
    worker loops over its shards (so it never runs dry), shuffles samples in a buffer seeded by
    (seed, epoch, rank, logical worker) and makes batches. Local batch ``j`` of an epoch is batch ``j // W`` of
    logical worker ``j % W``. The DataLoader hands out batches round-robin from real worker 0, so after
    skipping ``s`` batches real worker ``q`` plays logical worker ``(q + s) % W``: the order stays exact.
    """

    def __init__(self, urls: Sequence[str], transform: Callable, batcher: CaptionBatcher, batch_size: int,
                 steps_per_epoch: int, world_size: int, rank: int, seed: int, workers: int):
        self.urls, self.transform, self.batcher = list(urls), transform, batcher
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.world_size, self.rank, self.seed, self.workers = world_size, rank, seed, max(1, workers)
        self.epoch, self.skip = 0, 0

    def _samples(self, shards: Sequence[str]) -> Iterator[dict]:
        while True:
            count = 0
            for sample in wds.tarfile_to_samples(handler=_shard_error)([{"url": u} for u in shards]):
                count += 1
                yield sample
            if count == 0:
                raise CaptionDataError(f"webdataset shard(s) {list(shards)[:3]} hold no samples")

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= _SHUFFLE_BUFFER:
                yield buffer.pop(rng.randrange(len(buffer)))

    def _decode(self, sample: dict) -> Tuple[torch.Tensor, str]:
        where = f"{sample.get('__url__')}, sample {sample.get('__key__')!r}"
        members = sorted(k for k in sample if not k.startswith("__"))
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise CaptionDataError(f"{where}: no image member ({'/'.join(IMAGE_EXTS)}); members: {members}")
        if "txt" not in sample:
            raise CaptionDataError(f"{where}: no .txt caption member; members: {members}")
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise CaptionDataError(f"{where}: the .txt member is not UTF-8 text: {err}") from None
        if not caption:
            raise CaptionDataError(f"{where}: empty .txt caption")
        return self.transform(_open_rgb(io.BytesIO(sample[ext]), where)), caption

    def __iter__(self):
        info = get_worker_info()
        real = info.id if info is not None else 0
        logical = (real + self.skip) % self.workers
        shards = list(self.urls)
        random.Random(f"{self.seed}/{self.epoch}").shuffle(shards)
        shards = shards[self.rank::self.world_size][logical::self.workers]
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{logical}")
        skipped = len(range(logical, self.skip, self.workers))
        quota = len(range(logical, self.steps_per_epoch, self.workers)) - skipped
        stream = self._shuffled(self._samples(shards), rng)
        for _ in range(skipped * self.batch_size):
            next(stream)
        for _ in range(quota):
            yield self.batcher([self._decode(next(stream)) for _ in range(self.batch_size)])


def check_shards(spec: str, batch_size: int, num_samples: Optional[int] = None, world_size: int = 1,
                 workers: int = 0) -> Tuple[List[str], int]:
    """``(shard urls, samples per epoch)`` for a shard spec; :class:`CaptionDataError` when shards are missing,
    too few for the workers, of unknown size, or smaller than one global batch."""
    urls = _expand(spec)
    remote = re.compile(r"^[a-zA-Z][\w+.-]*:")
    missing = [u for u in urls if not remote.match(u) and not os.path.isfile(u)]
    if missing:
        raise CaptionDataError(f"webdataset shard(s) not found: {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                               "(--train-data)")
    if len(urls) < world_size * max(1, workers):
        raise CaptionDataError(f"{len(urls)} webdataset shard(s) for {max(1, workers)} workers x {world_size} "
                               "processes; every worker needs a shard (lower --workers)")
    num_samples = num_samples or shard_sample_count(urls)
    if not num_samples:
        raise CaptionDataError(f"{urls[0]}: no sizes.json next to the shards; pass --train-num-samples")
    if num_samples < batch_size * world_size:
        raise CaptionDataError(f"{spec}: {num_samples} samples, fewer than one global batch "
                               f"(--batch-size {batch_size} x {world_size} processes)")
    return urls, num_samples


class CaptionShardLoader:
    """Batches from webdataset shards; ``steps_per_epoch`` = samples // global batch."""

    def __init__(self, spec: str, transform: Callable, batcher: CaptionBatcher, batch_size: int,
                 num_samples: Optional[int] = None, world_size: int = 1, rank: int = 0, seed: int = 0,
                 workers: int = 0):
        urls, self.num_samples = check_shards(spec, batch_size, num_samples, world_size, workers)
        self.steps_per_epoch = self.num_samples // (batch_size * world_size)
        self.stream = _ShardStream(urls, transform, batcher, batch_size, self.steps_per_epoch, world_size, rank,
                                   seed, workers)
        self.loader = DataLoader(self.stream, batch_size=None, num_workers=workers,
                                 pin_memory=torch.cuda.is_available())

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.stream.epoch, self.stream.skip = epoch, skip_batches

    def __iter__(self):
        try:
            yield from self.loader
        except CaptionDataError as err:
            raise _unwrap_worker_error(err) from None
