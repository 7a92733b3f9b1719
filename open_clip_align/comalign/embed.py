"""Precompute ComAlign's frozen CLIP component embeddings into a resumable HDF5 store (spec §2, §4).

    python -m open_clip_align.comalign.embed --model ViT-B-32-quickgelu --pretrained openai \\
        --annotations coco/annotations/captions_val2017.json --boxes segment --out val2017_components.h5
    python -m open_clip_align.comalign.embed --model comalign-tiny-ViT --pretrained ckpt.pt \\
        --annotations shapecrepe/train.csv --boxes gt --scenes shapecrepe/scenes.jsonl --out train.h5

Per image: boxes (--boxes) -> the top --n-entity boxes and the union boxes of the top --n-relation pairs ->
views (--render grey: everything outside the box desaturated; crop: the box cut out; --letterbox pads views
to a square first) -> ``model.encode_image`` on every real view and on the whole image (the CLIP global,
standard preprocessing). Per caption: spaCy components (entity and relation phrases) -> ``model.encode_text``
on the caption and on each phrase. Pad slots are zero vectors with mask False; nothing is normalised.
Works with any open_clip model (built-in, plugin configs, local-dir:). Views of several images are batched;
pads are not encoded.

OpenAI weights need QuickGELU: a GELU model name with such a tag (ViT-B-32 + openai) is built with QuickGELU after
one log line (--keep-gelu keeps GELU, e.g. for parity with the reference's inference.py, which runs exactly
that); the store records the activation (root attribute quick_gelu), and evaluation reports it.

The store is written to OUT.partial and renamed to OUT at the end. Run the same command again after an
interruption and it continues where it stopped (finished images are kept, a half-written one is redone);
other settings than the stored ones are refused (--no-resume starts over). Nothing is downloaded: --pretrained
is a tag already in the open_clip cache or a local file, detector weights are local files.
"""
import argparse
import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from ..cli_checks import console_logging, device_problem, non_finite_flags, output_problem, range_problem
from ..errors import run_cli
from ..models.activation import activation_name, force_quickgelu_kwargs, needs_quickgelu
from .annotations import FORMATS, ComAlignDataError, ImageCaptions, load_annotations
from .boxes import Box, BoxProvider, add_box_arguments, box_provider_from_args
from .store import ComponentStoreWriter
from .text import DEFAULT_SPACY_MODEL, ComponentParser, TextComponents
from .views import MODES, image_views

PRECISIONS = ("fp32", "fp16", "bf16")


# ----------------------------------------------------------------------------------------- encoders

def _dtype(model) -> torch.dtype:
    first = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return first.dtype if first is not None else torch.float32


def _device(model) -> torch.device:
    first = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return first.device if first is not None else torch.device("cpu")


