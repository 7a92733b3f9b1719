"""Image regions for ComAlign's entity and relation views (spec §2.2): box providers and view selection.

A provider is called as ``provider(image: PIL.Image, key: str) -> List[Box]`` (pixel boxes, best first) and
ranks box pairs with ``provider.relation_pairs(boxes) -> List[(i, j)]`` (default: every i < j by
``score_i * score_j``, ties in index order). ``select_views`` keeps the first ``n_entity`` boxes and the union
boxes of the first ``n_relation`` pairs. Providers (``make_box_provider(name, **options)``):

- ``gt`` (``GroundTruthBoxes``): the object boxes of a ShapeCrepe ``scenes.jsonl``; score 1, larger first.
- ``segment`` (``SegmentationBoxes``): offline, no weights: Felzenszwalb regions -> bounding boxes, boxes under
  1% or over 90% of the image dropped, greedy NMS at IoU 0.5, score = box area fraction.
- ``grid`` (``GridBoxes``): the 3x3 grid cells and the centre half-size box (10 boxes); relations are pairs of
  edge-adjacent cells (12, of which ``select_views`` keeps the first ``n_relation``).
- ``torchvision`` (``TorchvisionDetectorBoxes``): a torchvision detector from a LOCAL state-dict file.
- ``ultralytics`` (``UltralyticsBoxes``): a YOLO weights file, when the ``ultralytics`` package is installed.

Nothing here downloads weights. ``provider.options()`` is the JSON-able configuration stored with the cache.
"""
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .annotations import ComAlignDataError

Pair = Tuple[int, int]


@dataclass(frozen=True)
class Box:
    """A pixel box ``[x0, x1) x [y0, y1)`` (x right, y down) with a confidence ``score``."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def union(self, other: "Box") -> "Box":
        """The smallest box holding both; its score is the product of theirs (the pair's rank key)."""
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1),
                   self.score * other.score)

    def shifted(self, dx: float, dy: float) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.score)

    def as_tuple(self) -> Tuple[float, float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1, self.score)


def iou(a: Box, b: Box) -> float:
    inter = Box(max(a.x0, b.x0), max(a.y0, b.y0), min(a.x1, b.x1), min(a.y1, b.y1)).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: Sequence[Box], threshold: float) -> List[Box]:
    """Greedy non-maximum suppression of boxes already sorted best first: drop a box whose IoU with a kept one
    exceeds ``threshold``."""
    kept: List[Box] = []
    for box in boxes:
        if all(iou(box, k) <= threshold for k in kept):
            kept.append(box)
    return kept


def score_pairs(boxes: Sequence[Box]) -> List[Pair]:
    """Every pair i < j ranked by ``score_i * score_j`` (descending; ties in (i, j) order)."""
    pairs = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))]
    return sorted(pairs, key=lambda p: -boxes[p[0]].score * boxes[p[1]].score)


def select_views(boxes: Sequence[Box], relation_pairs: Sequence[Pair], n_entity: int = 10,
                 n_relation: int = 10) -> Tuple[List[Box], List[Box]]:
    """``(entity_boxes, relation_boxes)``: the first ``n_entity`` boxes and the union boxes of the first
    ``n_relation`` pairs (indices into ``boxes``)."""
    return list(boxes[:n_entity]), [boxes[i].union(boxes[j]) for i, j in list(relation_pairs)[:n_relation]]


class BoxProvider:
    """Base class: subclasses implement ``__call__`` and ``options``; ``relation_pairs`` defaults to
    ``score_pairs``. ``device`` is the torch device a provider runs a model on (None: no model)."""

    name = ""
    device: Optional[str] = None

    def __call__(self, image: Image.Image, key: str) -> List[Box]:
        raise NotImplementedError

    def relation_pairs(self, boxes: Sequence[Box]) -> List[Pair]:
        return score_pairs(boxes)

    def options(self) -> dict:
        return {}


_PROVIDERS: Dict[str, Callable[..., BoxProvider]] = {}


def register_box_provider(name: str):
    """Class decorator: make a provider available to ``make_box_provider(name, ...)`` and ``--boxes name``."""
    def wrap(cls):
        _PROVIDERS[name] = cls
        cls.name = name
        return cls
    return wrap


def box_providers() -> List[str]:
    return list(_PROVIDERS)


def make_box_provider(name: str, **options) -> BoxProvider:
    """A registered provider built with ``options`` (a clear error for an unknown name or option)."""
    if name not in _PROVIDERS:
        raise ComAlignDataError(f"unknown box provider {name!r}; expected one of {', '.join(_PROVIDERS)}")
    try:
        return _PROVIDERS[name](**options)
    except TypeError as err:
        raise ComAlignDataError(f"box provider {name!r}: bad options {sorted(options)} ({err})") from None


