"""Encoding and pairwise decision rules shared by the benchmark adapters."""
from typing import Callable, Dict, Sequence

import torch
from PIL import Image
from tqdm import tqdm


def pairwise_decisions(pos_scores: torch.Tensor, neg_scores: torch.Tensor):
    """Official SugarCrepe rule: correct iff ``pos > neg`` strictly, so a tie is wrong.

    pos_scores, neg_scores: [n]. Returns ``(correct [n] bool, tie [n] bool)``.
    """
    return pos_scores > neg_scores, pos_scores == neg_scores


def _encode_unique(keys: Sequence[str], encode_batch: Callable, batch_size: int, desc: str,
                   progress: bool) -> Dict[str, torch.Tensor]:
    """``{key: [D]}`` for each unique key, encoding ``batch_size`` keys per ``encode_batch(list) -> [n, D]``."""
    unique = list(dict.fromkeys(keys))
    features = {}
    for start in tqdm(range(0, len(unique), batch_size), desc=f"encode {desc}", leave=False, disable=not progress):
        chunk = unique[start:start + batch_size]
        features.update(zip(chunk, encode_batch(chunk).float().cpu()))
    return features


@torch.inference_mode()
def encode_images(model, paths: Sequence[str], preprocess: Callable, device, batch_size: int = 64,
                  progress: bool = True) -> Dict[str, torch.Tensor]:
    """L2-normalised image features for each *unique* path: ``{path: [D]}`` (each image encoded once)."""
    def encode(chunk):
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in chunk]).to(device)
        return model.encode_image(pixels, normalize=True)
    return _encode_unique(paths, encode, batch_size, "images", progress)


@torch.inference_mode()
def encode_texts(model, tokenizer: Callable, texts: Sequence[str], device, batch_size: int = 256,
                 progress: bool = True) -> Dict[str, torch.Tensor]:
    """L2-normalised text features for each unique caption: ``{caption: [D]}``."""
    def encode(chunk):
        return model.encode_text(tokenizer(chunk).to(device), normalize=True)
    return _encode_unique(texts, encode, batch_size, "texts", progress)
