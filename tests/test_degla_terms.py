"""DeGLA loss terms against per-row loops and the reference's masked-matrix construction (spec §2)."""
import pytest
import torch
import torch.nn.functional as F

from open_clip_align.losses import DeGLALoss, degla_terms
from open_clip_align.methods import create_loss
from open_clip_align.losses.degla import tgc_reference_columns
from open_clip_align.params import build_preparser

N, K, D = 8, 4, 16


def _feats(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, D, generator=g, dtype=torch.float64), dim=-1)


@pytest.fixture
def batch():
    """Student (image, text, neg), teacher (image, text, neg) and the scale s."""
    return dict(image=_feats(0, N), text=_feats(1, N), neg=_feats(2, N, K), teacher_image=_feats(3, N),
                teacher_text=_feats(4, N), teacher_neg=_feats(5, N, K), scale=torch.tensor(30.0, dtype=torch.float64))


def _row_ce(logits, target=0):
    return -(logits[target] - torch.logsumexp(logits, 0))


def _loop_terms(b, valid=None, tgc_mode="fixed", tau=10.0):
    """The spec's equations written row by row, independently of the implementation."""
    image, text, neg, s = b["image"], b["text"], b["neg"], b["scale"]
    ok = (lambda i, k: True) if valid is None else (lambda i, k: bool(valid[i, k]))
    flat = [(n, k) for n in range(N) for k in range(K)]  # image-major pool order after the positives
    base_i2t, base_t2i, igc, tgc = [], [], [], []
    for i in range(N):
        row = [s * image[i] @ text[j] for j in range(N)]
        row += [s * image[i] @ neg[n, k] if ok(n, k) else torch.tensor(float("-inf"), dtype=torch.float64)
                for n, k in flat]
        base_i2t.append(_row_ce(torch.stack(row), i))
        base_t2i.append(_row_ce(torch.stack([s * text[i] @ image[j] for j in range(N)]), i))
        igc.append(_row_ce(torch.stack([s * image[i] @ text[i]] + [s * image[i] @ neg[i, k] for k in range(K) if ok(i, k)])))
        if tgc_mode == "fixed":
            cands = [(i, k) for k in range(K)]
        else:  # the released tiling mask: negative-block column k*N + i, i.e. flat negative m = k*N + i
            cands = [flat[k * N + i] for k in range(K)]
        tgc.append(_row_ce(torch.stack([tau * text[i] @ b["teacher_text"][i]]
                                       + [tau * text[i] @ neg[n, k] for n, k in cands if ok(n, k)])))
    distill = sum(((image[i] - b["teacher_image"][i]) ** 2).sum() + ((text[i] - b["teacher_text"][i]) ** 2).sum()
                  for i in range(N))
    distill = distill + sum(((neg[n, k] - b["teacher_neg"][n, k]) ** 2).sum() for n, k in flat if ok(n, k))
    return {"base": (torch.stack(base_i2t).mean() + torch.stack(base_t2i).mean()) / 2,
            "igc": torch.stack(igc).mean(), "tgc": torch.stack(tgc).mean(), "distill": distill}


def _terms(b, **kw):
    return degla_terms(b["image"], b["text"], b["neg"], b["scale"], b["teacher_image"], b["teacher_text"],
                       b["teacher_neg"], **kw)


@pytest.mark.parametrize("mode", ["fixed", "reference"])
def test_every_term_matches_the_row_loop(batch, mode):
    got, want = _terms(batch, tgc_mode=mode), _loop_terms(batch, tgc_mode=mode)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_padded_negatives_are_ignored_by_every_term(batch):
    valid = torch.rand(N, K, generator=torch.Generator().manual_seed(1)) > 0.3
    for mode in ("fixed", "reference"):
        got, want = _terms(batch, valid=valid, tgc_mode=mode), _loop_terms(batch, valid, tgc_mode=mode)
        for name in want:
            torch.testing.assert_close(got[name], want[name], msg=f"{mode} {name}")
    changed = dict(batch, neg=torch.where(valid[..., None], batch["neg"], -batch["neg"]))
    for name, value in _terms(changed, valid=valid).items():
        torch.testing.assert_close(value, _terms(batch, valid=valid)[name], msg=name)


