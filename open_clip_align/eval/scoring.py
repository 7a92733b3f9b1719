"""Scoring models on items: each unique image and caption encoded once, in batches, under inference_mode.

``DualEncoderScorer`` wraps any open_clip-style model (``encode_image``/``encode_text``): s(image, caption) is
the cosine of the L2-normalised embeddings. Other scorers (e.g. ComAlign's) only need ``score_items``.
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from .cache import FeatureCache
from .items import ImageRef, Item


def pairwise_decisions(pos_scores: torch.Tensor, neg_scores: torch.Tensor):
    """Official SugarCrepe rule: correct iff ``pos > neg`` strictly, so a tie is wrong.

    pos_scores, neg_scores: [n]. Returns ``(correct [n] bool, tie [n] bool)``.
    """
    return pos_scores > neg_scores, pos_scores == neg_scores


class _RefDataset(torch.utils.data.Dataset):
    def __init__(self, refs: Sequence[ImageRef], preprocess: Callable):
        self.refs, self.preprocess = refs, preprocess

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, i):
        return self.preprocess(self.refs[i].load())


class DualEncoderScorer:
    """Cosine scores of a dual encoder, with per-run (and optionally on-disk) feature reuse.

    ``model`` needs ``encode_image(pixels)`` and ``encode_text(tokens)``; ``preprocess`` maps a PIL image to a
    tensor; ``tokenizer`` maps a list of strings to tokens. ``cache`` persists image features across runs.
    """

    def __init__(self, model, preprocess: Callable, tokenizer: Callable, device="cpu", batch_size: int = 64,
                 text_batch_size: int = 256, workers: int = 0, cache: Optional[FeatureCache] = None,
                 progress: bool = True):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.batch_size, self.text_batch_size = torch.device(device), batch_size, text_batch_size
        self.workers, self.cache, self.progress = workers, cache, progress
        self._images: Dict[ImageRef, torch.Tensor] = {}
        self._texts: Dict[str, torch.Tensor] = {}
        self._text_norms: Dict[str, float] = {}
        self.images_encoded = 0  # images actually run through the model (not found in memory or on disk)

    @property
    def _dtype(self):
        params = getattr(self.model, "parameters", None)
        first = next(params(), None) if params is not None else None
        return first.dtype if first is not None else torch.float32

    @torch.inference_mode()
    def image_features(self, refs: Sequence[ImageRef]) -> Dict[ImageRef, torch.Tensor]:
        """``{ref: [D]}`` L2-normalised, fp32 on CPU; each unique ref encoded at most once per scorer."""
        todo = []
        for ref in dict.fromkeys(refs):
            if ref in self._images:
                continue
            cached = self.cache.get(ref) if self.cache is not None else None
            if cached is not None:
                self._images[ref] = cached
            else:
                todo.append(ref)
        if todo:
            loader = torch.utils.data.DataLoader(_RefDataset(todo, self.preprocess), batch_size=self.batch_size,
                                                 num_workers=self.workers)
            done = 0
            for pixels in tqdm(loader, desc="encode images", leave=False, disable=not self.progress):
                feats = self.model.encode_image(pixels.to(self.device, dtype=self._dtype))
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
                for ref, feat in zip(todo[done:done + len(feats)], feats):
                    self._images[ref] = feat
                    if self.cache is not None:
                        self.cache.put(ref, feat)
                done += len(feats)
            self.images_encoded += len(todo)
            if self.cache is not None:
                self.cache.save()
        return {ref: self._images[ref] for ref in refs}

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``{caption: [D]}`` L2-normalised, fp32 on CPU; each unique caption encoded once."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._texts]
        for start in tqdm(range(0, len(todo), self.text_batch_size), desc="encode texts", leave=False,
                          disable=not self.progress):
            chunk = todo[start:start + self.text_batch_size]
            raw = self.model.encode_text(self.tokenizer(chunk).to(self.device)).float().cpu()
            norms = raw.norm(dim=-1)
            for text, feat, norm in zip(chunk, torch.nn.functional.normalize(raw, dim=-1), norms):
                self._texts[text], self._text_norms[text] = feat, norm.item()
        return {t: self._texts[t] for t in texts}

    def text_norms(self, texts: Sequence[str]) -> Dict[str, float]:
        """The text tower's unnormalised embedding norm per caption (a blind 'caption prior' score)."""
        self.text_features(texts)
        return {t: self._text_norms[t] for t in texts}

    def score_items(self, items: Sequence[Item]) -> List[torch.Tensor]:
        """One ``[n_images, n_captions]`` cosine matrix per item (all images/texts encoded up front)."""
        images = self.image_features([ref for it in items for ref in it.images])
        texts = self.text_features([c for it in items for c in it.captions])
        return [torch.stack([images[r] for r in it.images]) @ torch.stack([texts[c] for c in it.captions]).T
                for it in items]