@torch.inference_mode()
def encode_views(model, views: torch.Tensor, valid: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """``views [B, S, 3, H, W]``, ``valid [B, S]`` bool -> ``[B, S, d]`` float32 on CPU: ``encode_image`` of
    the valid views (in forward passes of at most ``batch_size``), zeros elsewhere (pads are not encoded)."""
    real = views[valid]
    device, dtype = _device(model), _dtype(model)
    feats = []
    step = batch_size or max(1, len(real))
    for start in range(0, len(real), step):
        feats.append(model.encode_image(real[start:start + step].to(device, dtype=dtype)).float().cpu())
    if not feats:
        raise ComAlignDataError("no views to encode (every image has at least its global view)")
    feats = torch.cat(feats)
    out = torch.zeros((*valid.shape, feats.shape[-1]), dtype=torch.float32)
    out[valid] = feats
    return out


@torch.inference_mode()
def encode_strings(model, tokenizer: Callable, strings: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """``[len(strings), d]`` float32 on CPU: ``encode_text`` of each string (unnormalised)."""
    device = _device(model)
    feats = [model.encode_text(tokenizer(list(strings[s:s + batch_size])).to(device)).float().cpu()
             for s in range(0, len(strings), batch_size)]
    return torch.cat(feats) if feats else torch.zeros(0, 0)


def embed_captions(model, tokenizer: Callable, parser: ComponentParser, captions: Sequence[str],
                   batch_size: int = 256) -> Dict[str, object]:
    """Caption and component embeddings of ``captions`` (each unique string encoded once).

    Returns ``text [M, d]``, ``entity [M, Ne, d]``, ``entity_mask [M, Ne]``, ``relation [M, Nr, d]``,
    ``relation_mask [M, Nr]`` (float32 / bool, pads zero) and ``components`` (the ``TextComponents``), with
    Ne, Nr = ``parser.n_entity``, ``parser.n_relation``.
    """
    components = parser.parse_many(captions)
    strings = list(dict.fromkeys([*captions, *(s for c in components for s in (*c.entities, *c.relations))]))
    feats = encode_strings(model, tokenizer, strings, batch_size)
    row = {s: i for i, s in enumerate(strings)}
    n_e, n_r, m = parser.n_entity, parser.n_relation, len(captions)
    d = feats.shape[-1]
    out = {"text": feats[[row[c] for c in captions]] if m else torch.zeros(0, d),
           "entity": torch.zeros(m, n_e, d), "entity_mask": torch.zeros(m, n_e, dtype=torch.bool),
           "relation": torch.zeros(m, n_r, d), "relation_mask": torch.zeros(m, n_r, dtype=torch.bool),
           "components": components}
    for i, comp in enumerate(components):
        for role, phrases in (("entity", comp.entities), ("relation", comp.relations)):
            if phrases:
                out[role][i, :len(phrases)] = feats[[row[p] for p in phrases]]
                out[f"{role}_mask"][i, :len(phrases)] = True
    return out


# ----------------------------------------------------------------------------------------- image side

def _boxes_array(boxes: Sequence[Box], n: int) -> torch.Tensor:
    out = torch.zeros(n, 5)
    if boxes:
        out[:len(boxes)] = torch.tensor([b.as_tuple() for b in boxes], dtype=torch.float32)
    return out


class ViewDataset(torch.utils.data.Dataset):
    """Item ``i`` of ``items``: its views (``view_tensor``), masks and boxes, computed where it is loaded
    (DataLoader workers included). The provider is called with the image's file path as its key."""

    def __init__(self, items: Sequence[ImageCaptions], provider: BoxProvider, preprocess: Callable,
                 n_entity: int = 10, n_relation: int = 10, mode: str = "grey", letterbox: bool = False):
        self.items, self.provider, self.preprocess = list(items), provider, preprocess
        self.n_entity, self.n_relation, self.mode, self.letterbox = n_entity, n_relation, mode, letterbox

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            with Image.open(item.path) as img:
                image = img.convert("RGB")
        except (OSError, ValueError) as err:
            raise ComAlignDataError(f"cannot read image {item.path} (id {item.image_id}): {err}") from None
        views, entity_mask, relation_mask, entity_boxes, relation_boxes = image_views(
            image, item.path, self.provider, self.preprocess, self.n_entity, self.n_relation, self.mode,
            self.letterbox)
        return {"position": i, "views": views, "entity_mask": entity_mask, "relation_mask": relation_mask,
                "entity_boxes": _boxes_array(entity_boxes, self.n_entity),
                "relation_boxes": _boxes_array(relation_boxes, self.n_relation)}


def _collate(rows: List[dict]) -> dict:
    return {key: torch.stack([r[key] for r in rows]) if key != "position" else [r[key] for r in rows]
            for key in rows[0]}


def embed_images(model, preprocess: Callable, items: Sequence[ImageCaptions], provider: BoxProvider,
                 n_entity: int = 10, n_relation: int = 10, mode: str = "grey", letterbox: bool = False,
                 batch_size: int = 16, workers: int = 0) -> Iterator[dict]:
    """Per image of ``items``, in order: ``{"position" (index into items), "global" [d], "entity" [Ne, d],
    "entity_mask" [Ne], "relation" [Nr, d], "relation_mask" [Nr], "entity_boxes" [Ne, 5], "relation_boxes"
    [Nr, 5]}`` (float32 CPU tensors, pads zero). ``batch_size`` images are loaded and encoded together (all
    their real views in one ``encode_image`` pass); ``workers`` DataLoader processes render the views."""
    if workers > 0 and provider.device not in (None, "cpu"):
        raise ComAlignDataError(f"the {provider.name} box provider runs on {provider.device}; use --workers 0 "
                                f"with a GPU detector (views are rendered in the main process then)")
    loader = torch.utils.data.DataLoader(
        ViewDataset(items, provider, preprocess, n_entity, n_relation, mode, letterbox), batch_size=batch_size,
        num_workers=workers, collate_fn=_collate)
    return _encode_batches(model, iter(loader), n_entity, n_relation)  # iter() starts the workers now


def _encode_batches(model, batches, n_entity: int, n_relation: int) -> Iterator[dict]:
    for batch in batches:
        b = len(batch["position"])
        valid = torch.cat([batch["entity_mask"], batch["relation_mask"], torch.ones(b, 1, dtype=torch.bool)], 1)
        feats = encode_views(model, batch["views"], valid)
        for k, position in enumerate(batch["position"]):
            yield {"position": position, "global": feats[k, -1], "entity": feats[k, :n_entity],
                   "entity_mask": batch["entity_mask"][k], "relation": feats[k, n_entity:n_entity + n_relation],
                   "relation_mask": batch["relation_mask"][k], "entity_boxes": batch["entity_boxes"][k],
                   "relation_boxes": batch["relation_boxes"][k]}


# ------------------------------------------------------------------------------------------- the store

def store_attrs(model, model_name: str, pretrained: str, precision: str, provider: BoxProvider,
                parser: ComponentParser, mode: str, letterbox: bool, max_captions: Optional[int],
                annotations: str, annotation_format: str) -> dict:
    """The root attributes of a store: everything that changes the stored vectors."""
    import open_clip

    embed_dim = getattr(model, "embed_dim", None) or getattr(getattr(model, "text_projection", None), "shape",
                                                              [None, None])[-1]
    image_size = getattr(getattr(model, "visual", None), "image_size", None)
    return {"model": model_name, "pretrained": pretrained, "quick_gelu": activation_name(model) == "quick_gelu",
            "precision": precision,
            "open_clip_version": open_clip.__version__, "embed_dim": int(embed_dim) if embed_dim else 0,
            "image_size": list(image_size) if isinstance(image_size, (tuple, list)) else image_size,
            "normalised": False, "box_provider": provider.name, "box_options": provider.options(),
            "render_mode": mode, "letterbox": bool(letterbox), "global_view": "whole image, model preprocessing",
            "n_entity": parser.n_entity, "n_relation": parser.n_relation, "spacy_model": parser.model_name,
            "spacy_model_version": parser.model_version, "spacy_version": parser.spacy_version,
            "max_captions": max_captions if max_captions is not None else 0,
            "annotations": annotations, "annotation_format": annotation_format}


def embed_to_store(model, preprocess: Callable, tokenizer: Callable, items: Sequence[ImageCaptions],
                   provider: BoxProvider, parser: ComponentParser, out, attrs: dict, mode: str = "grey",
                   letterbox: bool = False, batch_size: int = 16, workers: int = 0, resume: bool = True,
                   progress: bool = True) -> dict:
    """Embed ``items`` into the store ``out`` (resuming unless ``resume=False``); returns counts and timings:
    ``images``/``captions`` written now, ``skipped`` (already in the store), ``image_seconds`` (boxes, views,
    image encoding, including data loading), ``caption_seconds`` (parsing and text encoding),
    ``write_seconds``, ``images_per_s``, ``captions_per_s`` and ``path``."""
    n_entity, n_relation = parser.n_entity, parser.n_relation
    stats = {"images": 0, "captions": 0, "image_seconds": 0.0, "caption_seconds": 0.0, "write_seconds": 0.0}
    probe = ComponentStoreWriter(out, attrs, resume=resume)  # settings checked, a stale .partial cleaned
    positions = [i for i, item in enumerate(items) if item.image_id not in probe]
    probe.plan(len(probe.done | {item.image_id for item in items}))
    probe.abort()
    todo = [items[i] for i in positions]
    stats["skipped"] = len(items) - len(todo)
    # start DataLoader workers before the store is open: forked workers would otherwise inherit its file
    # descriptor (and HDF5's lock on it) and keep it after an error
    images = embed_images(model, preprocess, todo, provider, n_entity, n_relation, mode, letterbox, batch_size,
                          workers)
    with ComponentStoreWriter(out, attrs, resume=True) as writer:
        bar = tqdm(total=len(items), initial=stats["skipped"], desc="comalign embed", unit="img",
                   disable=not progress)
        pending: List[dict] = []
        clock = time.perf_counter()
        for done, image in enumerate(images, 1):
            pending.append(image)
            if len(pending) < batch_size and done < len(todo):
                continue
            now = time.perf_counter()
            stats["image_seconds"] += now - clock
            batch_items = [todo[p["position"]] for p in pending]
            captions = [c for item in batch_items for c in item.captions]
            text = embed_captions(model, tokenizer, parser, captions)
            clock = time.perf_counter()
            stats["caption_seconds"] += clock - now
            row = 0
            for image_row, item in zip(pending, batch_items):
                caption_rows = []
                for caption in item.captions:
                    comp: TextComponents = text["components"][row]
                    caption_rows.append({"string": caption, "entities": comp.entities, "relations": comp.relations,
                                         **{k: text[k][row] for k in ("text", "entity", "entity_mask", "relation",
                                                                       "relation_mask")}})
                    row += 1
                writer.write(item.image_id, item.path, positions[image_row["position"]], image_row, caption_rows)
            stats["images"] += len(pending)
            stats["captions"] += len(captions)
            bar.update(len(pending))
            pending = []
            now = time.perf_counter()
            stats["write_seconds"] += now - clock
            clock = now
        bar.close()
    stats["path"] = str(writer.path)
    stats["images_per_s"] = stats["images"] / stats["image_seconds"] if stats["image_seconds"] else None
    stats["captions_per_s"] = stats["captions"] / stats["caption_seconds"] if stats["caption_seconds"] else None
    return stats


# ------------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_clip_align.comalign.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="open_clip model name (built-in, plugin, or local-dir:PATH)")
    p.add_argument("--pretrained", required=True, help="pretrained tag (already cached) or checkpoint file")
    p.add_argument("--annotations", required=True, type=Path,
                   help="captions_<split>.json (COCO), a Karpathy test JSON, or a CSV/TSV with image and caption "
                        "columns (e.g. ShapeCrepe's train.csv)")
    p.add_argument("--format", choices=FORMATS, default=None, help="annotation format (default: detected)")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder the image paths are relative to (default: the annotation file's folder; for "
                        "captions_<split>.json the sibling ../<split> folder when it exists)")
    p.add_argument("--csv-img-key", default=None, help="CSV image column (default: filepath, image, path, ...)")
    p.add_argument("--csv-caption-key", default=None, help="CSV caption column (default: title, caption, ...)")
    add_box_arguments(p)
    p.add_argument("--render", choices=MODES, default="grey",
                   help="grey: whole image, outside the box desaturated (the paper's figure); crop: the box")
    p.add_argument("--letterbox", action="store_true", help="pad each view to a square before preprocessing")
    p.add_argument("--n-entity", type=int, default=10, help="entity slots per image and per caption")
    p.add_argument("--n-relation", type=int, default=10, help="relation slots per image and per caption")
    p.add_argument("--max-captions", type=int, default=5,
                   help="captions kept per image, in file order (0: all; the reference keeps 5)")
    p.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL, help="spaCy pipeline for caption components")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per step; all their views (up to n-entity + n-relation + 1 each) go through "
                        "encode_image together")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes loading images and rendering views")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="model precision (vectors are stored as float32 either way)")
    p.add_argument("--keep-gelu", action="store_true",
                   help="build a GELU model name as named even with a tag whose weights need QuickGELU (by default "
                        "such a tower switches to QuickGELU); for parity with the reference's inference.py")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the annotation file")
    p.add_argument("--no-resume", action="store_true",
                   help="start over, discarding OUT.partial (and replacing OUT at the end)")
    p.add_argument("--out", required=True, type=Path, help="the HDF5 store to write (OUT.partial while running)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(args):
    problem = (non_finite_flags(args) or range_problem("--detector-threshold", args.detector_threshold, 0, 1)
               or device_problem("--device", args.device) or device_problem("--detector-device", args.detector_device))
    if problem:
        raise ComAlignDataError(problem)
    for flag in ("n_entity", "n_relation", "batch_size"):
        if getattr(args, flag) < 1:
            raise ComAlignDataError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("workers", "max_captions"):
        if getattr(args, flag) < 0:
            raise ComAlignDataError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.limit is not None and args.limit < 1:
        raise ComAlignDataError(f"--limit must be >= 1, got {args.limit}")
    problem = output_problem(args.out, "--out")
    if problem:
        raise ComAlignDataError(problem)


def _load_model(args):
    import open_clip

    import open_clip_align  # noqa: F401  (plugin model names)

    from ..models.factory import pretrained_problem, unreadable_checkpoint

    pretrained = args.pretrained
    if os.path.exists(pretrained):
        pretrained = str(Path(pretrained).resolve())
    problem = pretrained_problem(args.model, pretrained)
    if problem is None and os.path.isfile(pretrained):
        problem = unreadable_checkpoint(pretrained)
    if problem:
        raise ComAlignDataError(f"--pretrained {args.pretrained}: {problem}")
    if args.keep_gelu:
        quick = {}
        if needs_quickgelu(args.model, pretrained):
            logging.warning(f"comalign.embed: --keep-gelu: {args.model} builds GELU while the --pretrained "
                            f"{args.pretrained} weights were trained with QuickGELU; the vectors differ from the "
                            f"released model's (the store records quick_gelu false)")
    else:
        quick = force_quickgelu_kwargs(args.model, pretrained, where="comalign.embed")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=pretrained,
                                                                     precision=args.precision, device=args.device,
                                                                     **quick)
        tokenizer = open_clip.get_tokenizer(args.model)
    except (RuntimeError, ValueError, OSError) as err:
        raise ComAlignDataError(f"--model {args.model} --pretrained {args.pretrained}: "
                                f"{str(err).splitlines()[0]}") from None
    return model.eval(), preprocess, tokenizer, pretrained


