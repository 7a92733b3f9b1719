"""Hard-negative training data: samples ``(image [3,H,W], tokens LongTensor [1+K, L])``.

Row 0 of ``tokens`` is the positive caption, rows 1..K its hard negatives (all-zero rows are padding or
invalid negatives, which the losses mask). Batches are 2-tuples ``(images [B,3,H,W], texts [B,1+K,L])``, so
open_clip_train's ``images, texts = batch`` works unchanged. Formats (``--hardneg-format``): ``csv`` (CSV/TSV
with a list-literal column, NegCLIP style), ``degla-json`` (one JSON array of objects), ``jsonl`` (one object
per line), ``wds`` (webdataset shards whose ``.json`` member carries the negatives) and ``ceclip-npy``
(CE-CLIP's pickled ``.npy`` lists of dicts, K = 4 typed negatives with a validity mask).

NegCLIP's hard-negative *images* (``--csv-hardimg-key``): each sample also draws one of its row's
nearest-neighbour rows and brings that row's image, caption and negatives, so a sample is
``(images [2,3,H,W], tokens [2,1+K,L])`` (index 0 the sample, 1 its hard image) and batches are
``(images [B,2,3,H,W], texts [B,2,1+K,L])``; ``HardNegCLIP`` encodes both halves.

Reading the files is ``data/formats.py``'s (the one owner of the formats); this module checks the rows against
the flags, picks the negatives and builds samples and loaders. Every caption of map-style data is tokenized once
when the dataset is built (``data/caption_tokens.py``), so an access costs about what ``CsvDataset``'s does.

csv/json/jsonl/ceclip-npy are validated eagerly, so bad data stops training before it starts; every problem
raises ``HardNegDataError`` naming the file, the row as the user sees it, and the problem. Images that turn
out to be corrupt are found when loaded. With ``--hardneg-skip-bad-images`` missing images are dropped at
construction and unreadable ones are skipped while loading; a process-shared counter collects the skips
and the loader logs their number in the main process at the end of each epoch.
"""
import dataclasses
import io
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from multiprocessing import Value
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from open_clip_train.data import DataInfo, ResampledShards2, SharedEpoch, detshuffle2, expand_urls

from .caption_tokens import CachedTokenizer, PretokenizedCaptions
from .formats import (CECLIP_NEGATIVE_KEYS, HardNegDataError, MissingMember, fail, json_type, read_ceclip_npy,
                      read_csv, read_degla_json, read_jsonl, shown, wds_fields)

__all__ = [
    "HardNegDataError",
    "HardNegDataLoader",
    "HardNegDataset",
    "HardNegRecord",
    "HardNegSelector",
    "SkipCounter",
    "get_hardneg_train_data",
    "hardneg_flag_error",
    "load_hardneg_records",
]

FORMATS = ("csv", "degla-json", "jsonl", "wds", "ceclip-npy")
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Same buffer sizes as open_clip_train's get_wds_dataset.
_SHARD_SHUFFLE_SIZE, _SHARD_SHUFFLE_INITIAL = 2000, 500
_SAMPLE_SHUFFLE_SIZE, _SAMPLE_SHUFFLE_INITIAL = 5000, 1000


class _SkippableSample(Exception):
    """An image that cannot be read (with --hardneg-skip-bad-images its sample is skipped)."""


@dataclass(frozen=True)
class HardNegRecord:
    """One validated row: resolved image path, positive caption, all its negatives, where it came from.

    A None negative is an invalid one (CE-CLIP's ``valid_caption`` 0): it becomes an all-zero token row.
    ``hard_images`` are the record indices of its hard-negative images (``--csv-hardimg-key``), else empty.
    """
    image: str
    caption: str
    negatives: Tuple[Optional[str], ...]
    where: str  # "<file>, line N" / "<file>, entry N (image ...)"
    hard_images: Tuple[int, ...] = ()


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
            return f"{key!r} must be a list of strings, got {json_type(negatives)}"
        for i, neg in enumerate(negatives, 1):
            if not isinstance(neg, str):
                return f"item {i} of {key!r} is a {json_type(neg)}, expected a string"
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


