"""Checks every candidate negative must pass before it is written (spec ``degla.md`` §7, validators 1-5).

``validate`` returns ``None`` for an acceptable candidate, else one reason key from ``REASONS``; the pipeline
counts rejections per key. Texts are compared as word sequences after ``normalize``, with "an" read as "a" so
that article agreement ("a red apple" -> "an orange apple") never counts as a change.

Type checks:
- swap types (``reshuffle_order``, ``swap_nouns``, ``swap_adjectives``): the same bag of words in a different
  order, and not only articles moved ("the dog on a mat" for "a dog on the mat": ``order_unchanged``);
- replace types: the two word sequences differ in one contiguous span on each side, one content word for
  ``replace_adjectives`` / ``replace_nouns`` and 1-3 words (not only determiners) for ``replace_relation``;
  the new word or phrase is not a near-synonym of the old (``vocab`` tables, inflections included) and, with
  ``nlp``, keeps its part of speech (``pos_changed``) and, for words the lists do not know, its lemma differs;
- add types (``add_object``, ``add_attribute``): one contiguous insertion of 1-4 words (1 for
  ``add_attribute``) holding a content word, nothing removed.
``dedupe`` drops repeats within a row; the pipeline counts those as ``duplicate``.
"""
import re
from collections import Counter
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import vocab
from .base import NEG_TYPES

REASONS = ("empty", "same_as_positive", "length_ratio", "bag_changed", "order_unchanged", "not_one_word_replaced",
           "pos_changed", "replaced_with_synonym", "not_one_phrase_added", "duplicate")
SWAP_TYPES = ("reshuffle_order", "swap_nouns", "swap_adjectives")
REPLACE_TYPES = ("replace_adjectives", "replace_nouns", "replace_relation")
ADD_TYPES = ("add_object", "add_attribute")
MAX_RELATION_WORDS = 3
MAX_ADDED_WORDS = {"add_object": 4, "add_attribute": 1}

_WORD = re.compile(r"[^\W_]+")
#: Coarse part-of-speech classes: tagger noise between NOUN/PROPN or VERB/AUX is not a change of role.
_POS_CLASS = {"NOUN": "N", "PROPN": "N", "ADJ": "A", "NUM": "A", "VERB": "V", "AUX": "V", "ADP": "P",
              "ADV": "ADV", "SCONJ": "P"}
_MODIFIER_DEPS = ("amod", "compound", "nummod")


def _words(text: str) -> List[str]:
    return [m.group().lower() for m in _WORD.finditer(text)]


def normalize(text: str) -> str:
    """Lower-case, punctuation replaced by spaces, whitespace collapsed: "A Dog's ball." -> "a dog s ball"."""
    return " ".join(_words(text))


def _unify(words: Sequence[str]) -> List[str]:
    return ["a" if w == "an" else w for w in words]


def _diff(old: Sequence[str], new: Sequence[str]) -> Tuple[int, List[str], List[str]]:
    """The one contiguous differing region: (start, old span, new span), after common prefix and suffix."""
    start = 0
    limit = min(len(old), len(new))
    while start < limit and old[start] == new[start]:
        start += 1
    end = 0
    while end < limit - start and old[len(old) - 1 - end] == new[len(new) - 1 - end]:
        end += 1
    return start, list(old[start:len(old) - end]), list(new[start:len(new) - end])


def _singular_forms(word: str) -> Iterable[str]:
    yield word
    if word.endswith("ies"):
        yield word[:-3] + "y"
    if word.endswith("es"):
        yield word[:-2]
    if word.endswith("s"):
        yield word[:-1]


def _synonyms(old: str, new: str) -> bool:
    """Near-synonyms by the ``vocab`` tables, trying crude singular forms of single words."""
    olds = [old] if " " in old else list(_singular_forms(old))
    news = [new] if " " in new else list(_singular_forms(new))
    groups = {vocab.SYNONYM_GROUP[w] for w in olds if w in vocab.SYNONYM_GROUP}
    return any(vocab.SYNONYM_GROUP.get(w) in groups for w in news)


@lru_cache(maxsize=8192)
def _tags(nlp, text: str) -> Tuple[Tuple[str, str, str], ...]:
    """(pos class, lemma, dep) of the spaCy token holding each normalised word of ``text``."""
    doc = nlp(text)
    by_char = {}
    for token in doc:
        for c in range(token.idx, token.idx + len(token.text)):
            by_char[c] = token
    out = []
    for m in _WORD.finditer(text):
        token = by_char.get(m.start())
        if token is None:
            out.append(("X", m.group().lower(), ""))
            continue
        pos = _POS_CLASS.get(token.pos_, token.pos_)
        if token.dep_ in _MODIFIER_DEPS:
            pos = "A"
        out.append((pos, token.lemma_.lower(), token.dep_))
    return tuple(out)