def run(args) -> dict:
    """The CLI's work with parsed ``args``; returns ``embed_to_store``'s stats."""
    _check_args(args)
    max_captions = args.max_captions or None
    fmt = args.format
    if fmt is None:
        from .annotations import detect_format
        fmt = detect_format(args.annotations)
    csv_options = {"img_key": args.csv_img_key, "caption_key": args.csv_caption_key} if fmt == "csv" else {}
    items = load_annotations(args.annotations, fmt, args.image_root, max_captions, **csv_options)
    items = items[:args.limit]
    provider = box_provider_from_args(args)
    parser = ComponentParser(args.spacy_model, args.n_entity, args.n_relation)
    model, preprocess, tokenizer, pretrained = _load_model(args)
    attrs = store_attrs(model, args.model, pretrained, args.precision, provider, parser, args.render,
                        args.letterbox, max_captions, str(args.annotations.resolve()), fmt)
    return embed_to_store(model, preprocess, tokenizer, items, provider, parser, args.out, attrs, args.render,
                          args.letterbox, args.batch_size, args.workers, resume=not args.no_resume,
                          progress=not args.quiet)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console_logging()

    def embed() -> None:
        stats = run(args)
        rate = lambda v: f"{v:.1f}" if v else "-"  # noqa: E731
        print(f"wrote {stats['path']}: {stats['images']} images, {stats['captions']} captions "
              f"({stats['skipped']} images already there); {rate(stats['images_per_s'])} images/s, "
              f"{rate(stats['captions_per_s'])} captions/s")

    run_cli(embed, parser.prog, interrupted=f"run the same command again to continue from {args.out}.partial")


if __name__ == "__main__":
    main()