def test_igc_equals_the_reference_masked_matrix(batch):
    image, text, neg, s = batch["image"], batch["text"], batch["neg"], batch["scale"]
    pool = torch.cat([text, neg.reshape(N * K, D)])
    mask = torch.full((N, N * (1 + K)), float("-inf"), dtype=torch.float64)
    for i in range(N):  # positive-block diagonal + the interleaved own-negative columns
        mask[i, i] = 0
        mask[i, N + i * K: N + i * K + K] = 0
    torch.testing.assert_close(_terms(batch)["igc"], F.cross_entropy(s * image @ pool.T + mask, torch.arange(N)))


def test_tgc_reference_mode_is_the_tiling_mask(batch):
    text, neg, teacher = batch["text"], batch["neg"], batch["teacher_text"]
    candidates = torch.cat([teacher, neg.reshape(N * K, D)])
    mask = torch.cat([torch.eye(N), torch.eye(N).repeat(1, K)], 1)  # repeat(1, K) tiles instead of interleaving
    expected = F.cross_entropy(10 * text @ candidates.T + torch.where(mask.bool(), 0.0, float("-inf")).double(),
                               torch.arange(N))
    torch.testing.assert_close(_terms(batch, tgc_mode="reference")["tgc"], expected)
    assert not torch.allclose(_terms(batch, tgc_mode="reference")["tgc"], _terms(batch)["tgc"])


