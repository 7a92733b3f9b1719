"""Rendering ComAlign's views (spec §2.2) and stacking them into the model's view tensor.

A view shows one box: ``grey`` (the figure's rendering, default) keeps the whole image and replaces every pixel
outside the box by its luminance L = 0.299 R + 0.587 G + 0.114 B (rounded, replicated to 3 channels), the box
untouched; ``crop`` is the box cut out. A box covers the pixel columns ``floor(x0) .. ceil(x1) - 1`` and rows
``floor(y0) .. ceil(y1) - 1``, clipped to the image, at least one pixel. ``letterbox=True`` pads each view to
a square (centred, black) before the model's preprocessing, whose centre crop would otherwise cut boxes near
the long edges of non-square images.
"""
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .boxes import Box, BoxProvider, select_views

MODES = ("grey", "crop")
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class BoxShift:
    """Maps boxes of an image into its letterboxed square: a shift by ``(dx, dy)`` pixels."""

    dx: int
    dy: int

    def __call__(self, box: Box) -> Box:
        return box.shifted(self.dx, self.dy)


def letterbox(image: Image.Image, fill=(0, 0, 0)) -> Tuple[Image.Image, BoxShift]:
    """``(square, shift)``: ``image`` centred on a ``fill`` square of side max(w, h) (odd margins: the extra
    pixel goes right/bottom), and the ``BoxShift`` mapping its boxes into the square."""
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    shift = BoxShift((side - w) // 2, (side - h) // 2)
    if w == h:
        return image, shift
    square = Image.new("RGB", (side, side), tuple(fill))
    square.paste(image, (shift.dx, shift.dy))
    return square, shift


_letterbox = letterbox  # view_tensor's ``letterbox`` flag shadows the function


def box_pixels(box: Box, width: int, height: int) -> Tuple[int, int, int, int]:
    """``(c0, r0, c1, r1)``: the half-open pixel rectangle a box covers (see the module docstring)."""
    def span(lo: float, hi: float, size: int) -> Tuple[int, int]:
        a = min(max(int(np.floor(lo)), 0), size - 1)
        b = min(max(int(np.ceil(hi)), a + 1), size)
        return a, b
    c0, c1 = span(box.x0, box.x1, width)
    r0, r1 = span(box.y0, box.y1, height)
    return c0, r0, c1, r1


def luminance(pixels: np.ndarray) -> np.ndarray:
    """``[H, W, 3] uint8`` RGB -> ``[H, W, 3] uint8`` grey (L rounded, replicated to 3 channels)."""
    grey = np.rint(pixels.astype(np.float32) @ np.asarray(LUMA, dtype=np.float32)).clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _render(image: Image.Image, pixels: np.ndarray, grey: np.ndarray, box: Box, mode: str) -> Image.Image:
    c0, r0, c1, r1 = box_pixels(box, image.width, image.height)
    if mode == "crop":
        return image.crop((c0, r0, c1, r1))
    out = grey.copy()
    out[r0:r1, c0:c1] = pixels[r0:r1, c0:c1]
    return Image.fromarray(out)


def render_view(image: Image.Image, box: Box, mode: str = "grey") -> Image.Image:
    """One view of ``box`` in ``image`` (RGB PIL image of the same size for ``grey``, the crop for ``crop``)."""
    if mode not in MODES:
        raise ValueError(f"unknown render mode {mode!r}; expected one of {', '.join(MODES)}")
    image = image.convert("RGB")
    pixels = np.asarray(image)
    return _render(image, pixels, luminance(pixels) if mode == "grey" else None, box, mode)


def view_tensor(image: Image.Image, entity_boxes: Sequence[Box], relation_boxes: Sequence[Box],
                preprocess: Callable[[Image.Image], torch.Tensor], n_entity: int = 10, n_relation: int = 10,
                mode: str = "grey", letterbox: bool = False
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(views [n_entity + n_relation + 1, 3, H, W], entity_mask [n_entity] bool, relation_mask [n_relation]
    bool)``: slots ``0..n_entity-1`` the entity views, then the relation views, then the whole image
    (``preprocess(image)``, never letterboxed: it is the CLIP global input). Pad slots are all-zero tensors
    (a real preprocessed view is never all zero) and False in the masks."""
    if mode not in MODES:
        raise ValueError(f"unknown render mode {mode!r}; expected one of {', '.join(MODES)}")
    if len(entity_boxes) > n_entity or len(relation_boxes) > n_relation:
        raise ValueError(f"{len(entity_boxes)} entity / {len(relation_boxes)} relation boxes for {n_entity} / "
                         f"{n_relation} slots; select_views caps them")
    image = image.convert("RGB")
    whole = preprocess(image)
    views = torch.zeros((n_entity + n_relation + 1, *whole.shape), dtype=whole.dtype)
    views[-1] = whole
    pixels = np.asarray(image)
    grey = luminance(pixels) if mode == "grey" else None
    slots = [*enumerate(entity_boxes), *((n_entity + k, box) for k, box in enumerate(relation_boxes))]
    for slot, box in slots:
        view = _render(image, pixels, grey, box, mode)
        views[slot] = preprocess(_letterbox(view)[0] if letterbox else view)
    entity_mask = torch.arange(n_entity) < len(entity_boxes)
    relation_mask = torch.arange(n_relation) < len(relation_boxes)
    return views, entity_mask, relation_mask


def image_views(image: Image.Image, key: str, provider: BoxProvider, preprocess: Callable[[Image.Image], torch.Tensor],
                n_entity: int = 10, n_relation: int = 10, mode: str = "grey", letterbox: bool = False):
    """One image's component views: ``provider`` boxes -> the top ``n_entity`` boxes and the unions of the top
    ``n_relation`` pairs (``select_views``) -> ``view_tensor``. ``key`` is what the provider looks the image up
    by (its file path). Returns ``(views, entity_mask, relation_mask, entity_boxes, relation_boxes)``."""
    boxes = provider(image, key)
    entity_boxes, relation_boxes = select_views(boxes, provider.relation_pairs(boxes), n_entity, n_relation)
    views, entity_mask, relation_mask = view_tensor(image, entity_boxes, relation_boxes, preprocess, n_entity,
                                                    n_relation, mode, letterbox)
    return views, entity_mask, relation_mask, entity_boxes, relation_boxes
