"""Rule-based negatives (``--backend rules``): spaCy parses plus the closed lists in ``vocab``; offline, deterministic.

Each type enumerates *sites* (places where its rule applies) and the candidates of each site; a generator
seeded by (backend seed, request seed, caption id, type) orders the sites and candidates, round-robin over sites
so that ``n`` candidates spread over the caption. A rule that does not apply yields nothing: a type may return
fewer than ``n`` candidates, or none. Every candidate is rebuilt from the parse's tokens and whitespace, with
a/an agreement and sentence capitalisation fixed, and passes ``validate`` before it is returned.

The rules:
- ``reshuffle_order``: exchange the two arguments of a relation so that who-does-what-to-whom changes, moving
  whole base noun phrases (determiner and adjectives travel with their noun): subject and object of a verb
  ("a man riding a horse" -> "a horse riding a man"; not for symmetric verbs such as "hug"); the noun and the
  object of a spatial preposition ("a cat on a table" -> "a table on a cat"; asymmetric prepositions only, not
  "next to", "with", "of"; verb-attached only after verbs of position such as "sitting"); the prepositional
  modifiers of two nouns ("a man in a red shirt and a woman with a dog" -> "... in ... with" exchanged). Moving
  a phrase to the front ("on the beach, a man ...") or exchanging conjuncts ("a cat and a dog") keeps the
  meaning and is never done. Subject swaps keep subject-verb agreement (same grammatical number).
- ``swap_nouns``: exchange two head nouns (with their compound modifiers) of the same number and determiner
  status; determiners and adjectives stay in place.
- ``swap_adjectives``: exchange two attributive or predicative adjectives of two different nouns.
- ``replace_adjectives``: one adjective, count or material word -> a contrasting word of its ``vocab`` class,
  respecting animacy ("young" only for people and animals, "new" only for things).
- ``replace_nouns``: one noun -> a noun of another synonym group of its ``vocab`` class, same number.
- ``replace_relation``: one spatial phrase or action verb -> a contrasting one (``vocab.PREP_CONTRAST``,
  ``vocab.VERB_CONTRAST``): "on" -> "under", "holding" -> "dropping".
- ``add_object``: "and a (adjective) noun" after an object noun phrase, or after the subject of a verbless
  caption ("two dogs and a cat playing ...").
- ``add_attribute``: one adjective of the noun's class before a noun that has no modifier.
"""
import random
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import spacy_pipeline
from . import vocab
from .base import NEG_TYPES, BackendError, Request, register_backend
from .validate import normalize, validate

DEFAULT_SPACY_MODEL = spacy_pipeline.DEFAULT_SPACY_MODEL
_NOUN_TAGS = ("NN", "NNS")
_SUBJECT_DEPS = ("nsubj", "nsubjpass", "attr", "expl")
#: Dependency labels of a noun phrase's head (not a modifier such as "snow" in "snow covered").
_HEAD_DEPS = ("nsubj", "nsubjpass", "dobj", "pobj", "ROOT", "conj", "attr", "appos", "dative", "oprd")
#: Classes whose nouns are not added as objects: settings, mass nouns.
_NOT_ADDED = vocab.SCENE_CLASSES - {"clothing"} | {"food_mass"}
_MAX_OPTIONS_PER_SITE = 6
_SENTENCE_ENDS = (".", "!", "?")

Site = Tuple[int, List[Callable[[], str]]]  # (priority: lower first, candidate renderers)
Piece = Tuple[str, str, int]  # (text, whitespace after, source token index or -1 for an inserted word)


# ----------------------------------------------------------------------------- text surgery

def indefinite_article(word: str) -> str:
    """"a" or "an" for the word that follows ("an umbrella", "a unicorn", "an hour", "an 8")."""
    w = word.lower()
    if not w:
        return "a"
    if w.startswith(vocab.AN_BEFORE_CONSONANT_PREFIXES) or (w[:2] in vocab.AN_NUMBERS and w[2:3] in ("", " ")):
        return "an"
    if w[0] in "aeiou" and not w.startswith(vocab.A_BEFORE_VOWEL_PREFIXES):
        return "an"
    return "a"