# ------------------------------------------------------------------------------------------ providers

@register_box_provider("gt")
class GroundTruthBoxes(BoxProvider):
    """Object boxes from ShapeCrepe ``scenes.jsonl`` files (one path or several), looked up by the image path as
    written there (relative to that file's folder) or by the same file's path in any spelling."""

    def __init__(self, scenes: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]):
        paths = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
        if not paths:
            raise ComAlignDataError("the gt box provider needs a scenes.jsonl file (--scenes)")
        self.paths = [str(Path(p).resolve()) for p in paths]
        self._written: Dict[str, List[Box]] = {}
        self._resolved: Dict[str, List[Box]] = {}
        for path in map(Path, self.paths):
            self._read(path)

    def _read(self, path: Path):
        if not path.is_file():
            raise ComAlignDataError(f"scenes file {path} not found (ShapeCrepe writes DIR/scenes.jsonl)")
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    scene = json.loads(line)
                    image = scene["image"]
                    boxes = [Box(*map(float, obj["bbox"])) for obj in scene["objects"]]
                    if not isinstance(image, str) or any(len(obj["bbox"]) != 4 for obj in scene["objects"]):
                        raise ValueError("bad image or bbox")
                except (ValueError, KeyError, TypeError) as err:
                    raise ComAlignDataError(f"{path}: line {line_no} is not a scene ({{'image': path, 'objects': "
                                            f"[{{'bbox': [x0, y0, x1, y1]}}, ...]}}): {err}") from None
                # score 1 for all, so the order is by area, larger first (stable for equal areas)
                boxes = sorted(boxes, key=lambda b: -b.area)
                self._written[image] = boxes
                self._resolved[str((path.parent / image).resolve())] = boxes

    def __call__(self, image: Image.Image, key: str) -> List[Box]:
        boxes = self._written.get(key)
        if boxes is None:
            boxes = self._resolved.get(str(Path(key).resolve()))
        if boxes is None:
            raise ComAlignDataError(f"image {key!r} has no scene in {', '.join(self.paths)}")
        return list(boxes)

    def options(self) -> dict:
        return {"scenes": self.paths}


@register_box_provider("segment")
class SegmentationBoxes(BoxProvider):
    """Bounding boxes of Felzenszwalb segments (``skimage.segmentation.felzenszwalb``), computed on the image
    shrunk to at most ``max_side`` pixels (then scaled back). Boxes outside ``[min_area, max_area]`` of the
    image area are dropped, then greedy NMS at ``iou``; score = box area fraction. Deterministic.
    ``min_size`` (pixels of the shrunk image; default 0.5% of its area, at least 4) merges tiny segments."""

    def __init__(self, scale: float = 100.0, sigma: float = 0.8, min_size: Optional[int] = None,
                 min_area: float = 0.01, max_area: float = 0.9, iou: float = 0.5, max_side: int = 256):
        self.scale, self.sigma, self.min_size = float(scale), float(sigma), min_size
        self.min_area, self.max_area, self.iou, self.max_side = float(min_area), float(max_area), float(iou), max_side

    def __call__(self, image: Image.Image, key: str) -> List[Box]:
        from scipy.ndimage import find_objects
        from skimage.segmentation import felzenszwalb

        image = image.convert("RGB")
        width, height = image.size
        factor = min(1.0, self.max_side / max(width, height))
        small = image
        if factor < 1.0:
            small = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.BILINEAR)
        sw, sh = small.size
        fx, fy = width / sw, height / sh
        min_size = self.min_size if self.min_size is not None else max(4, round(0.005 * sw * sh))
        labels = felzenszwalb(np.asarray(small), scale=self.scale, sigma=self.sigma, min_size=min_size)
        boxes = []
        for region in find_objects(labels + 1):
            if region is None:
                continue
            rows, cols = region
            box = Box(cols.start * fx, rows.start * fy, cols.stop * fx, rows.stop * fy)
            fraction = box.area / (width * height)
            if self.min_area <= fraction <= self.max_area:
                boxes.append(Box(box.x0, box.y0, box.x1, box.y1, fraction))
        boxes.sort(key=lambda b: (-b.score, b.y0, b.x0, b.y1, b.x1))
        return nms(boxes, self.iou)

    def options(self) -> dict:
        return {"scale": self.scale, "sigma": self.sigma, "min_size": self.min_size, "min_area": self.min_area,
                "max_area": self.max_area, "iou": self.iou, "max_side": self.max_side}


