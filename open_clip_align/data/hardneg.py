"""Hard-negative training data: samples ``(image [3,H,W], tokens LongTensor [1+K, L])``.

Row 0 of ``tokens`` is the positive caption, rows 1..K its hard negatives (all-zero rows are padding).
Batches are 2-tuples ``(images [B,3,H,W], texts [B,1+K,L])``, so open_clip_train's ``images, texts = batch``
works unchanged. Formats (``--hardneg-format``): ``csv`` (CSV/TSV with a list-literal column, NegCLIP style),
``degla-json`` (one JSON array of objects), ``jsonl`` (one object per line) and ``wds`` (webdataset shards
whose ``.json`` member carries the negatives).

csv/json/jsonl are validated eagerly, so bad data stops training before it starts; every problem raises
``HardNegDataError`` naming the file, the row as the user sees it, and the problem. Images that turn out
to be corrupt are found when loaded. With ``--hardneg-skip-bad-images`` missing images are dropped at
construction and unreadable ones are skipped while loading; a process-shared counter collects the skips
and the loader logs their number in the main process at the end of each epoch.
"""
import ast
import io
import json
import logging
import math
import os
import random
import re
import warnings
from dataclasses import dataclass
from multiprocessing import Value
from typing import Iterator, List, NoReturn, Optional, Sequence, Tuple

import pandas as pd
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from open_clip_train.data import DataInfo, ResampledShards2, SharedEpoch, detshuffle2, expand_urls

__all__ = [
    "HardNegDataError",
    "HardNegDataLoader",
    "HardNegDataset",
    "HardNegRecord",
    "HardNegSelector",
    "SkipCounter",
    "get_hardneg_train_data",
    "load_hardneg_records",
]

FORMATS = ("csv", "degla-json", "jsonl", "wds")
WDS_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Same buffer sizes as open_clip_train's get_wds_dataset.
_SHARD_SHUFFLE_SIZE, _SHARD_SHUFFLE_INITIAL = 2000, 500
_SAMPLE_SHUFFLE_SIZE, _SAMPLE_SHUFFLE_INITIAL = 5000, 1000


class HardNegDataError(ValueError):
    """Bad hard-negative training data; the message names the file, the row and the problem."""


class _SkippableSample(Exception):
    """A sample whose image (or, for wds, image/caption/negatives) is missing or unreadable."""


def _fail(where: str, problem: str) -> NoReturn:
    raise HardNegDataError(f"{where}: {problem}")