class _Caption:
    """A parsed caption with what rendering needs precomputed (token access on a ``Doc`` is slow)."""

    __slots__ = ("doc", "tokens", "pieces", "is_det", "capitalised", "shouting", "lower_when_moved", "taken",
                 "chunks")

    def __init__(self, doc):
        self.doc = doc
        self.tokens = list(doc)
        self.pieces = [(t.text, t.whitespace_, t.i) for t in self.tokens]
        self.is_det = [t.tag_ == "DT" for t in self.tokens]
        self.capitalised = self.tokens[0].text[:1].isupper()
        self.shouting = doc.text.isupper()
        #: Sentence-initial words capitalised only for being first: lower-cased when a rule moves them.
        self.lower_when_moved = {t.i for t in self.tokens if t.is_sent_start and t.text[:1].isupper()
                                 and t.pos_ != "PROPN" and t.text != "I" and not (len(t) > 1 and t.text.isupper())}
        self.taken = _caption_words(doc)
        self.chunks = _chunks(doc)


def _render(cap: _Caption, pieces: List[Piece]) -> str:
    """Text of ``pieces``: a/an agreement; sentence-initial capitals follow the position, not the word."""
    pieces = [list(p) for p in pieces]
    for k, piece in enumerate(pieces[:-1]):
        if piece[0].lower() in ("a", "an") and (piece[2] < 0 or cap.is_det[piece[2]]):
            form = indefinite_article(pieces[k + 1][0])
            piece[0] = form.capitalize() if piece[0][0].isupper() else form
    if cap.shouting:
        return "".join(text.upper() + ws for text, ws, _ in pieces).strip()
    if cap.capitalised:
        starts = {0} | {k + 1 for k, piece in enumerate(pieces) if piece[0] in _SENTENCE_ENDS}
        for k, piece in enumerate(pieces):
            if k in starts:
                piece[0] = piece[0][:1].upper() + piece[0][1:]
            elif piece[2] in cap.lower_when_moved:
                piece[0] = piece[0][:1].lower() + piece[0][1:]
    return "".join(text + ws for text, ws, _ in pieces).strip()


def _swap(cap: _Caption, a: Tuple[int, int], b: Tuple[int, int]) -> str:
    """Exchange token spans ``a`` and ``b`` (half-open, disjoint); whitespace stays with the position."""
    if a[0] > b[0]:
        a, b = b, a
    p = cap.pieces
    span_a, span_b = list(p[a[0]:a[1]]), list(p[b[0]:b[1]])
    span_b[-1] = (span_b[-1][0], p[a[1] - 1][1], span_b[-1][2])
    span_a[-1] = (span_a[-1][0], p[b[1] - 1][1], span_a[-1][2])
    return _render(cap, p[:a[0]] + span_b + p[a[1]:b[0]] + span_a + p[b[1]:])


def _replace(cap: _Caption, start: int, end: int, words: Sequence[str]) -> str:
    p = cap.pieces
    new = [(w, " " if k + 1 < len(words) else p[end - 1][1], start if k == 0 else -1) for k, w in enumerate(words)]
    return _render(cap, p[:start] + new + p[end:])


def _insert(cap: _Caption, before: int, words: Sequence[str]) -> str:
    """Insert ``words`` before token ``before`` (``len(doc)``: at the end), spaced like words."""
    p = list(cap.pieces)
    new = [(w, " ", -1) for w in words]
    if before > 0:
        new[-1] = (words[-1], p[before - 1][1], -1)
        p[before - 1] = (p[before - 1][0], " ", p[before - 1][2])
    return _render(cap, p[:before] + new + p[before:])


# ----------------------------------------------------------------------------- parse helpers

def _noun_info(token) -> Optional[Tuple[str, int, str]]:
    """(class, group, number: "sing" | "plur" | "both" | "mass") from ``vocab.NOUN_INFO``."""
    return vocab.NOUN_INFO.get(token.lower_)


def _noun_class(token) -> Optional[str]:
    info = vocab.NOUN_INFO.get(token.lower_)
    return info[0] if info else None


def _scene(token) -> bool:
    """A setting rather than an object: a place, room, ground, clothing, weather or light."""
    return _noun_class(token) in vocab.SCENE_CLASSES or token.lower_ in vocab.SETTING_NOUNS