@register_box_provider("grid")
class GridBoxes(BoxProvider):
    """The 3x3 grid cells in raster order, then the centre box of half the image size: 10 boxes, score 1."""

    def __call__(self, image: Image.Image, key: str) -> List[Box]:
        w, h = image.size
        cells = [Box(w * c / 3, h * r / 3, w * (c + 1) / 3, h * (r + 1) / 3) for r in range(3) for c in range(3)]
        return cells + [Box(w / 4, h / 4, 3 * w / 4, 3 * h / 4)]

    def relation_pairs(self, boxes: Sequence[Box]) -> List[Pair]:
        """Pairs i < j of boxes that share an edge of positive length (adjacent grid cells), in (i, j) order."""
        def adjacent(a: Box, b: Box) -> bool:
            tol = 1e-6 * max(a.x1, b.x1, a.y1, b.y1, 1.0)
            touch_x = abs(a.x1 - b.x0) <= tol or abs(b.x1 - a.x0) <= tol
            touch_y = abs(a.y1 - b.y0) <= tol or abs(b.y1 - a.y0) <= tol
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0) > tol
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0) > tol
            return (touch_x and overlap_y) or (touch_y and overlap_x)
        return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if adjacent(boxes[i], boxes[j])]


def _load_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ComAlignDataError(f"detector weights {path} not found (a local state-dict file is required; nothing "
                                f"is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same user error)
        raise ComAlignDataError(f"detector weights {path} cannot be read as a torch state dict ({type(err).__name__}: "
                                f"the file is truncated, damaged, not written by torch.save or holds pickled objects "
                                f"besides tensors)") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ComAlignDataError(f"detector weights {path}: expected a state dict, got {type(state).__name__}")
    return state


@register_box_provider("torchvision")
class TorchvisionDetectorBoxes(BoxProvider):
    """A ``torchvision.models.detection`` model (``arch``) built with ``weights=None, weights_backbone=None`` and
    loaded strictly from the local state-dict file ``weights_path``. Detections scoring at least
    ``score_threshold`` (all classes but the background), best first, at most ``max_boxes``. ``num_classes``
    (background included) defaults to the classifier size found in the file, else 91 (COCO)."""

    def __init__(self, weights_path, arch: str = "fasterrcnn_resnet50_fpn", score_threshold: float = 0.5,
                 device: str = "cpu", num_classes: Optional[int] = None, max_boxes: int = 100):
        import torch
        from torchvision.models import detection, list_models

        known = list_models(module=detection)
        if arch not in known:
            raise ComAlignDataError(f"unknown torchvision detector {arch!r}; expected one of {', '.join(known)}")
        self.weights_path, self.arch = str(Path(weights_path).resolve()), arch
        self.score_threshold, self.device, self.max_boxes = float(score_threshold), str(device), int(max_boxes)
        state = _load_state_dict(Path(weights_path))
        if num_classes is None:
            sizes = [v.shape[0] for k, v in state.items() if k.endswith("box_predictor.cls_score.weight")]
            num_classes = sizes[0] if sizes else 91
        self.num_classes = int(num_classes)
        threshold_key = "box_score_thresh" if "rcnn" in arch else "score_thresh"
        model = getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=self.num_classes,
                                         **{threshold_key: self.score_threshold})
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ComAlignDataError(f"detector weights {weights_path} do not fit {arch} with {self.num_classes} "
                                    f"classes: {str(err).splitlines()[0]} ...") from None
        self.model = model.eval().to(torch.device(self.device))

    def __call__(self, image: Image.Image, key: str) -> List[Box]:
        import torch
        from torchvision.transforms.functional import pil_to_tensor

        pixels = pil_to_tensor(image.convert("RGB")).float().div(255).to(self.device)
        with torch.inference_mode():
            out = self.model([pixels])[0]
        boxes = [Box(*map(float, xyxy), float(score)) for xyxy, score in zip(out["boxes"].cpu(), out["scores"].cpu())
                 if score >= self.score_threshold]
        boxes.sort(key=lambda b: -b.score)
        return boxes[:self.max_boxes]

    def options(self) -> dict:
        return {"weights_path": self.weights_path, "arch": self.arch, "score_threshold": self.score_threshold,
                "num_classes": self.num_classes, "max_boxes": self.max_boxes}


