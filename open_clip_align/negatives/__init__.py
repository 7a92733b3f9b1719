"""DeGLA's negative-caption pipeline: hard negative captions for image-caption data, resumably.

``python -m open_clip_align.negatives`` reads captions (COCO JSON, CSV/TSV, JSONL), asks a backend for
candidates of each negative type, validates them and appends one JSONL training row per caption; ``convert``
turns that file into the csv, degla-json and webdataset training formats. See ``cli.py``.
"""
from . import hf_backend, openai_backend, rules  # importing a backend module registers it
from .base import (DEGLA_TYPES, NEG_TYPES, Backend, BackendError, Request, create_backend, list_backends,
                   register_backend)
from .cli import generate, main
from .io import CaptionRow, InputError, convert, read_captions

__all__ = ["DEGLA_TYPES", "NEG_TYPES", "Backend", "BackendError", "CaptionRow", "InputError", "Request", "convert",
           "create_backend", "generate", "hf_backend", "list_backends", "main", "openai_backend", "read_captions",
           "register_backend", "rules"]
