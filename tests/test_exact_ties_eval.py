"""Exact ties stay ties: a pair's score depends on that image and caption only, in every scorer.

A float32 ``[n, D] @ [D, m]`` product gives two identical columns values ~1e-9 apart at D = 64 (BLAS edge
kernels), so an item whose positive and negative are the same string was decided by noise and counted as no tie.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from eval_fixtures import vector_image, vector_scorer
from open_clip_align.eval import retrieval, sugarcrepe, winoground, zeroshot
from open_clip_align.eval.baselines import blind_baselines
from open_clip_align.eval.items import ImageRef, Item
from open_clip_align.eval.scoring import DualEncoderScorer, exact_bits, exact_cosines, fixed_point, pairwise_decisions

CAPTIONS = [f"caption {k}" for k in range(12)]


def _unit(n, dim=64, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_fixed_point_dot_products_equal_integer_arithmetic():
    """Every dot product of fixed-point copies is the exact integer sum, whatever BLAS does."""
    assert (exact_bits(1), exact_bits(10), exact_bits(20)) == (26, 24, 23)
    a, b = _unit(5, 512, seed=1), _unit(7, 512, seed=2)
    fa, fb = fixed_point(a), fixed_point(b)
    scale = 2 ** exact_bits()
    ia = [[int(v) for v in (row * scale).tolist()] for row in fa]
    ib = [[int(v) for v in (row * scale).tolist()] for row in fb]
    got = fa @ fb.T
    for i in range(5):
        for j in range(7):
            exact = sum(x * y for x, y in zip(ia[i], ib[j]))  # Python integers: no rounding at all
            assert got[i, j].item() == exact / scale ** 2
    assert (fa - a.double()).abs().max() <= 2.0 ** -(exact_bits() + 1)
    with pytest.raises(ValueError, match="L2-normalised"):
        fixed_point(torch.full((1, 4), 0.9))


def test_exact_cosines_do_not_depend_on_shapes_order_or_blocking():
    images, texts = _unit(9, seed=3), _unit(11, seed=4)
    full = exact_cosines(images, texts)
    assert full.dtype == torch.float32
    assert torch.allclose(full.double(), images.double() @ texts.double().T, atol=1e-6)
    for i in range(9):
        for j in range(11):
            assert torch.equal(exact_cosines(images[i:i + 1], texts[j:j + 1])[0, 0], full[i, j])
    order = torch.tensor([3, 3, 0, 10, 3, 7, 7])  # repeated and permuted columns
    assert torch.equal(exact_cosines(images, texts[order]), full[:, order])
    assert torch.equal(exact_cosines(images, texts, max_block_elements=5), full)  # image rows one by one
    repeated = exact_cosines(images[:1], texts[[5] * 16])
    assert (repeated == repeated[0, 0]).all()


def _write_sugarcrepe(root):
    """swap_obj: items 0-3 have caption == negative_caption (must tie); images and captions recur in other items
    and at other positions."""
    (root / "val2017").mkdir()
    for k in range(6):
        vector_image(root / "val2017" / f"{k}.png", 10 + k)
    subset = {str(k): {"filename": f"{k}.png", "caption": CAPTIONS[k], "negative_caption": CAPTIONS[k]}
              for k in range(4)}
    subset.update({str(4 + k): {"filename": f"{k}.png", "caption": CAPTIONS[k], "negative_caption": CAPTIONS[k + 6]}
                   for k in range(6)})
    subset.update({str(10 + k): {"filename": f"{5 - k}.png", "caption": CAPTIONS[k + 6],
                                 "negative_caption": CAPTIONS[k]} for k in range(6)})
    (root / "swap_obj.json").write_text(json.dumps(subset))


def _pair_scores(items, scores):
    """{(image path, caption): [score tensors of every occurrence]}."""
    seen = {}
    for item, matrix in zip(items, scores):
        for i, ref in enumerate(item.images):
            for j, caption in enumerate(item.captions):
                seen.setdefault((ref.path, caption), []).append(matrix[i, j])
    return seen


def test_dual_encoder_scorer_duplicate_captions_tie_and_pairs_score_alike(tmp_path):
    _write_sugarcrepe(tmp_path)
    items = sugarcrepe.load(tmp_path, ["swap_obj"])
    pairs = [Item(f"wino{k}", [ImageRef(str(tmp_path / "val2017" / f"{k + 1}.png")),
                               ImageRef(str(tmp_path / "val2017" / f"{k}.png"))],
                  [CAPTIONS[k], CAPTIONS[k + 1], CAPTIONS[k]], [[False, True, False], [True, False, True]], "x")
             for k in range(4)]  # images at the other position, a caption repeated in one item
    scorer, model = vector_scorer(CAPTIONS)
    scores = scorer.score_items(items + pairs)
    for key, values in _pair_scores(items + pairs, scores).items():
        assert all(torch.equal(v, values[0]) for v in values), key
    result = sugarcrepe.metrics(items, scores[:len(items)])
    assert result["n_ties"] == 4 and result["subsets"]["swap_obj"]["ties"] == 4
    assert [bool(s[0, 0] == s[0, 1]) for s in scores[:4]] == [True] * 4  # same string: tie, hence wrong
    correct, _ = pairwise_decisions(torch.stack([s[0, 0] for s in scores[:4]]),
                                               torch.stack([s[0, 1] for s in scores[:4]]))
    assert not correct.any()
    features = scorer.image_features(items[0].images)[items[0].images[0]]
    text = scorer.text_features([CAPTIONS[0]])[CAPTIONS[0]]
    assert torch.equal(scores[0][0, 0], exact_cosines(features[None], text[None])[0, 0])
    assert scores[0][0, 0].item() == pytest.approx(float(features.double() @ text.double()), abs=1e-6)


def test_captions_that_tokenize_alike_are_encoded_once(tmp_path):
    """A tokenizer that folds case: "A Dog" and "a dog" are one token row, one feature tensor, an exact tie."""
    class Folding:
        def __init__(self):
            self.texts = F.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(5)), dim=-1)
            self.rows = 0

        @staticmethod
        def tokenizer(texts):
            return torch.tensor([[["a dog", "a cat", "x"].index(t.lower())] for t in texts])

        def encode_text(self, tokens):
            self.rows += len(tokens)
            return self.texts[tokens[:, 0]] * 3.0

    model = Folding()
    scorer = DualEncoderScorer(model, None, model.tokenizer, progress=False)
    feats = scorer.text_features(["A Dog", "a dog", "a cat"])
    assert feats["A Dog"] is feats["a dog"] and model.rows == 2
    assert scorer.text_features(["a DOG"])["a DOG"] is feats["a dog"] and model.rows == 2  # a later call reuses it
    assert scorer.text_norms(["A Dog", "a dog"]) == {"A Dog": pytest.approx(3.0), "a dog": pytest.approx(3.0)}


def test_winoground_and_blind_baselines_count_duplicate_ties(tmp_path):
    for k in range(4):
        vector_image(tmp_path / f"{k}.png", 20 + k)
    lines = [{"image_0": f"{k}.png", "image_1": f"{(k + 1) % 4}.png", "caption_0": CAPTIONS[k],
              "caption_1": CAPTIONS[k]} for k in range(4)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    items = winoground.load(tmp_path)
    scorer, _ = vector_scorer(CAPTIONS)
    result = winoground.metrics(items, scorer.score_items(items))
    assert result["n_ties"] == 4 and result["text"] == 0.0  # each image sees one caption twice: a tie
    blind = blind_baselines(items, winoground.metrics, dual_encoder_scorer=scorer)
    assert blind["ngram"]["n_ties"] == 4 and blind["caption_prior"]["n_ties"] == 4


def test_retrieval_identical_captions_of_different_images_tie(tmp_path):
    """Three images share the caption "caption 0" (6 caption columns: a shape where float32 BLAS splits
    identical columns): for each image, the other copies tie its own one, so it is a miss at R@1 and a tie."""
    n = 3
    images = [ImageRef(vector_image(tmp_path / f"{k}.png", 30 + k)) for k in range(n)]
    captions = [[CAPTIONS[0], CAPTIONS[k + 1]] for k in range(n)]
    scorer, _ = vector_scorer(CAPTIONS)
    similarity, owner, _ = retrieval._similarity(scorer, images, captions)
    copies = similarity[:, 0::2]  # the "caption 0" columns
    assert (copies == copies[:, :1]).all()
    ranks = retrieval.retrieval_ranks(similarity, owner)
    own_other = similarity[torch.arange(n), 2 * torch.arange(n) + 1]
    best_is_copy = copies[:, 0] > own_other  # then its best own caption ties the other copies
    assert best_is_copy.any() and torch.equal(ranks["image_to_text_tie"], best_is_copy)
    assert (ranks["image_to_text"][best_is_copy] >= n - 1).all()


# a name repeated (ImageNet repeats "crane"), first and last of 6 columns: float32 BLAS computes the last
# columns with another kernel, so the two "cat" columns used to differ by ~1e-7 (x100 logit scale)
NAMES = ("cat", "dog", "bird", "fish", "cow", "cat")


def test_zeroshot_repeated_class_name_ties(tmp_path):
    for k in range(len(NAMES)):
        (tmp_path / "test" / f"c{k}").mkdir(parents=True)
    for k in range(16):
        vector_image(tmp_path / "test" / f"c{k % len(NAMES)}" / f"{k}.png", 40 + k)
    (tmp_path / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    prompts = [f"a {name}." for name in NAMES]
    scorer, _ = vector_scorer(prompts)
    data = zeroshot.load(tmp_path, templates=["a {c}."])
    text = scorer.text_features(prompts)
    classifier = zeroshot.zeroshot_classifier([text[p][None] for p in prompts])
    feats = scorer.image_features(data.images)
    logits = zeroshot.zeroshot_logits(torch.stack([feats[r] for r in data.images]), classifier)
    assert torch.equal(logits[:, 0], logits[:, 5])
    result = zeroshot.evaluate(scorer, tmp_path, templates=["a {c}."])
    cat_best = logits[:, 0] == logits.max(dim=1).values  # then the two "cat" classes share the top logit
    assert cat_best.any() and result["n_ties"] == int(cat_best.sum())