def _animate(token) -> Optional[bool]:
    cls = _noun_class(token)
    return None if cls is None else cls in vocab.ANIMATE_CLASSES


def _fixed(token) -> bool:
    """Part of a fixed two-word name ("hot dog", "teddy bear")."""
    doc = token.doc
    before = token.i > 0 and f"{doc[token.i - 1].lower_} {token.lower_}" in vocab.FIXED_PHRASES
    after = token.i + 1 < len(doc) and f"{token.lower_} {doc[token.i + 1].lower_}" in vocab.FIXED_PHRASES
    return before or after


def _is_noun(token) -> bool:
    """A common noun that names a thing; not "top"/"group", nor a participle misparsed as a compound's head
    ("a plane landing", "a red dress dancing")."""
    if token.pos_ != "NOUN" or token.tag_ not in _NOUN_TAGS or not token.is_alpha:
        return False
    if token.lower_.endswith("ing") and any(c.dep_ == "compound" for c in token.lefts):
        return False
    return token.lower_ not in vocab.RELATIONAL_NOUNS


def _chunks(doc) -> Dict[int, Tuple[int, int]]:
    """Head index -> (start, end) of each base noun phrase headed by a common noun."""
    out = {}
    for chunk in doc.noun_chunks:
        if _is_noun(chunk.root) and not any(t.pos_ == "PRON" for t in chunk):
            out[chunk.root.i] = (chunk.start, chunk.end)
    return out


def _plural(token) -> bool:
    return token.tag_ == "NNS"


def _determined(token) -> bool:
    return any(c.dep_ in ("det", "poss", "nummod", "predet") for c in token.lefts)


def _prep_argument(prep):
    """(relation phrase, object token) of a preposition, reading "on top of X" / "in front of X" as one relation."""
    objs = [c for c in prep.children if c.dep_ == "pobj"]
    if not objs:
        return None, None
    obj = objs[0]
    if obj.lower_ in ("top", "front") and obj.i == prep.i + 1:
        inner = [c for c in obj.children if c.dep_ == "prep" and c.lower_ == "of"]
        inner_objs = [c for c in inner[0].children if c.dep_ == "pobj"] if inner else []
        if inner_objs:
            return f"{prep.lower_} {obj.lower_} of", inner_objs[0]
        return None, None
    if prep.lower_ == "inside" and obj.lower_ == "of":
        return None, None
    return prep.lower_, obj


def _caption_words(doc) -> set:
    """Words of the caption plus the synonym groups they belong to: replacements avoid both."""
    words = set(normalize(doc.text).split())
    return words | {vocab.SYNONYM_GROUP[w] for w in words if w in vocab.SYNONYM_GROUP}


def _taken(word: str, taken: set) -> bool:
    return word in taken or vocab.SYNONYM_GROUP.get(word, -1) in taken


def _partitive_head(token):
    """"flowers" in "a vase of flowers" -> "vase": the parser often hangs the vase's modifiers on the flowers."""
    if token.dep_ == "pobj" and token.head.lower_ == "of" and token.head.head.pos_ == "NOUN":
        return token.head.head
    return None


# ----------------------------------------------------------------------------- the eight types

