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


@torch.inference_mode()
def encode_images(model, paths: Sequence[str], preprocess: Callable, device, batch_size: int = 64,
                  desc: str = "images", progress: bool = True) -> Dict[str, torch.Tensor]:
    """L2-normalised image features for each *unique* path: ``{path: [D]}`` (each image encoded once)."""
    unique = list(dict.fromkeys(paths))
    features = {}
    for start in tqdm(range(0, len(unique), batch_size), desc=f"encode {desc}", leave=False,
                      disable=not progress):
        chunk = unique[start:start + batch_size]
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in chunk]).to(device)
        emb = model.encode_image(pixels, normalize=True).float().cpu()
        features.update(zip(chunk, emb))
    return features


@torch.inference_mode()
def encode_texts(model, tokenizer: Callable, texts: Sequence[str], device, batch_size: int = 256,
                 desc: str = "texts", progress: bool = True) -> Dict[str, torch.Tensor]:
    """L2-normalised text features for each unique caption: ``{caption: [D]}``."""
    unique = list(dict.fromkeys(texts))
    features = {}
    for start in tqdm(range(0, len(unique), batch_size), desc=f"encode {desc}", leave=False,
                      disable=not progress):
        chunk = unique[start:start + batch_size]
        emb = model.encode_text(tokenizer(chunk).to(device), normalize=True).float().cpu()
        features.update(zip(chunk, emb))
    return features
