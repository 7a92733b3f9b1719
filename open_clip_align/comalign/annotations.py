"""Image-caption annotation files for ComAlign precompute: COCO captions JSON, Karpathy JSON, CSV/TSV.

Every loader returns ``List[ImageCaptions]`` in a fixed order with each image's captions in file order:

- ``coco``: ``captions_<split>.json`` (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``). Images in the order of their first annotation, captions in annotation order (the ComAlign
  reference protocol, spec §5: 5,000 images and, with ``max_captions=5``, 25,000 captions for val2017). The id
  is the COCO image id as a decimal string; the image is ``image_root/file_name``.
- ``karpathy``: the BLIP/ALBEF test format that ``open_clip_align.eval.retrieval`` reads (a JSON list of
  ``{"image": path, "caption": [...]}``), through that module's loader; the id is the ``image`` path.
- ``csv``: a header row naming an image column (``filepath``, ``image``, ``path``, ``file_name`` or
  ``filename``) and a caption column (``title``, ``caption``, ``text``, ``sentence``); TAB- or comma-separated
  (taken from the header line; ``.tsv`` is TAB). Several rows of one image are several captions (images in
  order of first appearance). ShapeCrepe's ``train.csv`` is this format; the id is the path as written.

Relative image paths resolve against ``image_root``, by default the annotation file's folder (for a COCO file
named ``captions_<split>.json`` whose sibling folder ``../<split>`` exists, that folder, the official layout).
Malformed input raises ``ComAlignDataError`` naming the file, row and what was expected; missing images too.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..eval.items import EvalDataError

FORMATS = ("coco", "karpathy", "csv")
IMAGE_COLUMNS = ("filepath", "image", "path", "file_name", "filename")
CAPTION_COLUMNS = ("title", "caption", "text", "sentence")


class ComAlignDataError(EvalDataError):
    """ComAlign input (annotations, images, scenes, a store, a spaCy model) is missing or malformed; the
    message names the file, row or flag and what was expected."""


@dataclass
class ImageCaptions:
    """One image: its id (COCO decimal id or path as written), its file path, and its captions in order."""

    image_id: str
    path: str
    captions: List[str]


def _check_max_captions(max_captions: Optional[int]):
    if max_captions is not None and max_captions < 1:
        raise ComAlignDataError(f"max_captions must be None (keep all) or >= 1, got {max_captions}")


def _check_images(items: Sequence[ImageCaptions], source: Path):
    for item in items:
        if not Path(item.path).is_file():
            raise ComAlignDataError(f"{source}: image {item.image_id!r} is {item.path}, which does not exist "
                                    f"(set --image-root / image_root to the folder the paths are relative to)")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ComAlignDataError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise ComAlignDataError(f"{path}: cannot read ({err})") from None


def _require_file(path: Path):
    if path.is_dir():
        raise ComAlignDataError(f"annotation file {path}: is a folder; expected a COCO or Karpathy JSON or a CSV/TSV")
    if not path.is_file():
        raise ComAlignDataError(f"annotation file {path} not found")


def default_image_root(path, fmt: str) -> Path:
    """Where relative image paths of annotation file ``path`` resolve by default (see the module docstring)."""
    path = Path(path)
    name = path.stem
    if fmt == "coco" and name.startswith("captions_"):
        split_dir = path.parent.parent / name[len("captions_"):]
        if split_dir.is_dir():
            return split_dir
    return path.parent


def load_coco_captions(path, image_root=None, max_captions: Optional[int] = None,
                       check_images: bool = True) -> List[ImageCaptions]:
    """Images of a COCO captions JSON in order of first annotation, captions in annotation order."""
    path = Path(path)
    _require_file(path)
    _check_max_captions(max_captions)
    root = Path(image_root) if image_root is not None else default_image_root(path, "coco")
    raw = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list) or not isinstance(
            raw.get("annotations"), list):
        raise ComAlignDataError(f"{path}: expected a COCO captions JSON object with 'images' and 'annotations' "
                                f"lists (captions_<split>.json)")
    files = {}
    for index, image in enumerate(raw["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or not isinstance(
                image.get("file_name"), str) or not image["file_name"]:
            raise ComAlignDataError(f"{path}: images[{index}] needs an integer 'id' and a 'file_name'")
        if image["id"] in files:
            raise ComAlignDataError(f"{path}: images[{index}] repeats image id {image['id']}")
        files[image["id"]] = image["file_name"]
    order, captions = [], {}
    for index, ann in enumerate(raw["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int):
            raise ComAlignDataError(f"{path}: annotations[{index}] needs an integer 'image_id'")
        caption = ann.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise ComAlignDataError(f"{path}: annotations[{index}] (image {ann['image_id']}) needs a non-empty "
                                    f"'caption' string")
        if ann["image_id"] not in files:
            raise ComAlignDataError(f"{path}: annotations[{index}] names image {ann['image_id']}, which is not in "
                                    f"'images'")
        if ann["image_id"] not in captions:
            order.append(ann["image_id"])
            captions[ann["image_id"]] = []
        captions[ann["image_id"]].append(caption)
    if not order:
        raise ComAlignDataError(f"{path}: no annotations")
    items = [ImageCaptions(str(i), str(root / files[i]), captions[i][:max_captions]) for i in order]
    if check_images:
        _check_images(items, path)
    return items


def load_karpathy(path, image_root=None, max_captions: Optional[int] = None) -> List[ImageCaptions]:
    """A Karpathy/BLIP test JSON through ``open_clip_align.eval.retrieval.load`` (same checks and errors)."""
    from ..eval.retrieval import load

    path = Path(path)
    _require_file(path)
    _check_max_captions(max_captions)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        refs, captions = load(root, "coco", annotation=path.resolve(), max_captions=max_captions)
    except EvalDataError as err:
        raise ComAlignDataError(str(err)) from None
    return [ImageCaptions(Path(ref.path).relative_to(root).as_posix(), ref.path, list(caps))
            for ref, caps in zip(refs, captions)]


def _column(header: List[str], wanted: Optional[str], candidates: Sequence[str], what: str, path: Path) -> int:
    if wanted is not None:
        if wanted not in header:
            raise ComAlignDataError(f"{path}: no {what} column {wanted!r} in the header {header}")
        return header.index(wanted)
    for name in candidates:
        if name in header:
            return header.index(name)
    raise ComAlignDataError(f"{path}: the header {header} has no {what} column; expected one of "
                            f"{', '.join(candidates)} (or name it with --csv-{what}-key)")


def load_csv(path, image_root=None, max_captions: Optional[int] = None, img_key: Optional[str] = None,
             caption_key: Optional[str] = None, separator: Optional[str] = None,
             check_images: bool = True) -> List[ImageCaptions]:
    """Images and captions of a CSV/TSV file with a header row (see the module docstring)."""
    path = Path(path)
    _require_file(path)
    _check_max_captions(max_captions)
    root = Path(image_root) if image_root is not None else path.parent
    with open(path, newline="", encoding="utf-8") as f:
        first = f.readline()
        if separator is None:
            separator = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else ","
        f.seek(0)
        reader = csv.reader(f, delimiter=separator)
        try:
            header = next(reader)
        except StopIteration:
            raise ComAlignDataError(f"{path}: empty file; expected a header row and one row per caption") from None
        img_col = _column(header, img_key, IMAGE_COLUMNS, "img", path)
        cap_col = _column(header, caption_key, CAPTION_COLUMNS, "caption", path)
        order, captions = [], {}
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise ComAlignDataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)} "
                                        f"(separator {separator!r})")
            image, caption = row[img_col].strip(), row[cap_col]
            if not image:
                raise ComAlignDataError(f"{path}: line {line} has an empty {header[img_col]!r}")
            if not caption.strip():
                raise ComAlignDataError(f"{path}: line {line} ({image}) has an empty {header[cap_col]!r}")
            if image not in captions:
                order.append(image)
                captions[image] = []
            captions[image].append(caption)
    if not order:
        raise ComAlignDataError(f"{path}: no rows after the header")
    items = [ImageCaptions(image, str(root / image), captions[image][:max_captions]) for image in order]
    if check_images:
        _check_images(items, path)
    return items


def detect_format(path) -> str:
    """``coco``, ``karpathy`` or ``csv`` from the extension and, for JSON, the top-level structure."""
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if suffix == ".json":
        raw = _read_json(path)
        if isinstance(raw, dict) and "annotations" in raw and "images" in raw:
            return "coco"
        if isinstance(raw, list):
            return "karpathy"
        raise ComAlignDataError(f"{path}: JSON that is neither COCO captions ({{'images', 'annotations'}}) nor "
                                f"a Karpathy list of {{'image', 'caption'}}; pass --format")
    raise ComAlignDataError(f"{path}: cannot tell the format from the extension {suffix!r}; pass --format "
                            f"{'|'.join(FORMATS)}")


def load_annotations(path, fmt: Optional[str] = None, image_root=None, max_captions: Optional[int] = None,
                     **csv_options) -> List[ImageCaptions]:
    """Any supported annotation file; ``fmt`` None detects it (``detect_format``). ``csv_options``: ``img_key``,
    ``caption_key``, ``separator`` for CSV files."""
    fmt = fmt or detect_format(path)
    if fmt == "coco":
        return load_coco_captions(path, image_root, max_captions)
    if fmt == "karpathy":
        return load_karpathy(path, image_root, max_captions)
    if fmt == "csv":
        return load_csv(path, image_root, max_captions, **csv_options)
    raise ComAlignDataError(f"unknown annotation format {fmt!r}; expected one of {', '.join(FORMATS)}")