def _json_type(value) -> str:
    """JSON name of a parsed value's type, for messages."""
    names = {bool: "boolean", dict: "object", list: "array", str: "string", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class HardNegRecord:
    """One validated row: resolved image path, positive caption, all its negatives, where it came from."""
    image: str
    caption: str
    negatives: Tuple[str, ...]
    where: str  # "<file>, line N" / "<file>, entry N (image ...)"


@dataclass(frozen=True)
class HardNegSelector:
    """Chooses K of a row's negatives: the first K in order, or K distinct ones drawn at random.

    Random draws are seeded by (seed, epoch, row id), so they are reproducible whatever the worker layout.
    A row with fewer than K negatives: ``fill='replace'`` appends draws with replacement; ``fill='pad'``
    returns the available ones only (the caller pads with zero rows); ``fill='error'`` is rejected by
    :meth:`problem` during validation.
    """
    k: int
    sampling: str = "first"
    fill: str = "error"
    seed: int = 0

    def problem(self, negatives, key: str) -> Optional[str]:
        """Why ``negatives`` (a parsed field ``key``) is unusable, or None."""
        if not isinstance(negatives, list):
            return f"{key!r} must be a list of strings, got {_json_type(negatives)}"
        for i, neg in enumerate(negatives, 1):
            if not isinstance(neg, str):
                return f"item {i} of {key!r} is a {_json_type(neg)}, expected a string"
            if not neg.strip():
                return f"item {i} of {key!r} is an empty string"
        if self.fill == "error" and len(negatives) < self.k:
            return (f"{key!r} has {len(negatives)} negatives, fewer than --num-hardneg {self.k} "
                    f"(--hardneg-fill replace or pad allows this)")
        if self.fill == "replace" and not negatives:
            return f"{key!r} has no negatives to sample from (--hardneg-fill replace needs one; use pad)"
        return None

    def select(self, negatives: Sequence[str], epoch: int, ident) -> List[str]:
        """K negatives (fewer only with fill='pad') for row ``ident`` in ``epoch``."""
        rng = random.Random(f"{self.seed}/{epoch}/{ident}")
        if self.sampling == "random":
            chosen = rng.sample(list(negatives), min(self.k, len(negatives)))
        else:
            chosen = list(negatives[:self.k])
        if self.fill == "replace" and len(chosen) < self.k:
            chosen += rng.choices(list(negatives), k=self.k - len(chosen))
        return chosen


def _encode(tokenizer, caption: str, negatives: Sequence[str], k: int) -> torch.Tensor:
    """Tokenize ``[caption, *negatives]`` in one call -> LongTensor [1+K, L]; missing negatives stay 0."""
    tokens = tokenizer([caption, *negatives])
    out = tokens.new_zeros((1 + k, tokens.shape[-1]))
    out[:tokens.shape[0]] = tokens
    return out


def _open_rgb(source) -> Image.Image:
    """Fully decoded RGB image from a path or file object; raises _SkippableSample if unreadable."""
    try:
        with Image.open(source) as img:
            return img.convert("RGB")
    except _IMAGE_ERRORS as e:
        raise _SkippableSample(f"cannot read image: {type(e).__name__}: {e}") from None


def _collate(batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(image [3,H,W], tokens [1+K,L])] * B -> (images [B,3,H,W], texts [B,1+K,L])."""
    images, texts = zip(*batch)
    return torch.stack(images), torch.stack(texts)


class SkipCounter:
    """Count of skipped samples shared by DataLoader workers (which add) and the main process (which pops)."""

    def __init__(self):
        self._value = Value("i", 0)

    def add(self, n: int = 1):
        with self._value.get_lock():
            self._value.value += n

    def pop(self) -> int:
        """Return the count and reset it to 0."""
        with self._value.get_lock():
            n, self._value.value = self._value.value, 0
        return n


# ----------------------------------------------------------------------------- map-style (csv/json/jsonl)

def _parse_list_literal(where: str, key: str, text: str):
    """Parse a Python list literal (or JSON list) cell; type checks are left to HardNegSelector.problem."""
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    _fail(where, f"column {key!r} is not a list literal like ['neg 1', 'neg 2']: {_short(text)}")


def _read_csv(path: str, keys: Tuple[str, str, str], args) -> Iterator[tuple]:
    """Yield ``(where, image, caption, negatives)`` per non-blank row; ``where`` counts the header as line 1."""
    sep = args.csv_separator
    try:
        with warnings.catch_warnings():  # more fields than the header: an error, not a silent re-indexing
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                             index_col=False)
    except pd.errors.EmptyDataError:
        _fail(path, "the file is empty")
    except pd.errors.ParserWarning:
        _fail(path, f"the first data row has more fields than the header (separator {sep!r})")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        _fail(path, f"cannot parse as CSV/TSV with separator {sep!r}: {str(e).strip()}")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        _fail(path, f"missing column(s) {missing}; available columns: {list(df.columns)} "
                    f"(read with --csv-separator {sep!r}; see --csv-img-key/--csv-caption-key/--csv-hardneg-key)")
    blank = df.apply(lambda col: col.str.strip() == "").all(axis=1)
    image_key, caption_key, hardneg_key = keys
    for i, (is_blank, image, caption, negatives) in enumerate(
            zip(blank, df[image_key], df[caption_key], df[hardneg_key])):
        if not is_blank:
            where = f"{path}, line {i + 2}"
            yield where, image, caption, _parse_list_literal(where, hardneg_key, negatives)


def _json_entry(where: str, entry, keys: Tuple[str, str, str], template: str) -> tuple:
    """Check one JSON object and format its image field -> ``(where, image, caption, negatives)``."""
    if not isinstance(entry, dict):
        _fail(where, f"expected a JSON object, got {_json_type(entry)}")
    missing = [k for k in keys if k not in entry]
    if missing:
        _fail(where, f"missing field(s) {missing}; available fields: {sorted(entry)} "
                     f"(see --json-image-key/--json-caption-key/--json-hardneg-key)")
    image_key, caption_key, hardneg_key = keys
    image = entry[image_key]
    where = f"{where} (image {image!r})"
    if isinstance(image, bool) or not isinstance(image, (str, int)):
        _fail(where, f"field {image_key!r} must be a path or an integer id, got {_json_type(image)}")
    try:
        path = template.format(image)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        _fail(where, f"--json-image-template {template!r} cannot format {image!r}: {type(e).__name__}: {e}")
    return where, path, entry[caption_key], entry[hardneg_key]


def _read_json(path: str, keys: Tuple[str, str, str], args) -> Iterator[tuple]:
    """Yield ``(where, image, caption, negatives)`` per entry of a JSON array (entries numbered from 1)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        _fail(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")
    except UnicodeDecodeError as e:
        _fail(path, f"not UTF-8 text: {e}")
    if not isinstance(data, list):
        _fail(path, f"expected a JSON array of objects, got {_json_type(data)} "
                    f"(one object per line is --hardneg-format jsonl)")
    for i, entry in enumerate(data, 1):
        yield _json_entry(f"{path}, entry {i}", entry, keys, args.json_image_template)


def _read_jsonl(path: str, keys: Tuple[str, str, str], args) -> Iterator[tuple]:
    """Yield ``(where, image, caption, negatives)`` per non-blank line of a JSON-lines file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        _fail(path, f"not UTF-8 text: {e}")
    for n, line in enumerate(lines, 1):
        if line.strip():
            where = f"{path}, line {n}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                _fail(where, f"invalid JSON at column {e.colno}: {e.msg}")
            yield _json_entry(where, entry, keys, args.json_image_template)


def _existing_images(records: List[HardNegRecord], skip: bool) -> List[HardNegRecord]:
    """Records whose image file exists; missing ones raise, or are dropped with a warning when ``skip``."""
    exists = [os.path.isfile(r.image) for r in records]
    missing = [r for r, ok in zip(records, exists) if not ok]
    if not missing:
        return records
    examples = "; ".join(f"{r.where}: {r.image}" for r in missing[:3]) + ("; ..." if len(missing) > 3 else "")
    if not skip:
        raise HardNegDataError(
            f"image file not found for {len(missing)} of {len(records)} rows: {examples}. "
            f"Check --hardneg-image-root, or pass --hardneg-skip-bad-images to skip these rows")
    logging.warning(f"Skipping {len(missing)} of {len(records)} rows whose image file is missing "
                    f"(--hardneg-skip-bad-images): {examples}")
    return [r for r, ok in zip(records, exists) if ok]


def load_hardneg_records(args, selector: HardNegSelector) -> List[HardNegRecord]:
    """Read and validate ``args.train_data`` (csv, degla-json or jsonl) into records; raises HardNegDataError."""
    path = args.train_data
    if not path:
        raise HardNegDataError(f"--hardneg-format {args.hardneg_format} needs --train-data")
    if not os.path.isfile(path):
        _fail(path, "train data file not found")
    if args.hardneg_format == "csv":
        keys, reader = (args.csv_img_key, args.csv_caption_key, args.csv_hardneg_key), _read_csv
    else:
        keys = (args.json_image_key, args.json_caption_key, args.json_hardneg_key)
        reader = _read_json if args.hardneg_format == "degla-json" else _read_jsonl
    root = args.hardneg_image_root or os.path.dirname(os.path.abspath(path))
    records = []
    for where, image, caption, negatives in reader(path, keys, args):
        if not image.strip():
            _fail(where, f"empty image path in {keys[0]!r}")
        if not isinstance(caption, str):
            _fail(where, f"positive caption {keys[1]!r} must be a string, got {_json_type(caption)}")
        if not caption.strip():
            _fail(where, f"empty positive caption in {keys[1]!r}")
        problem = selector.problem(negatives, keys[2])
        if problem:
            _fail(where, problem)
        records.append(HardNegRecord(os.path.join(root, image), caption, tuple(negatives), where))
    if not records:
        _fail(path, "no data rows")
    return _existing_images(records, args.hardneg_skip_bad_images)


class HardNegDataset(Dataset):
    """Map-style dataset over validated records; item -> (image [3,H,W], tokens LongTensor [1+K, L]).

    With ``skip_bad_images`` an unreadable image is counted in ``skipped`` and the sample is replaced by the
    next readable row, so batches keep their full size (DDP gathers need equal batch sizes on all ranks).
    """

    def __init__(self, records: Sequence[HardNegRecord], transform, tokenizer, selector: HardNegSelector,
                 epoch: int = 0, skip_bad_images: bool = False):
        self.records = list(records)
        self.transform = transform
        self.tokenizer = tokenizer
        self.selector = selector
        self.skip_bad_images = skip_bad_images
        self.shared_epoch = SharedEpoch(epoch)
        self.skipped = SkipCounter()
        self._unreadable = set()  # rows found unreadable by this process

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Row idx -> (image [3,H,W], tokens LongTensor [1+K, L]); a skipped row yields the next readable one."""
        n = len(self.records)
        for j in ((idx + offset) % n for offset in range(n)):
            image = self._image(j)
            if image is not None:
                record = self.records[j]
                negatives = self.selector.select(record.negatives, self.shared_epoch.get_value(), j)
                return self.transform(image), _encode(self.tokenizer, record.caption, negatives, self.selector.k)
            if j == idx:
                self.skipped.add()
        raise HardNegDataError(f"{self.records[idx].where}: no row of the train data has a readable image")

    def _image(self, j: int) -> Optional[Image.Image]:
        """RGB image of row j; None if it is unreadable and skipping is on, else HardNegDataError."""
        if j in self._unreadable:
            return None
        record = self.records[j]
        try:
            return _open_rgb(record.image)
        except _SkippableSample as e:
            message = f"{record.where}: {e} ({record.image})"
            if not self.skip_bad_images:
                raise HardNegDataError(message) from None
            logging.debug(f"Skipping sample: {message}")
            self._unreadable.add(j)
            return None


# ----------------------------------------------------------------------------- the loader

_WORKER_MARKER = f"{HardNegDataError.__module__}.{HardNegDataError.__qualname__}: "


class HardNegDataLoader(DataLoader):
    """DataLoader that logs each epoch's skipped-sample count and unwraps worker HardNegDataErrors.

    ``skipped`` is the SkipCounter the dataset's workers add to; it is reset when an epoch starts and
    logged (logging.warning, main process) when the epoch ends. A HardNegDataError raised in a worker
    reaches the main process wrapped in the worker's traceback text; it is re-raised with the original
    message only.
    """

    def __init__(self, *args, skipped: SkipCounter, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = skipped

    def __iter__(self):
        self.skipped.pop()
        try:
            yield from super().__iter__()
        except HardNegDataError as e:
            text = str(e)
            if "Original Traceback" not in text or _WORKER_MARKER not in text:
                raise
            raise HardNegDataError(text.rsplit(_WORKER_MARKER, 1)[1].rstrip()) from None
        n = self.skipped.pop()
        if n:
            logging.warning(f"Skipped {n} training sample(s) with a missing or unreadable image or field this "
                            f"epoch (--hardneg-skip-bad-images); run with --debug to log each one")


def _map_style_data(args, preprocess_fn, tokenizer, epoch: int, selector: HardNegSelector) -> DataInfo:
    dataset = HardNegDataset(load_hardneg_records(args, selector), preprocess_fn, tokenizer, selector,
                             epoch=epoch, skip_bad_images=args.hardneg_skip_bad_images)
    global_batch = args.batch_size * args.world_size
    if len(dataset) < global_batch:
        _fail(args.train_data, f"only {len(dataset)} usable rows, fewer than one global batch "
                               f"(--batch-size {args.batch_size} x {args.world_size} processes)")
    # also for one process: the order is a function of (seed, epoch), so a resumed run sees the same batches
    sampler = DistributedSampler(dataset, num_replicas=args.world_size, rank=args.rank, shuffle=True, seed=args.seed)
    dataloader = HardNegDataLoader(
        dataset,
        skipped=dataset.skipped,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=args.workers > 0,
        collate_fn=_collate,
    )
    dataloader.num_samples = len(dataset)
    dataloader.num_batches = len(dataloader)
    return DataInfo(dataloader, sampler, shared_epoch=dataset.shared_epoch)


# ----------------------------------------------------------------------------- webdataset

def _raise_shard_error(exn: Exception) -> NoReturn:
    """webdataset handler: a shard that cannot be opened or untarred stops training with a clear error."""
    details = ", ".join(str(a) for a in exn.args if a is not None)
    raise HardNegDataError(f"cannot read webdataset shard: {type(exn).__name__}: {details}") from None


class _WdsSamples:
    """Pipeline stage: raw webdataset samples -> (image [3,H,W], tokens LongTensor [1+K, L]).

    A sample lacking an image, caption or negatives, or with an undecodable image, raises HardNegDataError
    naming the shard and sample key, or is skipped and counted with ``skip``. Malformed negatives always raise.
    """

    def __init__(self, args, transform, tokenizer, selector: HardNegSelector, shared_epoch: SharedEpoch,
                 skipped: SkipCounter):
        self.caption_key, self.hardneg_key = args.json_caption_key, args.json_hardneg_key
        self.batch_size, self.skip = args.batch_size, args.hardneg_skip_bad_images
        self.transform, self.tokenizer, self.selector = transform, tokenizer, selector
        self.shared_epoch, self.skipped = shared_epoch, skipped

    def __call__(self, samples):
        produced, shards = 0, set()
        for sample in samples:
            shards.add(sample["__url__"])
            where = f"{sample['__url__']}, sample {sample['__key__']!r}"
            try:
                yield self._decode(sample, where)
                produced += 1
            except _SkippableSample as e:
                if not self.skip:
                    raise HardNegDataError(f"{where}: {e}") from None
                logging.debug(f"Skipping sample: {where}: {e}")
                self.skipped.add()
        if produced < self.batch_size:  # with_epoch would otherwise repeat this pass forever
            raise HardNegDataError(
                f"{', '.join(sorted(shards)) or 'no shard'}: one pass over this worker's shards gave {produced} "
                f"usable samples, fewer than --batch-size {self.batch_size}")

    def _decode(self, sample: dict, where: str):
        members = sorted(k for k in sample if not k.startswith("__"))
        meta = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError) as e:
                _fail(where, f"invalid JSON in the .json member: {e}")
            if not isinstance(meta, dict):
                _fail(where, f"the .json member must be an object, got {_json_type(meta)}")
        ext = next((e for e in WDS_IMAGE_EXTS if e in sample), None)
        if ext is None:
            raise _SkippableSample(f"no image member ({'/'.join(WDS_IMAGE_EXTS)}); members: {members}")
        if "txt" in sample:
            try:
                caption = sample["txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                _fail(where, f"the .txt member is not UTF-8 text: {e}")
        else:
            caption = meta.get(self.caption_key)
        if not isinstance(caption, str) or not caption.strip():
            raise _SkippableSample(f"no positive caption (a non-empty .txt member or .json field "
                                   f"{self.caption_key!r}); members: {members}")
        if self.hardneg_key not in meta:
            raise _SkippableSample(f"no negatives (.json field {self.hardneg_key!r}); members: {members}")
        problem = self.selector.problem(meta[self.hardneg_key], self.hardneg_key)
        if problem:
            _fail(where, problem)
        image = _open_rgb(io.BytesIO(sample[ext]))
        ident = f"{sample['__url__']}/{sample['__key__']}"
        negatives = self.selector.select(meta[self.hardneg_key], self.shared_epoch.get_value(), ident)
        return self.transform(image), _encode(self.tokenizer, caption, negatives, self.selector.k)


def _wds_data(args, preprocess_fn, tokenizer, epoch: int, selector: HardNegSelector) -> DataInfo:
    """Webdataset pipeline mirroring open_clip_train's get_wds_dataset (training path)."""
    if not args.train_data:
        raise HardNegDataError("--hardneg-format wds needs --train-data (brace-expanded shards, '::'-separated)")
    num_samples = args.train_num_samples
    if not num_samples:
        raise HardNegDataError("--hardneg-format wds needs --train-num-samples (samples per epoch)")
    urls = expand_urls(args.train_data)[0]
    missing = [u for u in urls if not re.match(r"^[a-zA-Z][\w+.-]*:", u) and not os.path.isfile(u)]
    if missing:
        raise HardNegDataError(f"webdataset shard(s) not found: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    resampled = getattr(args, "dataset_resampled", False)
    weights = getattr(args, "train_data_upsampling_factors", None)
    if weights is not None and not resampled:
        raise HardNegDataError("--train-data-upsampling-factors needs --dataset-resampled (as upstream)")
    shared_epoch = SharedEpoch(epoch)
    skipped = SkipCounter()
    if resampled:
        pipeline = [ResampledShards2(args.train_data, weights=weights, deterministic=True, epoch=shared_epoch)]
    else:
        if len(urls) < args.workers * args.world_size:
            raise HardNegDataError(
                f"{len(urls)} webdataset shard(s) for {args.workers} workers x {args.world_size} processes; "
                f"every worker needs at least one shard (lower --workers or pass --dataset-resampled)")
        pipeline = [
            wds.SimpleShardList(urls),
            detshuffle2(bufsize=_SHARD_SHUFFLE_SIZE, initial=_SHARD_SHUFFLE_INITIAL, seed=args.seed,
                        epoch=shared_epoch),
            wds.split_by_node,
            wds.split_by_worker,
        ]
    pipeline += [
        wds.tarfile_to_samples(handler=_raise_shard_error),
        wds.shuffle(bufsize=_SAMPLE_SHUFFLE_SIZE, initial=_SAMPLE_SHUFFLE_INITIAL),
        _WdsSamples(args, preprocess_fn, tokenizer, selector, shared_epoch, skipped),
        wds.batched(args.batch_size, collation_fn=_collate, partial=False),
    ]
    # Round up so every worker yields the same number of full batches, as upstream does.
    global_batch = args.batch_size * args.world_size
    num_workers = max(1, args.workers)
    num_worker_batches = math.ceil(math.ceil(num_samples / global_batch) / num_workers)
    num_batches = num_worker_batches * num_workers
    dataset = wds.DataPipeline(*pipeline).with_epoch(num_worker_batches)
    dataloader = HardNegDataLoader(dataset, skipped=skipped, batch_size=None, shuffle=False,
                                   num_workers=args.workers, persistent_workers=args.workers > 0)
    dataloader.num_batches = num_batches
    dataloader.num_samples = num_batches * global_batch
    return DataInfo(dataloader, shared_epoch=shared_epoch)


# ----------------------------------------------------------------------------- entry point

def get_hardneg_train_data(args, preprocess_fn, tokenizer, epoch: int = 0) -> DataInfo:
    """The ``train`` DataInfo for ``--hardneg-format`` != none.

    Batches are ``(images [B,3,H,W], texts LongTensor [B,1+K,L])``; ``dataloader.num_samples`` and
    ``dataloader.num_batches`` are set. ``tokenizer`` maps list[str] -> LongTensor [n, L].
    Raises HardNegDataError for bad flags or data (csv/json/jsonl are checked here, before training).
    """
    if args.hardneg_format not in FORMATS:
        raise HardNegDataError(f"--hardneg-format {args.hardneg_format!r} is not a hard-negative format; "
                               f"expected one of {list(FORMATS)}")
    if args.num_hardneg < 1:
        raise HardNegDataError(f"--num-hardneg must be at least 1, got {args.num_hardneg}")
    selector = HardNegSelector(
        k=args.num_hardneg,
        sampling=args.hardneg_sampling or ("random" if args.hardneg_format == "csv" else "first"),
        fill=args.hardneg_fill,
        seed=args.seed,
    )
    if args.hardneg_format == "wds":
        return _wds_data(args, preprocess_fn, tokenizer, epoch, selector)
    return _map_style_data(args, preprocess_fn, tokenizer, epoch, selector)