def _reshuffle_order(cap: _Caption, rng) -> List[Site]:
    doc = cap.doc
    chunks = cap.chunks
    sites: List[Site] = []
    seen = set()

    def unit(x) -> Tuple[int, int]:
        """The noun phrase of ``x``, with an "of" complement ("a vase of flowers") that directly follows."""
        start, end = chunks[x.i]
        of = next((c for c in x.rights if c.dep_ == "prep" and c.lower_ == "of" and c.i == end), None)
        obj = next((c for c in of.children if c.dep_ == "pobj"), None) if of is not None else None
        if obj is not None and chunks.get(obj.i, (None,))[0] == end + 1:
            end = chunks[obj.i][1]
        return start, end

    def exchange(x, y, priority: int):
        if x is None or y is None or x.i == y.i or x.i not in chunks or y.i not in chunks:
            return
        a, b = sorted((unit(x), unit(y)))
        if (a, b) in seen or a[1] > b[0]:
            return
        if (x.dep_ in _SUBJECT_DEPS or y.dep_ in _SUBJECT_DEPS) and _plural(x) != _plural(y):
            return
        if _determined(x) != _determined(y):
            return
        if normalize(doc[a[0]:a[1]].text) == normalize(doc[b[0]:b[1]].text):
            return
        seen.add((a, b))
        sites.append((priority, [partial(_swap, cap, a, b)]))

    def spatial_ok(x, y, phrase: str) -> bool:
        """Objects on both sides; "in"-like relations only with a container or vehicle ("a cat in a bowl")."""
        if x is None or y is None or _scene(x) or _scene(y):
            return False
        return phrase not in ("in", "inside", "into") or _noun_class(y) in vocab.IN_CONTRAST_CLASSES

    for verb in cap.tokens:
        if verb.pos_ != "VERB" or verb.lemma_.lower() in vocab.SYMMETRIC_VERBS:
            continue
        subj = next((c for c in verb.children if c.dep_ == "nsubj"), None)
        if subj is None and verb.dep_ == "acl" and verb.head.pos_ == "NOUN":
            subj = _partitive_head(verb.head) or verb.head
        obj = next((c for c in verb.children if c.dep_ == "dobj"), None)
        if subj is not None and obj is not None:
            exchange(subj, obj, 0 if _animate(subj) and _animate(obj) else 1)
        passive = next((c for c in verb.children if c.dep_ == "nsubjpass"), None)
        agent = next((c for c in verb.children if c.dep_ == "agent"), None)
        if passive is not None and agent is not None:
            exchange(passive, next((c for c in agent.children if c.dep_ == "pobj"), None), 0)
        if subj is not None and verb.lemma_.lower() in vocab.LOCATIVE_VERBS:
            for prep in verb.children:
                if prep.dep_ == "prep":
                    phrase, arg = _prep_argument(prep)
                    if phrase in vocab.SWAP_PREPS and spatial_ok(subj, arg, phrase):
                        exchange(subj, arg, 0)
    noun_preps = []
    for head in chunks:
        if _partitive_head(cap.tokens[head]) is not None:
            continue
        for prep in cap.tokens[head].rights:
            if prep.dep_ != "prep":
                continue
            noun_preps.append(prep)
            phrase, arg = _prep_argument(prep)
            if phrase in vocab.SWAP_PREPS and spatial_ok(cap.tokens[head], arg, phrase):
                exchange(cap.tokens[head], arg, 0)
    for i, p1 in enumerate(noun_preps):
        for p2 in noun_preps[i + 1:]:
            s1, s2 = sorted(((p1.left_edge.i, p1.right_edge.i + 1), (p2.left_edge.i, p2.right_edge.i + 1)))
            args = [_prep_argument(p)[1] for p in (p1, p2)]
            if p1.head.i == p2.head.i or s1[1] > s2[0] or "of" in (p1.lower_, p2.lower_):
                continue
            if any(a is None or (_scene(a) and _noun_class(a) != "clothing") for a in args):
                continue
            if normalize(doc[s1[0]:s1[1]].text) != normalize(doc[s2[0]:s2[1]].text) and (s1, s2) not in seen:
                seen.add((s1, s2))
                sites.append((0, [partial(_swap, cap, s1, s2)]))
    return sites


def _swap_nouns(cap: _Caption, rng) -> List[Site]:
    doc = cap.doc
    units = []
    for t in cap.tokens:
        if not _is_noun(t) or t.dep_ == "compound" or _fixed(t) or t.lower_ in vocab.SETTING_NOUNS:
            continue
        start = t.i
        while start > 0 and doc[start - 1].dep_ == "compound" and doc[start - 1].head.i in range(start, t.i + 1):
            start -= 1
        units.append((t, (start, t.i + 1)))
    sites = []
    for i, (t1, s1) in enumerate(units):
        for t2, s2 in units[i + 1:]:
            if s1[1] > s2[0] or _plural(t1) != _plural(t2) or _determined(t1) != _determined(t2):
                continue
            if t2 in t1.conjuncts:
                continue
            if normalize(doc[s1[0]:s1[1]].text) == normalize(doc[s2[0]:s2[1]].text):
                continue
            priority = 0 if bool(_animate(t1)) == bool(_animate(t2)) else 1
            sites.append((priority, [partial(_swap, cap, s1, s2)]))
    return sites