@pytest.mark.parametrize("n,rows", [(8, [0, 2, 5, 7]), (32, [0, 10, 21, 31]), (256, [0, 85, 170, 255])])
def test_tgc_reference_index_map_matches_the_spec(n, rows):
    columns = tgc_reference_columns(n, 4)
    own = [i for i in range(n) if (columns[i] // 4 == i).any()]
    assert own == rows and all(int((columns[i] // 4 == i).sum()) == 1 for i in own)
    # spec worked examples: row 5 keeps slot 1 of samples 1, 9, 17, 25 (N=32) and 1, 3, 5, 7 (N=8)
    n32 = tgc_reference_columns(32, 4)[5]
    assert (n32 // 4).tolist() == [1, 9, 17, 25] and (n32 % 4).tolist() == [1, 1, 1, 1]
    assert (tgc_reference_columns(8, 4)[5] // 4).tolist() == [1, 3, 5, 7]


def test_tgc_modes_coincide_for_one_negative(batch):
    one = dict(batch, neg=batch["neg"][:, :1], teacher_neg=batch["teacher_neg"][:, :1])
    torch.testing.assert_close(_terms(one, tgc_mode="reference")["tgc"], _terms(one)["tgc"])


def test_distill_is_zero_for_an_identical_teacher_and_mean_divides_by_vectors(batch):
    same = dict(batch, teacher_image=batch["image"], teacher_text=batch["text"], teacher_neg=batch["neg"])
    assert _terms(same)["distill"].item() == 0.0
    total = _terms(batch)["distill"]
    torch.testing.assert_close(_terms(batch, distill_reduction="mean")["distill"], total / (N * (2 + K)))
    cos = (batch["image"] * batch["teacher_image"]).sum(-1)
    no_neg = _terms(batch, distill_negatives=False)["distill"]
    text_part = (2 - 2 * (batch["text"] * batch["teacher_text"]).sum(-1)).sum()
    torch.testing.assert_close(no_neg, (2 - 2 * cos).sum() + text_part)  # ||u - u*||² = 2 − 2 cos


def test_teacher_side_gets_no_gradient(batch):
    b = {k: v.clone().requires_grad_() for k, v in batch.items()}
    terms = _terms(b)
    (terms["tgc"] + terms["distill"]).backward()
    assert all(b[k].grad is None for k in ("teacher_image", "teacher_text", "teacher_neg"))
    assert b["text"].grad.abs().sum() > 0 and b["neg"].grad.abs().sum() > 0


def test_local_rows_partition_the_global_terms(batch):
    """--local-loss: the CE terms over rows 0..3 and 4..7 average to the global value; distill sums."""
    full = _terms(batch)
    halves = [_terms(batch, rows=torch.arange(h * 4, h * 4 + 4)) for h in (0, 1)]
    for name in ("base", "igc", "tgc"):
        torch.testing.assert_close((halves[0][name] + halves[1][name]) / 2, full[name], msg=name)
    torch.testing.assert_close(halves[0]["distill"] + halves[1]["distill"], full["distill"])


def _module_inputs(b):
    return dict(image_features=b["image"], text_features=b["text"], neg_text_features=b["neg"],
                teacher_image_features=b["teacher_image"], teacher_text_features=b["teacher_text"],
                teacher_neg_text_features=b["teacher_neg"], logit_scale=b["scale"])


def test_module_returns_the_weighted_terms(batch):
    loss = DeGLALoss(igc_weight=0.3, tgc_weight=0.2, distill_weight=0.01, tgc_scale=5.0, tgc_mode="reference")
    out = loss(**_module_inputs(batch), output_dict=True)
    want = _loop_terms(batch, tgc_mode="reference", tau=5.0)
    assert set(out) == {"contrastive_loss", "igc_loss", "tgc_loss", "distill_loss"}
    torch.testing.assert_close(out["contrastive_loss"].double(), want["base"])
    torch.testing.assert_close(out["igc_loss"].double(), 0.3 * want["igc"])
    torch.testing.assert_close(out["tgc_loss"].double(), 0.2 * want["tgc"])
    torch.testing.assert_close(out["distill_loss"].double(), 0.01 * want["distill"])
    torch.testing.assert_close(loss(**_module_inputs(batch)), sum(out.values()))


def test_module_without_teacher_needs_zero_teacher_weights(batch):
    inputs = {k: v for k, v in _module_inputs(batch).items() if not k.startswith("teacher")}
    with pytest.raises(ValueError, match="teacher"):
        DeGLALoss()(**inputs)
    out = DeGLALoss(tgc_weight=0, distill_weight=0)(**inputs, output_dict=True)
    assert out["tgc_loss"].item() == 0 and out["distill_loss"].item() == 0 and out["igc_loss"].item() > 0


def test_two_d_text_gives_plain_clip_infonce(batch):
    from open_clip.loss import ClipLoss
    out = DeGLALoss()(image_features=batch["image"], text_features=batch["text"], logit_scale=batch["scale"],
                      output_dict=True)
    torch.testing.assert_close(out["contrastive_loss"].double(),
                               ClipLoss()(batch["image"], batch["text"], batch["scale"]), rtol=1e-6, atol=1e-6)


def test_bad_arguments_name_the_flag():
    with pytest.raises(ValueError, match="--degla-tgc-mode"):
        DeGLALoss(tgc_mode="tiled")
    with pytest.raises(ValueError, match="--degla-distill-reduction"):
        DeGLALoss(distill_reduction="max")
    with pytest.raises(ValueError, match="--degla-igc-weight"):
        DeGLALoss(igc_weight=-1)


def test_create_loss_reads_the_flags():
    args, _ = build_preparser().parse_known_args(
        ["--loss", "degla", "--degla-tgc-mode", "reference", "--degla-distill-weight", "0.04",
         "--no-degla-distill-negatives"])
    args.local_loss, args.gather_with_grad, args.rank, args.world_size, args.horovod = False, False, 0, 1, False
    loss = create_loss("degla", args)
    assert isinstance(loss, DeGLALoss)
    assert (loss.igc_weight, loss.tgc_weight, loss.distill_weight, loss.tgc_scale) == (0.1, 0.1, 0.04, 10.0)
    assert loss.tgc_mode == "reference" and loss.distill_negatives is False
