"""Token rows of a sample's captions, ``[1+K, L]``, without running the tokenizer on every access.

A hard-negative sample has 1+K captions; tokenizing them at every access made the loaders 0.56-0.77x as
fast as open_clip's ``CsvDataset`` (one caption per sample; ``benchmarks/bench_hardneg.py``). So:

* :class:`PretokenizedCaptions` (map-style data: csv, degla-json, jsonl, ceclip-npy) tokenizes every unique
  caption once, when the dataset is built, in batches, and keeps the rows compactly (each row's prefix up to
  its trailing padding, in the narrowest integer type); an access only copies rows.
* :class:`CachedTokenizer` (wds, whose captions are only seen while streaming) tokenizes a batch's captions in
  one call and keeps the most recently used rows, so captions that recur (the same negative in several
  samples, every epoch on small data) are tokenized once per worker.

Both tokenize through ``ascii_fast_path`` (open_clip's cleaning without ftfy for printable-ASCII captions, which
ftfy leaves unchanged) and give exactly the token ids of calling the tokenizer on
``[caption, *negatives]``: open_clip's tokenizers
pad every caption to the context length on its own (``tests/test_hardneg_data.py`` compares every sample).
A None negative (an invalid one) and the rows past the selected negatives stay all-zero, for the losses to mask.
"""
import copy
import logging
import multiprocessing
import time
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

__all__ = ["CachedTokenizer", "PretokenizedCaptions", "ascii_fast_path", "sample_tokens"]

Tokenizer = Callable[[List[str]], torch.Tensor]  # list of n captions -> LongTensor [n, L]


def _lower(text: str) -> str:
    return " ".join(text.split()).lower()


def _whitespace(text: str) -> str:
    return " ".join(text.split())


def _open_clip_cleaners() -> dict:
    """open_clip's cleaning functions that have an ASCII fast path: ``{function: fast function}``."""
    from open_clip import tokenizer as oc
    pairs = ((getattr(oc, "_clean_lower", None), _lower), (getattr(oc, "_clean_whitespace", None), _whitespace))
    return {slow: fast for slow, fast in pairs if slow is not None}


class _AsciiFastClean:
    """open_clip's text cleaning (``slow``: ftfy.fix_text, HTML unescaping twice, then whitespace and case) with
    a shortcut for text of printable ASCII without ``&``, which ftfy and the unescaping leave unchanged: then only
    the whitespace and case steps run (``fast``). ftfy is most of a caption's tokenizing time."""

    def __init__(self, slow: Callable[[str], str], fast: Callable[[str], str]):
        self.slow, self.fast = slow, fast

    def __call__(self, text: str) -> str:
        if text.isascii() and text.isprintable() and "&" not in text:
            return self.fast(text)
        return self.slow(text)


def ascii_fast_path(tokenizer: Tokenizer) -> Tokenizer:
    """A shallow copy of an open_clip tokenizer whose cleaning takes ``_AsciiFastClean``'s shortcut (same token
    ids, tested on ASCII, non-ASCII and HTML-escaped captions), or ``tokenizer`` itself when its cleaning is not
    one with a shortcut (``canonicalize``, a Hugging Face tokenizer without ``clean_fn``, any other callable)."""
    fast = _open_clip_cleaners().get(getattr(tokenizer, "clean_fn", None))
    if fast is None:
        return tokenizer
    out = copy.copy(tokenizer)
    out.clean_fn = _AsciiFastClean(tokenizer.clean_fn, fast)
    return out


def sample_tokens(rows: torch.Tensor, present: Sequence[int], k: int) -> torch.Tensor:
    """Place ``rows`` [n, L] (the positive, then the present negatives) at rows ``[0, *present]`` of a zero
    LongTensor [1+K, L] (``rows`` itself when all K negatives are present)."""
    if rows.shape[0] == 1 + k:
        return rows
    out = rows.new_zeros((1 + k, rows.shape[-1]))
    out[[0, *present]] = rows
    return out


def _present(negatives: Sequence[Optional[str]]) -> List[int]:
    """Rows (1-based) of the negatives that are not None."""
    return [1 + i for i, neg in enumerate(negatives) if neg is not None]