def _adjective_owner(token):
    """The noun an adjective describes: amod head, subject of a copula, or the owner of a conjoined adjective."""
    for _ in range(4):
        if token.dep_ in ("amod", "compound", "nummod"):
            return token.head if token.head.pos_ in ("NOUN", "PROPN") else None
        if token.dep_ == "acomp":
            return next((c for c in token.head.children if c.dep_ in ("nsubj", "nsubjpass")), None)
        if token.dep_ == "conj":
            token = token.head
            continue
        return None
    return None


def _swap_adjectives(cap: _Caption, rng) -> List[Site]:
    adjs = []
    for t in cap.tokens:
        if (t.pos_ == "ADJ" and t.dep_ in ("amod", "acomp", "conj") and t.is_alpha and not _fixed(t)
                and t.lower_ not in vocab.NON_ATTRIBUTE_ADJ):
            owner = _adjective_owner(t)
            if owner is not None and owner.pos_ == "NOUN":
                adjs.append((t, owner))
    sites = []
    for i, (a1, o1) in enumerate(adjs):
        for a2, o2 in adjs[i + 1:]:
            if o1.i == o2.i or a1.lower_ == a2.lower_:
                continue
            priority = 0 if a2.lower_ in vocab.ADJ_CONTRAST.get(a1.lower_, ()) else 1
            sites.append((priority, [partial(_swap, cap, (a1.i, a1.i + 1), (a2.i, a2.i + 1))]))
    return sites


def _contrasts(word: str, animate: Optional[bool], taken: set) -> List[str]:
    """Contrasting words for an adjective, fitting the owner's animacy, not already in the caption."""
    if animate is None and word in vocab.ADJ_ANIMATE_ONLY:
        animate = True
    if animate is None and word in vocab.ADJ_INANIMATE_ONLY:
        animate = False
    out = []
    for x in vocab.ADJ_CONTRAST.get(word, ()):
        if x in vocab.ADJ_NO_TARGET or _taken(x, taken) or (x in vocab.ADJ_ANIMATE_ONLY and animate is not True) or \
                (x in vocab.ADJ_INANIMATE_ONLY and animate is not False):
            continue
        if x == "old" and animate is None:
            continue
        out.append(x)
    return out


def _replace_adjectives(cap: _Caption, rng) -> List[Site]:
    taken = cap.taken
    sites = []
    for t in cap.tokens:
        w = t.lower_
        if w not in vocab.ADJ_CONTRAST or w in vocab.ADJ_NO_SOURCE or _fixed(t):
            continue
        if not (t.pos_ in ("ADJ", "NUM") or t.dep_ in ("amod", "compound", "nummod")):
            continue
        owner = _adjective_owner(t)
        if owner is None:
            continue
        options = [partial(_replace, cap, t.i, t.i + 1, [x]) for x in _contrasts(w, _animate(owner), taken)]
        if options:
            sites.append((0, options))
    return sites


def _noun_options(cls: str, group: int, number: str, taken: set, only=None) -> List[str]:
    """Nouns of ``cls`` outside ``group`` and the caption's synonym groups, of the same number ("both":
    nouns like "sheep" whose number the tagger cannot tell, replaced only by such nouns)."""
    out = []
    for g, members in enumerate(vocab.NOUN_CLASSES[cls]):
        if g == group or any(_taken(w, taken) for pair in members for w in pair if w):
            continue
        for sing, plur in members:
            if number == "mass":
                word = sing if plur is None else None
            elif number == "both":
                word = sing if plur == sing else None
            else:
                word = None if plur is None else (plur if number == "plur" else sing)
            if word and (only is None or word in only):
                out.append(word)
    return out


def _replace_nouns(cap: _Caption, rng) -> List[Site]:
    taken = cap.taken
    sites = []
    for t in cap.tokens:
        info = _noun_info(t)
        if info is None or t.pos_ != "NOUN" or t.dep_ == "compound" or _fixed(t):
            continue
        if any(c.dep_ == "compound" for c in t.lefts):
            continue
        holds = any(c.dep_ == "prep" and c.lower_ == "of" for c in t.rights)
        only = vocab.CONTAINER_NOUNS if holds else None
        options = [partial(_replace, cap, t.i, t.i + 1, [w]) for w in _noun_options(*info, taken, only)]
        if options:
            sites.append((0, options))
    return sites