def _open_rgb(source) -> Image.Image:
    """Fully decoded RGB image from a path or file object; raises _SkippableSample if unreadable."""
    try:
        with Image.open(source) as img:
            return img.convert("RGB")
    except _IMAGE_ERRORS as e:
        raise _SkippableSample(f"cannot read image: {type(e).__name__}: {e}") from None


def _collate(batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(image [3,H,W], tokens [1+K,L])] * B -> (images [B,3,H,W], texts [B,1+K,L]); with hard-negative
    images [(images [2,3,H,W], tokens [2,1+K,L])] * B -> ([B,2,3,H,W], [B,2,1+K,L])."""
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


# ----------------------------------------------------------------------------- map-style (csv/json/jsonl/ceclip-npy)

def _csv_image_rebaser(spec: str, images: Sequence[str], path: str) -> Callable[[str, str], str]:
    """``--csv-img-root`` for absolute image paths written on another machine (NegCLIP's TSV).

    ``NEW``: the longest directory every absolute path shares is replaced by NEW (``/x/coco/train2014/a.jpg``
    and ``/x/coco/val2014/b.jpg`` become ``NEW/train2014/a.jpg`` and ``NEW/val2014/b.jpg``). ``OLD=NEW``: the
    prefix OLD is replaced by NEW; an absolute path outside OLD is an error naming its row. A relative NEW is
    taken from the working directory. Relative paths in the file are left alone (they resolve against
    --hardneg-image-root or the file's folder). Returns ``rebase(image, where) -> image``.
    """
    absolute = [os.path.normpath(i) for i in images if os.path.isabs(i)]
    if not absolute:
        fail(path, f"--csv-img-root {spec!r} rebases absolute image paths, but this file has none (relative "
                   f"paths resolve against --hardneg-image-root)")
    if "=" in spec:
        old, new = spec.split("=", 1)
        if not os.path.isabs(old) or not new:
            fail(path, f"--csv-img-root OLD=NEW needs an absolute prefix OLD and a root NEW, got {spec!r}")
        old = os.path.normpath(old)
    else:
        old, new = os.path.commonpath([os.path.dirname(i) for i in absolute]), spec
        if os.path.dirname(old) == old:  # the filesystem root: the paths share no directory
            top = absolute[0].split(os.sep)[1]
            other = next(i for i in absolute if i.split(os.sep)[1] != top)
            fail(path, f"--csv-img-root {spec!r}: the absolute image paths share no directory (e.g. "
                       f"{absolute[0]!r} and {other!r}); say which prefix to replace with --csv-img-root OLD=NEW")
    new = os.path.abspath(new)
    logging.info(f"--csv-img-root: absolute image paths under {old} resolve under {new}")

    def rebase(image: str, where: str) -> str:
        if not os.path.isabs(image):
            return image
        rel = os.path.relpath(os.path.normpath(image), old)
        if rel == os.curdir or rel.split(os.sep, 1)[0] == os.pardir:
            fail(where, f"image path {image!r} is not under {old!r} (--csv-img-root {spec!r})")
        return os.path.join(new, rel)

    return rebase


def _hard_image_rows(where: str, key: str, value, n_rows: int) -> Tuple[int, ...]:
    """Check a parsed ``--csv-hardimg-key`` cell: a non-empty list of 0-based data-row indices."""
    if not isinstance(value, list) or not value:
        fail(where, f"{key!r} must be a non-empty list of row indices like [12, 7], got {shown(value)}")
    for i, row in enumerate(value, 1):
        if isinstance(row, bool) or not isinstance(row, int):
            fail(where, f"item {i} of {key!r} is a {json_type(row)}, expected a row index")
        if not 0 <= row < n_rows:
            fail(where, f"item {i} of {key!r} is row {row}, outside the file's {n_rows} data rows "
                        f"(0 is the first row after the header)")
    return tuple(value)


def _keep_records(records: List[HardNegRecord], keep: List[bool]) -> List[HardNegRecord]:
    """The records marked in ``keep``, hard-image indices renumbered. A row whose hard-negative images were
    all dropped is dropped too (repeatedly: dropping it can strand another row)."""
    keep = list(keep)
    changed = True
    while changed:
        changed = False
        for i, r in enumerate(records):
            if keep[i] and r.hard_images and not any(keep[h] for h in r.hard_images):
                keep[i], changed = False, True
    index = {old: new for new, old in enumerate(i for i, k in enumerate(keep) if k)}
    return [dataclasses.replace(r, hard_images=tuple(index[h] for h in r.hard_images if h in index))
            for r, k in zip(records, keep) if k]


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
    kept = _keep_records(records, exists)
    stranded = len(records) - len(missing) - len(kept)
    if stranded:
        logging.warning(f"Skipping {stranded} more rows whose every hard-negative image is missing")
    return kept


_EXPECTED_INPUT = {"csv": "a CSV/TSV file", "degla-json": "a JSON file holding one array of objects",
                   "jsonl": "a JSON-lines file", "wds": "webdataset shard files, e.g. 'shards/{000000..000099}.tar'"}


def _check_train_path(path: str, fmt: str) -> None:
    """A missing ``--train-data``, or a directory where a file is expected, stops with what was expected."""
    if fmt == "ceclip-npy":
        if not os.path.exists(path):
            fail(path, "not found (--hardneg-format ceclip-npy expects CE-CLIP's directory of .npy files, or one "
                       ".npy file)")
    elif os.path.isdir(path):
        fail(path, f"is a directory; --hardneg-format {fmt} expects {_EXPECTED_INPUT[fmt]} as --train-data "
                   f"(only --hardneg-format ceclip-npy reads a directory)")
    elif not os.path.isfile(path):
        fail(path, "train data file not found")


def load_hardneg_records(args, selector: HardNegSelector) -> List[HardNegRecord]:
    """Read and validate ``args.train_data`` (csv, degla-json, jsonl or ceclip-npy) into records; raises
    HardNegDataError."""
    path, fmt = args.train_data, args.hardneg_format
    if not path:
        raise HardNegDataError(f"--hardneg-format {fmt} needs --train-data")
    _check_train_path(path, fmt)
    hardimg_key = args.csv_hardimg_key if fmt == "csv" else None
    if fmt == "csv":
        keys = (args.csv_img_key, args.csv_caption_key, args.csv_hardneg_key) + ((hardimg_key,) if hardimg_key else ())
        rows = list(read_csv(path, keys, args.csv_separator))
    elif fmt == "ceclip-npy":
        if not args.trust_pickled_data:
            fail(path, "--hardneg-format ceclip-npy unpickles these .npy files, and unpickling can run any code "
                       "stored in them; pass --trust-pickled-data if you trust their source (e.g. CE-CLIP's release)")
        keys = ("image_id", "caption", "valid_caption")
        rows = list(read_ceclip_npy(path, args.npy_image_template))
    else:
        keys = (args.json_image_key, args.json_caption_key, args.json_hardneg_key)
        rows = list((read_degla_json if fmt == "degla-json" else read_jsonl)(path, keys, args.json_image_template))
    if not rows:
        fail(path, "no data rows")
    root = args.hardneg_image_root or (path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    rebase = _csv_image_rebaser(args.csv_img_root, [r[1] for r in rows], path) if fmt == "csv" and args.csv_img_root \
        else None
    records = []
    for where, image, caption, negatives, hard in rows:
        if not image.strip():
            fail(where, f"empty image path in {keys[0]!r}")
        if not isinstance(caption, str):
            fail(where, f"positive caption {keys[1]!r} must be a string, got {json_type(caption)}")
        if not caption.strip():
            fail(where, f"empty positive caption in {keys[1]!r}")
        if fmt != "ceclip-npy":  # ceclip-npy negatives are checked against their valid_caption mask when read
            problem = selector.problem(negatives, keys[2])
            if problem:
                fail(where, problem)
        if rebase is not None:
            image = rebase(image, where)
        hard_images = _hard_image_rows(where, hardimg_key, hard, len(rows)) if hardimg_key else ()
        records.append(HardNegRecord(os.path.join(root, image), caption, tuple(negatives), where, hard_images))
    return _existing_images(records, args.hardneg_skip_bad_images)


class HardNegDataset(Dataset):
    """Map-style dataset over validated records; item -> (image [3,H,W], tokens LongTensor [1+K, L]), or with
    hard-negative images (records with ``hard_images``) -> (images [2,3,H,W], tokens [2,1+K,L]).

    A hard-negative image is one of the record's ``hard_images`` rows drawn at random, seeded by (seed, epoch,
    row) like the negatives; it brings that row's image, caption and K of its negatives. With
    ``skip_bad_images`` an unreadable image is counted in ``skipped`` and the sample is replaced by the next
    readable row (an unreadable hard image by another of the row's candidates), so batches keep their full
    size (DDP gathers need equal batch sizes on all ranks). Token rows come from ``captions``
    (:class:`PretokenizedCaptions`), identical to calling ``tokenizer`` on ``[caption, *negatives]``.
    """

    def __init__(self, records: Sequence[HardNegRecord], transform, tokenizer, selector: HardNegSelector,
                 epoch: int = 0, skip_bad_images: bool = False, progress: bool = False, workers: int = 0):
        self.records = list(records)
        self.transform = transform
        # every caption and negative tokenized once, here, by ``workers`` processes (a progress bar on big data)
        self.captions = PretokenizedCaptions(
            tokenizer, (text for r in self.records for text in (r.caption, *r.negatives) if text is not None),
            progress, workers)
        self.selector = selector
        self.skip_bad_images = skip_bad_images
        self.shared_epoch = SharedEpoch(epoch)
        self.skipped = SkipCounter()
        self._unreadable = set()  # rows found unreadable by this process

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Row idx -> (image, tokens) as above; a skipped row yields the next readable one."""
        n = len(self.records)
        for j in ((idx + offset) % n for offset in range(n)):
            sample = self._sample(j)
            if sample is not None:
                return sample
            if j == idx:
                self.skipped.add()
        raise HardNegDataError(f"{self.records[idx].where}: no row of the train data has a readable image")

    def _sample(self, j: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Row j's (image [3,H,W], tokens [1+K,L]), or with hard images ([2,3,H,W], [2,1+K,L]); None if skipped."""
        image = self._image(j)
        if image is None:
            return None
        record, epoch = self.records[j], self.shared_epoch.get_value()
        tokens = self.captions.encode(record.caption, self.selector.select(record.negatives, epoch, j),
                                      self.selector.k)
        if not record.hard_images:
            return self.transform(image), tokens
        order = list(record.hard_images)
        random.Random(f"{self.selector.seed}/{epoch}/{j}/hard").shuffle(order)
        for h in order:
            hard_image = self._image(h, of=record)
            if hard_image is not None:
                hard = self.records[h]
                hard_tokens = self.captions.encode(
                    hard.caption, self.selector.select(hard.negatives, epoch, f"{j}/hard/{h}"), self.selector.k)
                return (torch.stack([self.transform(image), self.transform(hard_image)]),
                        torch.stack([tokens, hard_tokens]))
        return None

    def _image(self, j: int, of: Optional[HardNegRecord] = None) -> Optional[Image.Image]:
        """RGB image of row j (``of``: the row it is the hard-negative image of); None if it is unreadable and
        skipping is on, else HardNegDataError."""
        if j in self._unreadable:
            return None
        record = self.records[j]
        try:
            return _open_rgb(record.image)
        except _SkippableSample as e:
            role = f", the hard-negative image of {of.where}" if of is not None else ""
            message = f"{record.where}: {e} ({record.image}{role})"
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
                             epoch=epoch, skip_bad_images=args.hardneg_skip_bad_images, progress=args.rank == 0,
                             workers=args.workers)
    global_batch = args.batch_size * args.world_size
    if len(dataset) < global_batch:
        fail(args.train_data, f"only {len(dataset)} usable rows, fewer than one global batch "
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
    """Pipeline stage: raw webdataset samples -> (image [3,H,W], (caption, its K selected negatives)).

    A sample lacking an image, caption or negatives, or with an undecodable image, raises HardNegDataError
    naming the shard and sample key, or is skipped and counted with ``skip``. Malformed negatives always raise.
    """

    def __init__(self, args, transform, selector: HardNegSelector, shared_epoch: SharedEpoch, skipped: SkipCounter):
        self.caption_key, self.hardneg_key = args.json_caption_key, args.json_hardneg_key
        self.batch_size, self.skip = args.batch_size, args.hardneg_skip_bad_images
        self.transform, self.selector = transform, selector
        self.shared_epoch, self.skipped = shared_epoch, skipped

    def __call__(self, samples):
        produced, shards = 0, set()
        for sample in samples:
            shards.add(sample["__url__"])
            where = f"{sample['__url__']}, sample {sample['__key__']!r}"
            try:
                yield self._decode(sample, where)
                produced += 1
            except (MissingMember, _SkippableSample) as e:
                if not self.skip:
                    raise HardNegDataError(f"{where}: {e}") from None
                logging.debug(f"Skipping sample: {where}: {e}")
                self.skipped.add()
        if produced < self.batch_size:  # with_epoch would otherwise repeat this pass forever
            raise HardNegDataError(
                f"{', '.join(sorted(shards)) or 'no shard'}: one pass over this worker's shards gave {produced} "
                f"usable samples, fewer than --batch-size {self.batch_size}")

    def _decode(self, sample: dict, where: str):
        image, caption, negatives = wds_fields(sample, where, self.caption_key, self.hardneg_key)
        problem = self.selector.problem(negatives, self.hardneg_key)
        if problem:
            fail(where, problem)
        image = _open_rgb(io.BytesIO(image))
        ident = f"{sample['__url__']}/{sample['__key__']}"
        return self.transform(image), (caption, self.selector.select(negatives, self.shared_epoch.get_value(), ident))


class _WdsBatch:
    """Collation: [(image [3,H,W], (caption, negatives))] * B -> (images [B,3,H,W], texts LongTensor [B,1+K,L]).

    The batch's captions go through a :class:`CachedTokenizer` (a copy per worker): the ones not cached are
    tokenized in one call, and captions that recur are tokenized once.
    """

    def __init__(self, tokenizer, k: int):
        self.captions, self.k = CachedTokenizer(tokenizer), k

    def __call__(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        images, texts = zip(*batch)
        return torch.stack(images), self.captions.encode_batch(texts, self.k)


_TAR_BLOCK = 512


def _truncated_shard(path: str) -> Optional[str]:
    """Why a local tar shard is truncated, or None.

    A tar archive ends with two zero blocks after its last member and is a whole number of 512-byte blocks.
    Python's tarfile (so webdataset) reads a shard cut at or inside a member header as a shorter shard
    without any error, and ``with_epoch`` would fill the epoch by repeating the samples it has; so the end
    is checked here instead. Only uncompressed POSIX (ustar/GNU/pax) tars are checked; compressed shards
    raise their own error when cut. (Members ending in 1 KiB of zero bytes could hide a cut; images, text and
    JSON do not.)
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_TAR_BLOCK)
        if head[257:262] != b"ustar":  # not an uncompressed POSIX tar: nothing to check here
            return None
        if size % _TAR_BLOCK:
            return f"{size} bytes is not a whole number of {_TAR_BLOCK}-byte tar blocks"
        f.seek(max(0, size - 2 * _TAR_BLOCK))
        tail = f.read()
    if len(tail) < 2 * _TAR_BLOCK or tail.count(0) != len(tail):
        return "it does not end with tar's end-of-archive blocks"
    return None


def _wds_data(args, preprocess_fn, tokenizer, epoch: int, selector: HardNegSelector) -> DataInfo:
    """Webdataset pipeline mirroring open_clip_train's get_wds_dataset (training path)."""
    if not args.train_data:
        raise HardNegDataError("--hardneg-format wds needs --train-data (brace-expanded shards, '::'-separated)")
    num_samples = args.train_num_samples
    if not num_samples:
        raise HardNegDataError("--hardneg-format wds needs --train-num-samples (samples per epoch)")
    urls = expand_urls(args.train_data)[0]
    local = [u for u in urls if not re.match(r"^[a-zA-Z][\w+.-]*:", u)]
    folders = [u for u in local if os.path.isdir(u)]
    if folders:
        fail(folders[0], f"is a directory; --hardneg-format wds expects {_EXPECTED_INPUT['wds']} as --train-data")
    missing = [u for u in local if not os.path.isfile(u)]
    if missing:
        raise HardNegDataError(f"webdataset shard(s) not found: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    for url in local:
        problem = _truncated_shard(url)
        if problem:
            fail(url, f"truncated webdataset shard: {problem} (an interrupted copy or write?); it would be read "
                      f"as a shorter shard without error. Re-create or re-copy it, or leave it out of --train-data")
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
        _WdsSamples(args, preprocess_fn, selector, shared_epoch, skipped),
        wds.batched(args.batch_size, collation_fn=_WdsBatch(tokenizer, selector.k), partial=False),
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

def hardneg_flag_error(args) -> Optional[str]:
    """A one-line refusal for hard-negative flags that ``--hardneg-format`` would ignore, or None.

    ``args`` needs ``hardneg_format`` and the plugin's hard-negative flags (the pre-parser's namespace is
    enough, so this can run before any data is read).
    """
    fmt = args.hardneg_format
    only = (("--csv-hardimg-key", args.csv_hardimg_key, "csv"), ("--csv-img-root", args.csv_img_root, "csv"),
            ("--trust-pickled-data", args.trust_pickled_data or None, "ceclip-npy"),
            ("--npy-image-template", args.npy_image_template, "ceclip-npy"))
    for flag, value, needed in only:
        if value is not None and fmt != needed:
            return f"{flag} applies to --hardneg-format {needed} only (got --hardneg-format {fmt})"
    if fmt == "ceclip-npy":
        if args.num_hardneg != len(CECLIP_NEGATIVE_KEYS):
            return (f"--hardneg-format ceclip-npy has {len(CECLIP_NEGATIVE_KEYS)} negatives per caption (relation, "
                    f"adjective, noun, verb); --num-hardneg must be {len(CECLIP_NEGATIVE_KEYS)}, "
                    f"got {args.num_hardneg}")
        if args.hardneg_sampling == "random":
            return ("--hardneg-format ceclip-npy keeps each negative type in its slot (CE-CLIP's rank loss has one "
                    "margin per type); --hardneg-sampling random is not supported")
        if args.hardneg_fill == "replace":
            return ("--hardneg-format ceclip-npy masks the negatives its valid_caption marks invalid (empty token "
                    "rows); --hardneg-fill replace is not supported")
    return None


def get_hardneg_train_data(args, preprocess_fn, tokenizer, epoch: int = 0) -> DataInfo:
    """The ``train`` DataInfo for ``--hardneg-format`` != none.

    Batches are ``(images [B,3,H,W], texts LongTensor [B,1+K,L])`` (with ``--csv-hardimg-key``
    ``([B,2,3,H,W], [B,2,1+K,L])``); ``dataloader.num_samples`` and ``dataloader.num_batches`` are set.
    ``tokenizer`` maps list[str] -> LongTensor [n, L]. Raises HardNegDataError for bad flags or data
    (csv/json/jsonl/ceclip-npy are checked here, before training; wds shards' presence and ends).
    """
    if args.hardneg_format not in FORMATS:
        raise HardNegDataError(f"--hardneg-format {args.hardneg_format!r} is not a hard-negative format; "
                               f"expected one of {list(FORMATS)}")
    if args.num_hardneg < 1:
        raise HardNegDataError(f"--num-hardneg must be at least 1, got {args.num_hardneg}")
    problem = hardneg_flag_error(args)
    if problem:
        raise HardNegDataError(problem)
    if args.hardneg_format == "ceclip-npy":
        # CE-CLIP's 4 typed negatives stay in their slots (CMR's margins are per slot); invalid ones are padding
        selector = HardNegSelector(k=args.num_hardneg, sampling="first", fill="pad", seed=args.seed)
    else:
        selector = HardNegSelector(
            k=args.num_hardneg,
            sampling=args.hardneg_sampling or ("random" if args.hardneg_format == "csv" else "first"),
            fill=args.hardneg_fill,
            seed=args.seed,
        )
    if args.hardneg_format == "wds":
        return _wds_data(args, preprocess_fn, tokenizer, epoch, selector)
    return _map_style_data(args, preprocess_fn, tokenizer, epoch, selector)