class PretokenizedCaptions:
    """Every unique caption of a dataset tokenized once; ``encode`` builds a sample's rows by lookup.

    Rows are stored ragged: for each caption the prefix before its trailing run of one value (the padding),
    that value and the prefix length, in the narrowest integer types (uint16 ids for open_clip's 49,408-token
    vocabulary): about 45 bytes per COCO-like caption, 14x less than a LongTensor row at L = 77, plus the
    caption -> row dictionary (about 100 bytes per caption besides the strings). With ``workers`` > 1 the
    batches of captions are tokenized by that many forked processes (the DataLoader's worker count: the
    tokenizing they no longer do per access is done here, in parallel too).
    """

    batch = 4096  # captions per tokenizer call

    def __init__(self, tokenizer: Tokenizer, captions: Iterable[str], progress: bool = False, workers: int = 0):
        start = time.perf_counter()
        self._index = {}
        for caption in captions:
            self._index.setdefault(caption, len(self._index))
        unique = list(self._index)
        chunks = [unique[begin:begin + self.batch] for begin in range(0, len(unique), self.batch)]
        parts = list(tqdm(_tokenized(ascii_fast_path(tokenizer), chunks, workers), total=len(chunks),
                          desc="Tokenizing captions", unit="batch", disable=not progress or len(chunks) < 25))
        prefixes, pads, lengths, widths = zip(*parts) if parts else ([np.zeros(0, np.int64)],) * 3 + ((0,),)
        self.context_length = widths[0]
        self._flat, self._pad, self._length = (_narrowed(np.concatenate(a)) for a in (prefixes, pads, lengths))
        self._start = np.concatenate([[0], np.cumsum(self._length, dtype=np.int64)[:-1]])
        if progress and len(chunks) >= 25:
            logging.info(f"Tokenized {len(unique)} unique captions in {time.perf_counter() - start:.1f} s "
                         f"({self._flat.nbytes / 2 ** 20:.0f} MiB)")

    def __len__(self) -> int:
        return len(self._index)

    def rows(self, captions: Sequence[str]) -> torch.Tensor:
        """LongTensor [n, L] of ``captions`` (each one of the captions given at construction)."""
        ids = [self._index[c] for c in captions]
        out = np.repeat(self._pad[ids].astype(np.int64)[:, None], self.context_length, axis=1)
        for row, u in zip(out, ids):
            start, length = self._start[u], self._length[u]
            row[:length] = self._flat[start:start + length]
        return torch.from_numpy(out)

    def encode(self, caption: str, negatives: Sequence[Optional[str]], k: int) -> torch.Tensor:
        """LongTensor [1+K, L]: the caption, then its negatives (None stays an all-zero row), zero rows to 1+K."""
        return sample_tokens(self.rows([caption, *(n for n in negatives if n is not None)]), _present(negatives), k)


def _compact(tokens) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Token rows [n, L] -> (their prefixes before the trailing padding, concatenated; the padding value of each
    row [n]; the prefix lengths [n]; L)."""
    tokens = np.asarray(tokens.numpy() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64)
    pad = tokens[:, -1]
    trailing = np.cumprod((tokens == pad[:, None])[:, ::-1], axis=1).sum(axis=1)
    length = tokens.shape[1] - trailing
    return tokens[np.arange(tokens.shape[1])[None, :] < length[:, None]], pad, length, tokens.shape[1]


_POOL_TOKENIZER = None  # the tokenizer, in a tokenizing process


def _set_pool_tokenizer(tokenizer: Tokenizer) -> None:
    global _POOL_TOKENIZER
    _POOL_TOKENIZER = tokenizer


def _tokenize_compact(texts: List[str]):
    return _compact(_POOL_TOKENIZER(texts))


def _tokenized(tokenizer: Tokenizer, chunks: List[List[str]], workers: int) -> Iterator[tuple]:
    """``_compact(tokenizer(chunk))`` for every chunk, in order; by ``workers`` forked processes when there are
    several chunks and the platform forks (the tokenizer is then inherited, not pickled)."""
    workers = min(workers, len(chunks))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        yield from (_compact(tokenizer(chunk)) for chunk in chunks)
        return
    with multiprocessing.get_context("fork").Pool(workers, _set_pool_tokenizer, (tokenizer,)) as pool:
        yield from pool.imap(_tokenize_compact, chunks)


def _narrowed(values: np.ndarray) -> np.ndarray:
    """``values`` in the smallest of uint16, int32 and int64 that holds them all."""
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dtype in (np.uint16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values


class CachedTokenizer:
    """The tokenizer with a least-recently-used cache of ``maxsize`` caption rows (one per worker process)."""

    def __init__(self, tokenizer: Tokenizer, maxsize: int = 1 << 16):
        self.tokenizer, self.maxsize = ascii_fast_path(tokenizer), maxsize
        self._rows = OrderedDict()  # caption -> LongTensor [L]

    def rows(self, captions: Sequence[str]) -> torch.Tensor:
        """LongTensor [n, L] of ``captions``; the ones not cached are tokenized in one call."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._rows))
        if missing:
            for caption, row in zip(missing, self.tokenizer(missing)):
                self._rows[caption] = row.clone()  # not a view that would keep the whole batch alive
        for caption in captions:
            self._rows.move_to_end(caption)
        out = torch.stack([self._rows[c] for c in captions])
        while len(self._rows) > self.maxsize:
            self._rows.popitem(last=False)
        return out

    def encode_batch(self, samples: Sequence[Tuple[str, Sequence[Optional[str]]]], k: int) -> torch.Tensor:
        """LongTensor [B,1+K,L] of ``(caption, negatives)`` pairs, each as ``PretokenizedCaptions.encode``."""
        texts = [[caption, *(n for n in negatives if n is not None)] for caption, negatives in samples]
        rows = self.rows([t for sample in texts for t in sample]).split([len(sample) for sample in texts])
        return torch.stack([sample_tokens(r, _present(negatives), k) for r, (_, negatives) in zip(rows, samples)])