def _relation_at(cap: _Caption, i: int):
    """(end, contrasting phrases) of a relation phrase starting at token ``i``, or None."""
    for length in (3, 2, 1):
        end = i + length
        if end > len(cap.tokens):
            continue
        span = cap.tokens[i:end]
        phrase = " ".join(t.lower_ for t in span)
        if phrase in vocab.PREP_CONTRAST:
            last = span[-1]
            obj = next((c for c in last.children if c.dep_ == "pobj"), None)
            if obj is None:
                continue
            if phrase in vocab.NOUN_ONLY_PREPS:
                return (end, vocab.PREP_CONTRAST[phrase]) if span[0].head.pos_ == "NOUN" else None
            if obj.lower_ in vocab.RELATIONAL_NOUNS or _scene(obj):
                return None
            if phrase == "in" and _noun_class(obj) not in vocab.IN_CONTRAST_CLASSES:
                return None
            return end, vocab.PREP_CONTRAST[phrase]
        if phrase in vocab.VERB_CONTRAST and span[0].pos_ == "VERB" and span[0].tag_.startswith("VB"):
            deps = {(c.dep_, c.lower_) for c in span[0].children}
            if phrase in vocab.VERB_NO_OBJECT and any(d == "dobj" for d, _ in deps):
                return None
            if phrase in vocab.VERB_NO_GOAL and deps & {("prep", "to"), ("prep", "at")}:
                return None
            obj = next((c for c in span[0].children if c.dep_ == "dobj"), None)
            if obj is not None and (_noun_class(obj) is None or _scene(obj) and _noun_class(obj) != "clothing"):
                return None
            return end, vocab.VERB_CONTRAST[phrase]
    return None


def _replace_relation(cap: _Caption, rng) -> List[Site]:
    doc = cap.doc
    sites = []
    i = 0
    while i < len(doc):
        found = _relation_at(cap, i)
        if found is None:
            i += 1
            continue
        end, contrasts = found
        sites.append((0, [partial(_replace, cap, i, end, phrase.split()) for phrase in contrasts]))
        i = end
    return sites


def _add_object(cap: _Caption, rng) -> List[Site]:
    doc = cap.doc
    taken = cap.taken
    chunks = cap.chunks
    sites = []
    for head in sorted(chunks):
        t = cap.tokens[head]
        info = _noun_info(t)
        if info is None or info[1] < 0 or info[0] in _NOT_ADDED or not _determined(t):
            continue
        last = all(c.dep_ == "punct" for c in t.rights)
        after_object = last and (t.dep_ == "dobj" or (t.dep_ == "pobj" and t.head.lower_ != "of"))
        before_acl = (t.dep_ == "ROOT" and head + 1 < len(doc) and doc[head + 1].dep_ == "acl"
                      and doc[head + 1].head.i == head)
        if not (after_object or before_acl) or any(c.dep_ == "conj" for c in t.children) or _fixed(t):
            continue
        cls = info[0]
        options = []
        for _ in range(_MAX_OPTIONS_PER_SITE):
            nouns = _noun_options(cls, info[1], "sing", taken)
            if not nouns:
                continue
            noun = rng.choice(nouns)
            adjs = [a for a in vocab.ATTRIBUTES_FOR_CLASS.get(cls, ()) if not _taken(a, taken)
                    and a not in vocab.ADJ_ANIMATE_ONLY | {"old", "tall"}]
            words = ["and", "a"] + ([rng.choice(adjs)] if adjs and rng.random() < 0.5 else []) + [noun]
            options.append(partial(_insert, cap, head + 1, words))
        if options:
            sites.append((0, options))
    return sites


def _add_attribute(cap: _Caption, rng) -> List[Site]:
    taken = cap.taken
    sites = []
    for t in cap.tokens:
        info = _noun_info(t)
        if info is None or info[1] < 0 or not _is_noun(t) or t.dep_ not in _HEAD_DEPS or _fixed(t):
            continue
        of_head = _partitive_head(t)
        if of_head is not None and of_head.lower_ in vocab.RELATIONAL_NOUNS:
            continue
        if any(c.dep_ in ("amod", "compound", "nmod", "conj") for c in t.lefts):
            continue
        if t.i > 0 and cap.tokens[t.i - 1].pos_ in ("ADJ", "NOUN", "PROPN", "VERB", "ADV"):
            continue
        adjs = [a for a in vocab.ATTRIBUTES_FOR_CLASS.get(info[0], ()) if not _taken(a, taken)]
        options = [partial(_insert, cap, t.i, [a]) for a in adjs]
        if options:
            sites.append((0, options))
    return sites