def _vocab_pos(word: str) -> Optional[str]:
    """The part-of-speech class of a word the closed lists know unambiguously; None for others."""
    return _VOCAB_POS.get(word)


def _build_vocab_pos():
    classes: Dict[str, set] = {}
    for cls, words in (("N", vocab.NOUN_INFO), ("A", vocab.ADJ_CONTRAST), ("V", vocab.VERB_CONTRAST),
                       ("V", [w for forms in vocab.VERB_FORMS for w in forms]), ("P", vocab.PREP_CONTRAST)):
        for word in words:
            classes.setdefault(word, set()).add(cls)
    return {w: c.pop() for w, c in classes.items() if len(c) == 1 and " " not in w}


_VOCAB_POS = _build_vocab_pos()
_PHRASE_POS = {**{p: "P" for p in vocab.PREP_CONTRAST}, **{p: "V" for p in vocab.VERB_CONTRAST}}


def _check_pos_and_lemma(nlp, positive: str, candidate: str, start: int, old: List[str],
                         new: List[str]) -> Optional[str]:
    """Same part of speech (one word: equal classes; phrases: a class in common) and, for one word, a different
    lemma. Classes come from the closed lists where they know the word, else from the tagger: the small tagger
    mislabels unusual but well-formed negatives ("a small bunny laying": ADJ), and words the lists know need no
    parse at all (their inflections are synonym groups in ``vocab``)."""
    old_pos, new_pos = [_vocab_pos(w) for w in old], [_vocab_pos(w) for w in new]
    phrases = [_PHRASE_POS.get(" ".join(span)) for span in (old, new)]
    if all(phrases):  # "on top of" -> "under": both whole relation phrases of the lists
        old_pos, new_pos = [phrases[0]], [phrases[1]]
    parsed = not all(old_pos + new_pos)
    if parsed:
        ptags, ctags = _tags(nlp, positive), _tags(nlp, candidate)
        old_pos = [k or tag[0] for k, tag in zip(old_pos, ptags[start:start + len(old)])]
        new_pos = [k or tag[0] for k, tag in zip(new_pos, ctags[start:start + len(new)])]
    if len(old) == 1 and len(new) == 1:
        if old_pos != new_pos:
            return "pos_changed"
        if parsed and ptags[start][1] and ptags[start][1] == ctags[start][1]:
            return "replaced_with_synonym"
    elif not set(old_pos) & set(new_pos):
        return "pos_changed"
    return None


def validate(positive: str, candidate: str, neg_type: str, nlp=None, min_ratio: float = 0.5,
             max_ratio: float = 2.0) -> Optional[str]:
    """``None`` if ``candidate`` is an acceptable ``neg_type`` negative of ``positive``, else a ``REASONS`` key.

    ``nlp`` (a spaCy pipeline with a tagger) adds the part-of-speech and lemma checks of the replace types.
    """
    if neg_type not in NEG_TYPES:
        raise ValueError(f"unknown negative type {neg_type!r}; expected one of {', '.join(NEG_TYPES)}")
    pos_words, cand_words = _words(positive), _words(candidate)
    if not cand_words:
        return "empty"
    if cand_words == pos_words:
        return "same_as_positive"
    if not pos_words or not min_ratio <= len(cand_words) / len(pos_words) <= max_ratio:
        return "length_ratio"
    old_seq, new_seq = _unify(pos_words), _unify(cand_words)
    if neg_type in SWAP_TYPES:
        if Counter(old_seq) != Counter(new_seq):
            return "bag_changed"
        if [w for w in old_seq if w not in vocab.ARTICLES] == [w for w in new_seq if w not in vocab.ARTICLES]:
            return "order_unchanged"
        return None
    start, old, new = _diff(old_seq, new_seq)
    if neg_type in ADD_TYPES:
        if old or not 1 <= len(new) <= MAX_ADDED_WORDS[neg_type]:
            return "not_one_phrase_added"
        if all(w in vocab.FUNCTION_WORDS for w in new):
            return "not_one_phrase_added"
        return None
    if neg_type == "replace_relation":
        ok = all(1 <= len(span) <= MAX_RELATION_WORDS and any(w not in vocab.DETERMINERS for w in span)
                 for span in (old, new))
    else:
        ok = len(old) == 1 and len(new) == 1 and not {old[0], new[0]} & vocab.FUNCTION_WORDS
    if not ok:
        return "not_one_word_replaced"
    if nlp is not None:
        reason = _check_pos_and_lemma(nlp, positive, candidate, start, old, new)
        if reason is not None:
            return reason
    if _synonyms(" ".join(old), " ".join(new)):
        return "replaced_with_synonym"
    return None


def dedupe(candidates: Iterable[str]) -> List[str]:
    """Candidates without repeats (compared after ``normalize``), first occurrence kept, order preserved."""
    seen, out = set(), []
    for text in candidates:
        key = normalize(text)
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out