@register_box_provider("ultralytics")
class UltralyticsBoxes(BoxProvider):
    """A YOLO detector (e.g. YOLOv8, the reference's likely detector) from a local ``weights_path``; needs the
    ``ultralytics`` package. Detections scoring at least ``score_threshold``, best first."""

    def __init__(self, weights_path, score_threshold: float = 0.25, device: str = "cpu", max_boxes: int = 100):
        if importlib.util.find_spec("ultralytics") is None:
            raise ComAlignDataError("--boxes ultralytics needs the ultralytics package (pip install ultralytics); "
                                    "it is not installed. Use --boxes torchvision|segment|grid|gt instead")
        if not Path(weights_path).is_file():
            raise ComAlignDataError(f"YOLO weights {weights_path} not found (a local file is required; nothing is "
                                    f"downloaded)")
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        self.weights_path, self.score_threshold = str(Path(weights_path).resolve()), float(score_threshold)
        self.device, self.max_boxes = str(device), int(max_boxes)
        self.model = YOLO(self.weights_path)

    def __call__(self, image: Image.Image, key: str) -> List[Box]:
        result = self.model.predict(image.convert("RGB"), conf=self.score_threshold, device=self.device,
                                    verbose=False)[0]
        xyxy, conf = result.boxes.xyxy.cpu().tolist(), result.boxes.conf.cpu().tolist()
        boxes = sorted((Box(*b, s) for b, s in zip(xyxy, conf)), key=lambda b: -b.score)
        return boxes[:self.max_boxes]

    def options(self) -> dict:
        return {"weights_path": self.weights_path, "score_threshold": self.score_threshold,
                "max_boxes": self.max_boxes}


# ------------------------------------------------------------------------------------------ command-line options

def add_box_arguments(group, prefix: str = "", default: Optional[str] = None) -> None:
    """The box-provider flags, one definition for the embed tool (``prefix=""``: ``--boxes``), training and the
    evaluation suite (``prefix="comalign-"``: ``--comalign-boxes``). ``default=None`` makes the provider required."""
    group.add_argument(f"--{prefix}boxes", default=default, required=default is None, choices=box_providers(),
                       help="region proposer: gt = ShapeCrepe scene boxes (--{0}scenes); segment = Felzenszwalb "
                            "segments (offline, no weights); grid = 3x3 cells + centre; torchvision = a local "
                            "detector (--{0}detector-weights); ultralytics = YOLO weights (--{0}detector-weights; "
                            "needs the ultralytics package)".format(prefix))
    group.add_argument(f"--{prefix}scenes", nargs="+", default=None, help="gt boxes: ShapeCrepe scenes.jsonl file(s)")
    group.add_argument(f"--{prefix}detector-weights", default=None,
                       help="torchvision/ultralytics boxes: a LOCAL weights file (never downloaded)")
    group.add_argument(f"--{prefix}detector-arch", default="fasterrcnn_resnet50_fpn",
                       help="torchvision boxes: the detector architecture")
    group.add_argument(f"--{prefix}detector-threshold", type=float, default=None,
                       help="detector boxes: minimum score in [0, 1] (default: the provider's own)")
    group.add_argument(f"--{prefix}detector-device", default="cpu", help="detector boxes: the device it runs on")


def box_options(args, prefix: str = "") -> dict:
    """``make_box_provider`` options from the flags of ``add_box_arguments``; ComAlignDataError naming the flag
    when the provider lacks its file or the threshold is outside [0, 1]."""
    dest = prefix.replace("-", "_")
    name = getattr(args, f"{dest}boxes")
    scenes, weights = getattr(args, f"{dest}scenes"), getattr(args, f"{dest}detector_weights")
    threshold = getattr(args, f"{dest}detector_threshold")
    if name == "gt":
        if not scenes:
            raise ComAlignDataError(f"--{prefix}boxes gt needs --{prefix}scenes DIR/scenes.jsonl (ShapeCrepe's scene "
                                    f"graphs)")
        return {"scenes": [str(s) for s in scenes]}
    if name not in ("torchvision", "ultralytics"):
        return {}
    if not weights:
        raise ComAlignDataError(f"--{prefix}boxes {name} needs --{prefix}detector-weights FILE (local weights; "
                                f"nothing is downloaded)")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ComAlignDataError(f"--{prefix}detector-threshold must be in [0, 1], got {threshold}")
    options = {"weights_path": str(weights), "device": getattr(args, f"{dest}detector_device")}
    if threshold is not None:
        options["score_threshold"] = threshold
    if name == "torchvision":
        options["arch"] = getattr(args, f"{dest}detector_arch")
    return options


def box_provider_from_args(args, prefix: str = "") -> "BoxProvider":
    """The provider the ``add_box_arguments`` flags describe."""
    return make_box_provider(getattr(args, f"{prefix.replace('-', '_')}boxes"), **box_options(args, prefix))