_GENERATORS: Dict[str, Callable] = {
    "reshuffle_order": _reshuffle_order, "swap_nouns": _swap_nouns, "swap_adjectives": _swap_adjectives,
    "replace_adjectives": _replace_adjectives, "replace_nouns": _replace_nouns,
    "replace_relation": _replace_relation, "add_object": _add_object, "add_attribute": _add_attribute,
}
assert set(_GENERATORS) == set(NEG_TYPES)


def _pick(rng: random.Random, sites: List[Site], n: int, positive: str, neg_type: str, dropped: dict) -> List[str]:
    """Up to ``n`` distinct valid candidates: tiers by priority, shuffled sites, round-robin over sites."""
    out, seen = [], {normalize(positive)}
    for priority in sorted({p for p, _ in sites}):
        tier = [list(options) for p, options in sites if p == priority and options]
        rng.shuffle(tier)
        for options in tier:
            rng.shuffle(options)
        for k in range(max(map(len, tier), default=0)):
            for options in tier:
                if k >= len(options):
                    continue
                text = options[k]()
                key = normalize(text)
                if key in seen:
                    continue
                seen.add(key)
                reason = validate(positive, text, neg_type)
                if reason is not None:
                    dropped[reason] = dropped.get(reason, 0) + 1
                    continue
                out.append(text)
                if len(out) == n:
                    return out
    return out


# ----------------------------------------------------------------------------- backend

def load_spacy(name: str):
    """The spaCy pipeline ``name`` (needs a tagger and parser), or ``BackendError`` saying what to install."""
    try:
        return spacy_pipeline.load_spacy(name, f"--spacy-model {name!r} (the rules backend)")
    except spacy_pipeline.SpacyModelError as err:
        raise BackendError(str(err)) from None


class RulesBackend:
    """Offline, deterministic negatives from spaCy parses; the model is loaded on first use of ``nlp``."""

    name = "rules"

    def __init__(self, spacy_model: str = DEFAULT_SPACY_MODEL, seed: int = 0, batch_size: int = 256):
        self.spacy_model = spacy_model
        self.seed = seed
        self.batch_size = batch_size
        self._nlp = None
        #: Own candidates that failed ``validate`` (a rule bug if ever non-zero), by reason.
        self.dropped: Dict[str, int] = {}

    @property
    def nlp(self):
        if self._nlp is None:
            self._nlp = load_spacy(self.spacy_model)
        return self._nlp

    def generate(self, requests: Sequence[Request]) -> List[List[str]]:
        for r in requests:
            if r.neg_type not in _GENERATORS:
                raise ValueError(f"caption {r.caption_id!r}: unknown negative type {r.neg_type!r}; "
                                 f"expected one of {', '.join(NEG_TYPES)}")
        texts = list(dict.fromkeys(r.caption for r in requests))
        captions = {text: _Caption(doc) if len(doc) else None
                    for text, doc in zip(texts, self.nlp.pipe(texts, batch_size=self.batch_size))}
        return [self._generate_one(captions[r.caption], r) for r in requests]

    def _generate_one(self, cap: Optional[_Caption], request: Request) -> List[str]:
        if request.n <= 0 or cap is None:
            return []
        rng = random.Random(f"{self.seed}\0{request.seed}\0{request.caption_id}\0{request.neg_type}")
        sites = _GENERATORS[request.neg_type](cap, rng)
        return _pick(rng, sites, request.n, request.caption, request.neg_type, self.dropped)

    def close(self) -> None:
        self._nlp = None


@register_backend("rules")
def _make_rules_backend(args) -> RulesBackend:
    return RulesBackend(spacy_model=getattr(args, "spacy_model", DEFAULT_SPACY_MODEL),
                        seed=getattr(args, "seed", 0))
