"""Training data for ``--loss comalign`` in open_clip_train's loop (``--comalign-data features|images``).

Both kinds yield open_clip_train's ``(images, texts)`` batches in ``ComAlignCLIP``'s *component form*, one
caption per image per epoch (drawn from (seed, epoch, image), so a resumed run sees the same pairs):

* ``features`` (fast path): ``--train-data`` is a component store from ``python -m
  open_clip_align.comalign.embed``. images ``[B, Ne+Nr+1, d]`` (entity views, relation views, the unnormalised
  global), texts ``[B, 1+Ne+Nr, d]`` (caption, entity phrases, relation phrases); pads are zero rows. No image
  is decoded and no encoder runs: exact, since the encoders are frozen. With the store's row index each sample's
  rows are read from the file when asked for (nothing is loaded up front; each worker opens the file itself); a
  store without one is loaded whole first (``python -m open_clip_align.comalign.store index`` builds the index).
* ``images``: ``--train-data`` is a caption file (COCO captions JSON, Karpathy JSON, CSV/TSV). Per sample the
  boxes (``--comalign-boxes``) become views, the caption's spaCy components become token rows: images
  ``[B, Ne+Nr+1, 3, H, W]`` (all-zero pixels = pad), texts ``[B, 1+Ne+Nr, L]`` (all-zero rows = pad).
"""
import logging
import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
from open_clip_train.data import DataInfo, SharedEpoch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .annotations import ComAlignDataError, ImageCaptions, load_annotations
from .boxes import box_options, make_box_provider
from .embed import ViewDataset
from .slots import phrase_tokens, store_image_slots, store_text_slots
from .store import ComponentStore
from .text import ComponentParser, TextComponents


def draw_caption(n_captions: int, seed: int, epoch: int, index: int) -> int:
    """Which of an image's ``n_captions`` captions it is paired with this epoch (deterministic)."""
    return int(np.random.default_rng([seed, epoch, index]).integers(n_captions))


def _check_rows(n_captions: Sequence[int], where: str) -> None:
    empty = [i for i, n in enumerate(n_captions) if n == 0]
    if empty:
        raise ComAlignDataError(f"{where}: {len(empty)} image(s) have no caption (first: image {empty[0]}); every "
                                f"training image needs at least one")


class ComAlignFeatureDataset(Dataset):
    """Images of a component store; item -> (image slots [Ne+Nr+1, d], text slots [1+Ne+Nr, d]) float32.

    ``arrays``: ``ComponentStore.load_arrays()`` (in memory) or ``ComponentStore.rows()`` (read on access)."""

    def __init__(self, arrays: dict, seed: int = 0, epoch: int = 0, where: str = "component store"):
        self.arrays, self.seed = arrays, seed
        self.shared_epoch = SharedEpoch(epoch)
        owner = arrays["caption_image"]
        self.captions: List[List[int]] = [[] for _ in arrays["image_ids"]]
        for j, i in enumerate(owner.tolist()):
            self.captions[i].append(j)
        _check_rows([len(c) for c in self.captions], where)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        choices = self.captions[idx]
        j = choices[draw_caption(len(choices), self.seed, self.shared_epoch.get_value(), idx)]
        return store_image_slots(self.arrays, [idx])[0], store_text_slots(self.arrays, [j])[0]


class ComAlignImageDataset(Dataset):
    """Images + captions; item -> (views [Ne+Nr+1, 3, H, W], token rows [1+Ne+Nr, L]).

    Captions are parsed once here (spaCy); boxes and views are made per access, with the deterministic
    ``preprocess`` (views are not augmented, matching what a component store holds).
    """

    def __init__(self, records: Sequence[ImageCaptions], components: Sequence[Sequence[TextComponents]], provider,
                 preprocess, tokenizer, n_entity: int, n_relation: int, render: str = "grey",
                 letterbox: bool = False, seed: int = 0, epoch: int = 0):
        self.records, self.components, self.tokenizer = list(records), list(components), tokenizer
        self.n_entity, self.n_relation = n_entity, n_relation
        self.views = ViewDataset(self.records, provider, preprocess, n_entity, n_relation, render, letterbox)
        self.seed = seed
        self.shared_epoch = SharedEpoch(epoch)
        _check_rows([len(r.captions) for r in self.records], "--train-data")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        record = self.records[idx]
        views = self.views[idx]["views"]
        j = draw_caption(len(record.captions), self.seed, self.shared_epoch.get_value(), idx)
        tokens = phrase_tokens(self.tokenizer, record.captions[j], self.components[idx][j], self.n_entity,
                               self.n_relation)
        return views, tokens


