"""Retrieval in bounded memory: the tiled ranking (``scoring_ranks``) against the dense reference
(``retrieval_ranks`` on the full matrices) on galleries full of exact ties, every tile within ``chunk_size``, the
suite and ComAlign paths, and the ``--chunk-size`` flags."""
import json

import pytest
import torch

from eval_fixtures import angle_image, scorer_for, unit
from open_clip_align.comalign.evaluate import score_arrays
from open_clip_align.comalign.scoring import combine, compute_scores
from open_clip_align.comalign.scorer import ComAlignScorer
from open_clip_align.eval import retrieval
from open_clip_align.eval.cli import main as eval_main
from open_clip_align.eval.items import ImageRef
from open_clip_align.eval.retrieval import (cosine_tiles, metrics, ranks_metrics, retrieval_ranks, scoring_ranks,
                                            tiled_ranks)
from open_clip_align.eval.scoring import exact_cosines

CHUNKS = (1, 2, 3, 7, 16, 10_000)


def _tied_gallery(n_images=23, distinct=4, dim=32, seed=0):
    """Images and captions drawn from a few distinct unit vectors (so most scores tie exactly with others), 1-6
    captions per image, captions listed in a shuffled order (not grouped by image)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.nn.functional.normalize(torch.randn(distinct, dim, generator=gen), dim=-1)
    images = pool[torch.randint(distinct, (n_images,), generator=gen)]
    counts = torch.randint(1, 7, (n_images,), generator=gen)
    owner = torch.repeat_interleave(torch.arange(n_images), counts)
    owner = owner[torch.randperm(len(owner), generator=gen)]
    captions = pool[torch.randint(distinct, (len(owner),), generator=gen)]
    return images, captions, owner


def _assert_same(tiled, dense):
    assert set(tiled) == set(dense)
    for key in dense:
        assert torch.equal(tiled[key], dense[key]), key


def _recording(tile, seen):
    """``tile`` that records the largest tile asked for."""
    def wrapped(rows, cols):
        seen.append((len(rows), len(cols)))
        return tile(rows, cols)
    return wrapped


@pytest.mark.parametrize("chunk", CHUNKS)
def test_tiled_cosine_ranks_equal_the_dense_ones_with_many_exact_ties(chunk):
    images, captions, owner = _tied_gallery()
    dense = retrieval_ranks(exact_cosines(images, captions), owner)
    assert dense["image_to_text_tie"].sum() >= 10 and dense["text_to_image_tie"].sum() >= 30  # ties everywhere
    seen = []
    tiled = tiled_ranks(_recording(cosine_tiles(images, captions), seen), owner, len(images), chunk)
    _assert_same(tiled, dense)
    assert max(r for r, _ in seen) <= chunk and max(c for _, c in seen) <= chunk
    assert ranks_metrics(tiled, (1, 5, 10)) == metrics(exact_cosines(images, captions), owner)


def test_tiled_ranks_by_hand_with_an_image_without_captions():
    # image 2 owns no caption: its best own score is -inf, so every caption ranks ahead of it
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.5, 0.2, 0.9], [0.0, 0.0, 0.0]])
    owner = torch.tensor([0, 1, 1])
    ranks = tiled_ranks(lambda r, c: (sim[r][:, c], None), owner, 3, chunk_size=2)
    assert ranks["image_to_text"].tolist() == [1, 0, 3]          # image 0: caption 1 (0.5) ties its 0.5
    assert ranks["image_to_text_tie"].tolist() == [True, False, False]
    assert ranks["text_to_image"].tolist() == [1, 1, 0]          # caption 0: image 1 ties; caption 1: image 0 above
    assert ranks["text_to_image_tie"].tolist() == [True, False, False]
    _assert_same(ranks, retrieval_ranks(sim, owner))


@pytest.mark.parametrize("chunk", (1, 4, 10_000))
def test_direction_specific_tiles_equal_the_dense_ranks(chunk):
    """Two scorings at once, each with its own text->image matrix, scores on a coarse grid (many ties)."""
    gen = torch.Generator().manual_seed(1)
    _, _, owner = _tied_gallery(n_images=17, seed=1)
    n_images, n_captions = 17, len(owner)
    mats = {name: (torch.randint(0, 5, (n_images, n_captions), generator=gen).double() / 4,
                   torch.randint(0, 5, (n_captions, n_images), generator=gen).double() / 4) for name in ("a", "b")}
    ranks = scoring_ranks(lambda r, c: {name: (i2t[r][:, c], t2i[c][:, r]) for name, (i2t, t2i) in mats.items()},
                          owner, n_images, chunk)
    for name, (i2t, t2i) in mats.items():
        _assert_same(ranks[name], retrieval_ranks(i2t, owner, text_to_image=t2i))


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        tiled_ranks(lambda r, c: (torch.zeros(len(r), len(c)), None), torch.tensor([0]), 1, chunk_size=0)


def _karpathy(root, captions_per_image):
    """A COCO Karpathy test file: images at angles 0..80°, each caption at one of three angles (ties)."""
    (root / "val2014").mkdir()
    table, entries = {}, []
    for k, n in enumerate(captions_per_image):
        angle_image(root / "val2014" / f"{k}.png", 10 * k)
        caps = [f"c{(k + j) % 3}" for j in range(n)]
        entries.append({"image": f"val2014/{k}.png", "caption": caps})
    table = {f"c{m}": unit(30 * m) for m in range(3)}
    (root / "coco_karpathy_test.json").write_text(json.dumps(entries))
    return table


def test_suite_retrieval_is_independent_of_the_chunk_size(tmp_path):
    table = _karpathy(tmp_path, [2, 1, 3, 2, 1, 5, 2, 1, 1])
    scorer, _ = scorer_for(table)
    images, captions = retrieval.load(tmp_path)
    similarity, owner, _ = retrieval._similarity(scorer, images, captions)
    dense = metrics(similarity, owner)
    assert dense["n_ties"] > 5
    for chunk in (1, 2, 5, 1024):
        result = retrieval.evaluate(scorer, tmp_path, chunk_size=chunk)
        assert {k: v for k, v in result.items() if k != "protocol"} == dense
        assert retrieval.global_metrics(scorer, images, captions, chunk_size=chunk) == dense


def test_eval_cli_chunk_size_flag(tmp_path, capsys):
    (tmp_path / "retrieval").mkdir()
    _karpathy(tmp_path / "retrieval", [2, 1, 3, 2, 1, 5, 2, 1, 1])  # scored by a seeded random tiny model
    base = ["--model", "hardneg-tiny-ViT", "--benchmark", "retrieval", "--data-root", str(tmp_path), "--quiet"]
    outs = []
    for chunk in ("1", "3", None):
        out = tmp_path / f"r{chunk}.json"
        eval_main([*base, "--out", str(out)] + (["--chunk-size", chunk] if chunk else []))
        outs.append(json.loads(out.read_text())[0]["metrics"])
    assert outs[0] == outs[1] == outs[2] and outs[0]["n_captions"] == 18
    with pytest.raises(SystemExit):
        eval_main([*base, "--chunk-size", "0"])
    assert "--chunk-size: expected an integer >= 1, got 0" in capsys.readouterr().err
    (tmp_path / "sugarcrepe").mkdir()
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--model", "hardneg-tiny-ViT", "--benchmark", "sugarcrepe", "--data-root", str(tmp_path),
                   "--chunk-size", "8"])
    assert exit_.value.code == 2
    assert "--chunk-size applies to --benchmark retrieval or negbench" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- ComAlign

def _components(n, slots, dim, gen, keys, prefix):
    """Global vectors ``keys`` [n, dim] and role components [n, slots, dim] with masks, entries in {-1, 0, 1}."""
    out = {k: torch.nn.functional.normalize(torch.randint(-1, 2, (n, dim), generator=gen).float(), dim=-1)
           for k in keys}
    for role, count in zip(("entity", "relation"), slots):
        out[f"{prefix}_{role}"] = torch.randint(-1, 2, (n, count, dim), generator=gen).float()
        out[f"{prefix}_{role}_mask"] = torch.rand(n, count, generator=gen) < 0.7
    return out


def _store_like(n_images=9, seed=0):
    """Head outputs of ``n_images`` images and store text of 1-3 captions each, entries in {-1, 0, 1} (ties)."""
    gen = torch.Generator().manual_seed(seed)
    image = _components(n_images, (3, 2), 6, gen, ("image_features", "refined_global"), "image")
    counts = torch.randint(1, 4, (n_images,), generator=gen)
    owner = torch.repeat_interleave(torch.arange(n_images), counts)
    text = _components(len(owner), (3, 2), 6, gen, ("text_features",), "text")
    return image, text, owner


def _dense_store(image, text, owner, padding, ks):
    """The pre-chunking evaluation: full matrices of every scoring (exact scores), then ``metrics``."""
    scores = compute_scores(image, text, padding=padding, exact=True)
    out = {"clip": metrics(scores.clip, owner, ks)}
    for mode in ("paper", "reference"):
        combined = combine(scores, mode=mode)
        out[mode] = metrics(combined.i2t, owner, ks, text_to_image=combined.t2i)
        out[mode]["normalisation_constants"] = combined.constants
    return out


@pytest.mark.parametrize("padding", ["reference", "masked"])
def test_comalign_store_scoring_in_tiles_equals_the_full_matrices(padding):
    image, text, owner = _store_like()
    dense = _dense_store(image, text, owner, padding, (1, 2, 5))
    assert sum(dense[name]["n_ties"] for name in dense) > 5
    for chunk in (1, 2, 5, 1000):
        assert score_arrays(image, text, owner, padding, (1, 2, 5), chunk) == dense


class _NoModel:
    n_entity, n_relation = 3, 2


class _NoParser:
    def parse_many(self, texts):
        assert not texts, "every caption's components are in memory already"
        return []


def test_comalign_scorer_retrieval_tiles_equal_its_dense_directional_scores():
    image, text, owner = _store_like(n_images=7, seed=2)
    for value in text.values():  # every third caption repeats caption 0's components: exact ties across images
        value[3::3] = value[0]
    refs = [ImageRef(f"{i}.png") for i in range(7)]
    texts = [f"caption {t}" for t in range(len(owner))]
    scorer = ComAlignScorer(_NoModel(), None, None, provider=None, parser=_NoParser(), progress=False)
    for i, ref in enumerate(refs):  # components as if computed: the scorer reads them from its per-run memory
        scorer._images[ref] = {k: v[i] for k, v in image.items()}
    for t, caption in enumerate(texts):
        scorer._texts[caption] = {k: v[t] for k, v in text.items()}
    images_of = [refs[i] for i in owner.tolist()]
    captions = [[c for c, o in zip(texts, images_of) if o is ref] for ref in refs]
    flat_owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    i2t, t2i = scorer.directional_scores(refs, [c for caps in captions for c in caps])
    dense = metrics(i2t, flat_owner, text_to_image=t2i)
    assert dense["n_ties"] > 0
    for chunk in (1, 3, 1024):
        assert retrieval.global_metrics(scorer, refs, captions, chunk_size=chunk) == dense


def test_comalign_evaluate_refuses_a_chunk_size_below_one(tmp_path, capsys):
    from open_clip_align.comalign.evaluate import main as comalign_evaluate

    with pytest.raises(SystemExit) as exit_:
        comalign_evaluate(["--model", "comalign-tiny-ViT", "--store", str(tmp_path / "none.h5"), "--chunk-size", "0"])
    assert exit_.value.code == 2 and "--chunk-size must be at least 1, got 0" in capsys.readouterr().err
