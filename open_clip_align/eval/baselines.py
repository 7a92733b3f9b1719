"""Blind (text-only) baselines: scorers that never look at the image, plugged into each benchmark's metrics.

A blind scorer gives every caption a prior score p(c) and returns, per item, the matrix ``[n_images,
n_captions]`` with entry (i, j) = p(caption j) for every image i. Each benchmark's own ``metrics(items,
scores)`` then turns it into accuracies with that benchmark's own tie rule, so a blind number is directly
comparable with the model's. Two priors ship:

- ``ngram``: an add-k smoothed n-gram LM fit on the benchmark's own positive captions or on a given corpus (a
  fluency/plausibility prior, the kind that beats CLIP on ARO-Order and CREPE);
- ``caption_prior``: the text tower's unnormalised embedding norm (the model's own caption prior).

On a well-built benchmark both sit at chance. Exactly 50% needs *reciprocal* counterbalancing: for every item
(pos x, neg y) another item has (pos y, neg x), and p(x) != p(y). "Every negative is some other item's
positive" alone is not enough: a cycle (x, y), (y, z), (z, x) scores 2/3 or 1/3. Ties (e.g. a unigram LM on
bag-identical pairs) count as wrong under strict rules and are reported in ``n_ties``.
"""
import math
from collections import Counter
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .items import EvalDataError, Item
from .sugarcrepe import bag_of_words, words

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def bag_identical(a: str, b: str) -> bool:
    """True iff ``a`` and ``b`` are the same multiset of lower-cased words (punctuation dropped)."""
    return bag_of_words(a) == bag_of_words(b)


class NgramLM:
    """Add-k smoothed word n-gram LM: P(w | h) = (c(h, w) + k) / (c(h) + k·|V|), natural-log scores.

    Each caption is padded with n-1 ``<s>`` and one ``</s>``. The vocabulary V is fixed at ``fit``: the
    training words plus ``</s>`` and ``<unk>`` (``<s>`` is only ever a context); unseen words map to ``<unk>``.
    c(h) counts h as a context, so every conditional distribution sums to 1 over V.
    """

    def __init__(self, n: int = 2, k: float = 1.0):
        if n < 1 or k <= 0:
            raise ValueError(f"NgramLM needs n >= 1 and k > 0, got n={n}, k={k}")
        self.n, self.k = n, k
        self.vocab: frozenset = frozenset()
        self.counts: Counter = Counter()    # (h..., w) -> count
        self.contexts: Counter = Counter()  # (h...) -> count

    def _ngrams(self, caption: str) -> List[Tuple[str, ...]]:
        tokens = [w if w in self.vocab else UNK for w in words(caption)]
        padded = [BOS] * (self.n - 1) + tokens + [EOS]
        return [tuple(padded[i:i + self.n]) for i in range(len(padded) - self.n + 1)]

    def fit(self, captions: Sequence[str]) -> "NgramLM":
        self.vocab = frozenset(w for c in captions for w in words(c)) | {EOS, UNK}
        self.counts = Counter(g for c in captions for g in self._ngrams(c))
        self.contexts = Counter()
        for gram, count in self.counts.items():
            self.contexts[gram[:-1]] += count
        return self

    def cond_logprob(self, history: Tuple[str, ...], word: str) -> float:
        """log P(word | the last n-1 tokens of ``history``); ``word`` outside V scores as ``<unk>``."""
        if not self.vocab:
            raise RuntimeError("NgramLM.fit must be called before scoring")
        h = tuple(history)[-(self.n - 1):] if self.n > 1 else ()
        w = word if word in self.vocab else UNK
        return math.log((self.counts[h + (w,)] + self.k) / (self.contexts[h] + self.k * len(self.vocab)))

    def logprob(self, caption: str) -> float:
        """Total log-probability of ``caption`` including ``</s>`` (natural log)."""
        if not self.vocab:
            raise RuntimeError("NgramLM.fit must be called before scoring")
        return sum(self.cond_logprob(g[:-1], g[-1]) for g in self._ngrams(caption))


Prior = Union[Callable[[List[str]], Mapping[str, float]], Mapping[str, float]]


class PriorScorer:
    """A blind scorer: every image of an item sees the same row of caption priors.

    ``prior`` is a dict ``{caption: score}`` or a callable mapping the list of unique captions to one (called
    once per ``score_items``). Scores are float64 so that distinct priors never collapse into ties.
    """

    def __init__(self, prior: Prior):
        self.prior = prior

    def caption_scores(self, captions: Sequence[str]) -> Dict[str, float]:
        unique = list(dict.fromkeys(captions))
        table = self.prior if isinstance(self.prior, Mapping) else self.prior(unique)
        missing = [c for c in unique if c not in table]
        if missing:
            raise EvalDataError(f"blind prior has no score for {len(missing)} caption(s), e.g. {missing[0]!r}")
        return {c: float(table[c]) for c in unique}

    def score_items(self, items: Sequence[Item]) -> List[torch.Tensor]:
        """One ``[n_images, n_captions]`` float64 matrix per item; row i = the caption priors, for every i."""
        table = self.caption_scores([c for it in items for c in it.captions])
        return [torch.tensor([table[c] for c in it.captions], dtype=torch.float64).repeat(len(it.images), 1)
                for it in items]


def positive_captions(items: Sequence[Item]) -> List[str]:
    """Every caption j of every item with ``match[i][j]`` True for some image i (once per item it is true in)."""
    return [c for it in items for j, c in enumerate(it.captions) if any(row[j] for row in it.match)]


def ngram_scorer(items: Sequence[Item], n: int = 2, k: float = 1.0,
                 corpus: Optional[Sequence[str]] = None) -> PriorScorer:
    """A ``PriorScorer`` whose prior is an ``NgramLM(n, k)`` fit on the items' positive captions, or on
    ``corpus`` (e.g. the training captions) when given.

    Fit on the benchmark's positives, a word that occurs only in negatives scores as ``<unk>``, so benchmarks
    whose negatives introduce new words (replace/add) favour the positive: that *is* the artifact this
    baseline exposes, but pass ``corpus`` for a prior that has not seen the test positives.
    """
    corpus = positive_captions(items) if corpus is None else list(corpus)
    if not corpus:
        raise EvalDataError("n-gram blind baseline: no caption to fit on (no positive caption, empty corpus)")
    lm = NgramLM(n, k).fit(corpus)
    return PriorScorer(lambda captions: {c: lm.logprob(c) for c in captions})


def caption_prior_scorer(dual_encoder_scorer) -> PriorScorer:
    """A ``PriorScorer`` whose prior is the text tower's unnormalised embedding norm (higher norm scores higher)."""
    return PriorScorer(dual_encoder_scorer.text_norms)


def blind_baselines(items: Sequence[Item], metrics_fn: Callable, dual_encoder_scorer=None, n: int = 2,
                    ngram_corpus: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """``{"ngram": metrics, "caption_prior": metrics}``, each ``metrics_fn(items, blind.score_items(items))``.

    ``caption_prior`` is present only when ``dual_encoder_scorer`` is given (its text features are reused).
    """
    scorers = {"ngram": ngram_scorer(items, n=n, corpus=ngram_corpus)}
    if dual_encoder_scorer is not None:
        scorers["caption_prior"] = caption_prior_scorer(dual_encoder_scorer)
    return {name: metrics_fn(items, scorer.score_items(items)) for name, scorer in scorers.items()}

