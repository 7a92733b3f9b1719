"""On-disk cache of image features across evaluation runs (``--cache-dir``).

One file per (model, weights, precision, preprocessing) holds ``{image key: feature [D]}``. An image key
includes the file's size and modification time, so an edited image is re-encoded; a changed checkpoint file
gives a different model key. Writes go to a temporary file that is then renamed.
"""
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from .items import ImageRef


def model_key(model_name: str, pretrained: Optional[str], precision: str, preprocess_cfg: dict) -> str:
    """A stable id for the features a model produces; a weights *file* contributes its size and mtime."""
    weights = pretrained or ""
    if weights and os.path.isfile(weights):
        st = os.stat(weights)
        weights = f"{os.path.abspath(weights)}:{st.st_size}:{st.st_mtime_ns}"
    blob = json.dumps([model_name, weights, precision, preprocess_cfg], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def image_key(ref: ImageRef) -> str:
    st = os.stat(ref.path)
    return f"{os.path.abspath(ref.path)}:{st.st_size}:{st.st_mtime_ns}:{ref.box}"


class FeatureCache:
    """``get``/``put`` image features for one model key; ``save()`` persists new entries."""

    def __init__(self, cache_dir, key: str):
        self.path = Path(cache_dir) / f"image-features-{key}.pt"
        self.features: Dict[str, torch.Tensor] = {}
        if self.path.is_file():
            try:
                self.features = torch.load(self.path, weights_only=True)
            except Exception as err:  # a cache is disposable: say so and rebuild it rather than stop
                logging.warning(f"feature cache {self.path} is unreadable ({type(err).__name__}); ignoring it, "
                                f"it is rewritten after this run's encoding")
            if not isinstance(self.features, dict):
                logging.warning(f"feature cache {self.path} holds no feature table; ignoring it")
                self.features = {}
        self.dirty = False

    def get(self, ref: ImageRef) -> Optional[torch.Tensor]:
        return self.features.get(image_key(ref))

    def put(self, ref: ImageRef, feature: torch.Tensor) -> None:
        self.features[image_key(ref)] = feature
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(self.features, tmp)
        os.replace(tmp, self.path)
        self.dirty = False