def _slots(args) -> Tuple[int, int]:
    """(n_entity, n_relation) of the model's head config."""
    from ..models import plugin_block

    head = (plugin_block(args.model) or {}).get("head", {})
    return int(head.get("n_entity", 10)), int(head.get("n_relation", 10))


def _image_dataset(args, preprocess, tokenizer, epoch: int) -> ComAlignImageDataset:
    n_entity, n_relation = _slots(args)
    records = load_annotations(
        args.train_data, None if args.comalign_annotation_format == "auto" else args.comalign_annotation_format,
        image_root=args.comalign_image_root, max_captions=args.comalign_max_captions,
        img_key=args.csv_img_key, caption_key=args.csv_caption_key, separator=args.csv_separator)
    provider = make_box_provider(args.comalign_boxes, **box_options(args, "comalign-"))
    parser = ComponentParser(n_entity=n_entity, n_relation=n_relation)
    flat = parser.parse_many([c for r in records for c in r.captions])
    components, start = [], 0
    for r in records:
        components.append(flat[start:start + len(r.captions)])
        start += len(r.captions)
    return ComAlignImageDataset(records, components, provider, preprocess, tokenizer, n_entity, n_relation,
                                render=args.comalign_render, letterbox=args.comalign_letterbox, seed=args.seed,
                                epoch=epoch)


def _feature_dataset(args, epoch: int) -> ComAlignFeatureDataset:
    n_entity, n_relation = _slots(args)
    with ComponentStore(args.train_data) as store:
        attrs = store.attrs
        stored = (int(attrs.get("n_entity", -1)), int(attrs.get("n_relation", -1)))
        if stored != (n_entity, n_relation):
            raise ComAlignDataError(f"{args.train_data}: stored {stored[0]} entity / {stored[1]} relation slots, but "
                                    f"--model {args.model} has {n_entity} / {n_relation}")
        logging.info(f"ComAlign features from {args.train_data}: model {attrs.get('model')} "
                     f"({attrs.get('pretrained')}), boxes {attrs.get('box_provider')}, render {attrs.get('render_mode')}")
        if store.indexed:  # rows read from the file when a batch asks for them
            arrays = store.rows(max_captions=args.comalign_max_captions)
        else:
            logging.warning(f"{args.train_data} has no row index: loading all of it into memory first (slow for a "
                            f"large store); python -m open_clip_align.comalign.store index {args.train_data} "
                            f"builds the index once")
            arrays = store.load_arrays(max_captions=args.comalign_max_captions)
    if not arrays["image_ids"]:
        raise ComAlignDataError(f"{args.train_data}: the store holds no complete image")
    return ComAlignFeatureDataset(arrays, seed=args.seed, epoch=epoch, where=str(args.train_data))


def get_comalign_train_data(args, preprocess_fn, tokenizer, epoch: int = 0) -> DataInfo:
    """The ``train`` DataInfo for ``--comalign-data``; ``dataloader.num_samples``/``num_batches`` are set.

    Raises ComAlignDataError (naming the file, row or flag) for bad data, before training starts.
    """
    if not args.train_data:
        raise ComAlignDataError(f"--comalign-data {args.comalign_data} needs --train-data")
    if not os.path.isfile(args.train_data):
        raise ComAlignDataError(f"--train-data {args.train_data}: no such file")
    if args.comalign_max_captions < 1:
        raise ComAlignDataError(f"--comalign-max-captions must be >= 1, got {args.comalign_max_captions}")
    if args.comalign_data == "features":
        dataset = _feature_dataset(args, epoch)
    else:
        dataset = _image_dataset(args, preprocess_fn, tokenizer, epoch)
    global_batch = args.batch_size * args.world_size
    if len(dataset) < global_batch:
        raise ComAlignDataError(f"{args.train_data}: {len(dataset)} images, fewer than one global batch "
                                f"(--batch-size {args.batch_size} x {args.world_size} processes)")
    sampler = DistributedSampler(dataset, num_replicas=args.world_size, rank=args.rank, shuffle=True, seed=args.seed)
    dataloader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                            pin_memory=torch.cuda.is_available(), drop_last=True,
                            persistent_workers=args.workers > 0)
    dataloader.num_samples = len(dataset)
    dataloader.num_batches = len(dataloader)
    return DataInfo(dataloader, sampler, shared_epoch=dataset.shared_epoch)
