"""Scoring models on items: each unique image and caption encoded once, in batches, under inference_mode.

``DualEncoderScorer`` wraps any open_clip-style model (``encode_image``/``encode_text``): s(image, caption) is
the cosine of the L2-normalised embeddings. Other scorers (e.g. ComAlign's) only need ``score_items``.

Exact ties stay ties. A float32 ``[n, D] @ [D, m]`` product can give two identical columns different values
(BLAS blocking and edge kernels depend on the shapes and on a column's position: ~1e-9 apart), so an item
whose two captions are the same string could be decided by noise. Here (1) features are computed once per
unique token sequence, so equal captions share one feature tensor, and (2) every cosine is computed *exactly*
on fixed-point copies of the features (``fixed_point``, ``exact_cosines``): the score of a pair is then a
function of that pair's two vectors alone, whatever the batch, shapes or column order. Text-text cosines
(``score_text_pairs``, SugarCrepe++'s text-only task) use the same arithmetic.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from .cache import FeatureCache
from .items import ImageRef, Item

# float64 holds integers up to 2^53 exactly
_SIGNIFICAND_BITS = 53
_MAX_NORM = 1.0 + 2.0 ** -10  # inputs of fixed_point must be L2-normalised (up to float rounding)
PAIR_CHUNK = 8192  # (image, caption) pairs per elementwise product in score_items


def exact_bits(n_terms: int = 1) -> int:
    """Fixed-point bits b for which a sum of ``n_terms`` dot products is exact in float64.

    With vectors of norm <= ``_MAX_NORM`` rounded to multiples of 2^-b, every product of two components is a
    multiple of 2^-2b and every partial sum of a dot product is bounded by Σ|a_i b_i| <= ‖a‖‖b‖ < 2
    (Cauchy-Schwarz), so a sum of ``n_terms`` such dot products is a multiple of 2^-2b below 2·n_terms in
    magnitude: exact when 2·n_terms·2^2b <= 2^53. One cosine: b = 26 (rounding error <= 2^-27 per component,
    below float32's resolution of a cosine); ComAlign's means over 10 components: b = 24.
    """
    return (_SIGNIFICAND_BITS - 1 - math.ceil(math.log2(max(1, n_terms)))) // 2


def fixed_point(features: torch.Tensor, bits: Optional[int] = None) -> torch.Tensor:
    """float64 copy of L2-normalised ``features [..., D]`` rounded to multiples of 2^-bits (default
    ``exact_bits()``): dot products of such copies are exact in float64 in any summation order, blocking or
    FMA use (see ``exact_bits``), hence bit-identical for equal inputs. Raises ValueError on a norm > 1."""
    bits = exact_bits() if bits is None else bits
    features = features.double()
    largest = features.norm(dim=-1).max().item() if features.numel() else 0.0
    if largest > _MAX_NORM:
        raise ValueError(f"fixed_point needs L2-normalised features (norm <= 1), got a norm of {largest:.6g}")
    scale = 2.0 ** bits
    return torch.round(features * scale) / scale


def exact_cosines(image_features: torch.Tensor, text_features: torch.Tensor,
                  max_block_elements: int = 1 << 23) -> torch.Tensor:
    """Cosines ``[Ni, Nt]`` (float32) of L2-normalised ``image_features [Ni, D]`` and ``text_features [Nt, D]``.

    Computed exactly on ``fixed_point`` copies in float64 (image rows in blocks of at most
    ``max_block_elements`` float64 outputs) and rounded once to float32, so entry (i, t) depends on image i and
    text t only: equal inputs give bit-identical scores in any position of any call.
    """
    images, texts = fixed_point(image_features), fixed_point(text_features)
    out = torch.empty(images.shape[0], texts.shape[0], dtype=torch.float32)
    rows = max(1, max_block_elements // max(1, texts.shape[0]))
    for start in range(0, images.shape[0], rows):
        out[start:start + rows] = (images[start:start + rows] @ texts.T).float()
    return out


def exact_pair_dots(left: torch.Tensor, right: torch.Tensor, left_index: torch.Tensor,
                    right_index: torch.Tensor) -> torch.Tensor:
    """``[n]`` float32: dot product of ``left[left_index[k]]`` and ``right[right_index[k]]`` for every k, where
    ``left [A, D]`` / ``right [B, D]`` are ``fixed_point`` copies: each entry is exact (a function of its two rows
    alone), computed elementwise in chunks of ``PAIR_CHUNK`` pairs."""
    out = torch.empty(len(left_index), dtype=torch.float32)
    for start in range(0, len(out), PAIR_CHUNK):
        rows = slice(start, start + PAIR_CHUNK)
        out[rows] = (left[left_index[rows]] * right[right_index[rows]]).sum(dim=-1).float()
    return out


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
        self._by_tokens: Dict[bytes, tuple] = {}  # token row -> (feature [D], norm)
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
        """``{caption: [D]}`` L2-normalised, fp32 on CPU.

        Each unique *token sequence* is encoded once: captions that tokenize alike (the same string, or e.g. case
        and spacing the tokenizer folds) share one feature tensor. Encoding the same caption in batches of other
        sizes can move its feature by ~1e-6 on CPU, so sharing is what makes duplicates bit-identical.
        """
        todo = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if todo:
            tokens = torch.as_tensor(self.tokenizer(todo))
            keys = [row.numpy().tobytes() for row in tokens.cpu()]
            first = {}
            for index, key in enumerate(keys):
                if key not in self._by_tokens:
                    first.setdefault(key, index)
            new_keys, rows = list(first), list(first.values())
            for start in tqdm(range(0, len(rows), self.text_batch_size), desc="encode texts", leave=False,
                              disable=not self.progress):
                chunk = rows[start:start + self.text_batch_size]
                raw = self.model.encode_text(tokens[chunk].to(self.device)).float().cpu()
                for key, feat, norm in zip(new_keys[start:start + len(chunk)],
                                           torch.nn.functional.normalize(raw, dim=-1), raw.norm(dim=-1)):
                    self._by_tokens[key] = (feat, norm.item())
            for text, key in zip(todo, keys):
                self._texts[text], self._text_norms[text] = self._by_tokens[key]
        return {t: self._texts[t] for t in texts}

    def text_norms(self, texts: Sequence[str]) -> Dict[str, float]:
        """The text tower's unnormalised embedding norm per caption (a blind 'caption prior' score)."""
        self.text_features(texts)
        return {t: self._text_norms[t] for t in texts}

    def score_items(self, items: Sequence[Item]) -> List[torch.Tensor]:
        """One ``[n_images, n_captions]`` float32 cosine matrix per item (all images/texts encoded up front).

        Entry (i, j) depends only on image i and caption j: every (image, caption) pair of every item is one
        exact dot product of ``fixed_point`` copies (made once per unique feature), so a caption repeated within
        an item ties exactly and a pair scores the same in every item and position.
        """
        if not items:
            return []
        images = self.image_features([ref for it in items for ref in it.images])
        texts = self.text_features([c for it in items for c in it.captions])
        image_row = {r: i for i, r in enumerate(images)}
        text_row = {c: i for i, c in enumerate(texts)}
        image_fp = fixed_point(torch.stack(list(images.values())))
        text_fp = fixed_point(torch.stack(list(texts.values())))
        pair_image = torch.tensor([image_row[r] for it in items for r in it.images for _ in it.captions])
        pair_text = torch.tensor([text_row[c] for it in items for _ in it.images for c in it.captions])
        scores = exact_pair_dots(image_fp, text_fp, pair_image, pair_text)
        sizes = [len(it.images) * len(it.captions) for it in items]
        return [block.view(len(it.images), len(it.captions)) for block, it in zip(scores.split(sizes), items)]

    def score_text_pairs(self, items: Sequence[Item]) -> List[torch.Tensor]:
        """One ``[n_captions, n_captions]`` float32 text-text cosine matrix per item (SugarCrepe++'s text-only
        task), with ``score_items``' exact arithmetic: entry (j, k) depends only on captions j and k, so equal
        captions give equal rows and a caption's cosine with itself is the same number in every item."""
        if not items:
            return []
        texts = self.text_features([c for it in items for c in it.captions])
        text_row = {c: i for i, c in enumerate(texts)}
        text_fp = fixed_point(torch.stack(list(texts.values())))
        left = torch.tensor([text_row[a] for it in items for a in it.captions for _ in it.captions])
        right = torch.tensor([text_row[b] for it in items for _ in it.captions for b in it.captions])
        scores = exact_pair_dots(text_fp, text_fp, left, right)
        sizes = [len(it.captions) ** 2 for it in items]
        return [block.view(len(it.captions), len(it.captions)) for block, it in zip(scores.split(sizes), items)]
