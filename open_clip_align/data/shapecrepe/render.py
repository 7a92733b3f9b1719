"""Drawing a ShapeCrepe scene with PIL: jittered colours on a grainy, tinted background, deterministic given a
seed."""
import io

import numpy as np
from PIL import Image, ImageDraw

from .scenes import COLOURS, Scene

COLOUR_JITTER = 15
_GRAIN = 4  # background grain amplitude; 2x2-pixel blocks keep PNGs small


def render(scene: Scene, image_size: int, seed: int) -> Image.Image:
    """Draw ``scene`` in jittered colours on a dark, slightly tinted background with a grain of 2x2-pixel
    blocks; ``seed`` fixes every noise draw."""
    rng = np.random.default_rng(seed)
    tint = rng.integers(15, 45, 3, dtype=np.int16)
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3 * len(scene.objects)).tolist()
    half = (image_size + 1) // 2
    grain = rng.integers(-_GRAIN, _GRAIN + 1, (half, half, 1), dtype=np.int16)
    image = Image.fromarray((tint + grain).astype(np.uint8)).resize((2 * half,) * 2, Image.NEAREST)
    image = image.crop((0, 0, image_size, image_size)) if image_size % 2 else image
    draw = ImageDraw.Draw(image)
    for i, obj in enumerate(scene.objects):
        fill = tuple(min(255, max(0, c + j)) for c, j in zip(COLOURS[obj.colour], jitter[3 * i:3 * i + 3]))
        if obj.shape == "circle":
            draw.ellipse(obj.bbox, fill=fill)
        else:
            draw.polygon(obj.outline(), fill=fill)
    return image


def png_bytes(scene: Scene, image_size: int, seed: int) -> bytes:
    """PNG bytes of ``render``; the fastest compression, since the grain dominates the size anyway."""
    buffer = io.BytesIO()
    render(scene, image_size, seed).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
