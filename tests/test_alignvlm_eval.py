"""AlignVLM evaluation CLIs on tiny checkpoints: captioning on a Karpathy-format file and the noise-robustness
comparison of an ALIGN and an MLP connector. Tiny random models, CPU, no downloads."""
import json
import math
from pathlib import Path

import pytest
import torch

from open_clip_align.vlm import AlignConnector, MLPConnector
from open_clip_align.vlm import evaluate, noise
from open_clip_align.vlm.caption_metrics import caption_scores
from open_clip_align.vlm.checkpoint import load_checkpoint
from training import alignvlm

pytest.importorskip("transformers")
pytest.importorskip("pycocoevalcap")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_csv):
    """ALIGN and MLP checkpoints (stage A, 8 steps) and a Karpathy file over 8 of the images, 2 refs each."""
    tmp = tmp_path_factory.mktemp("eval")
    common = ["--train-data", str(tiny_csv), "--model", "hardneg-tiny-ViT", "--lm", "tiny-llama", "--batch-size", "4",
              "--workers", "0", "--logs", str(tmp / "logs"), "--device", "cpu", "--steps", "8", "--lr", "1e-2"]
    align = alignvlm.main([*common, "--name", "align"])["checkpoint"]
    mlp = alignvlm.main([*common, "--name", "mlp", "--connector", "mlp"])["checkpoint"]
    rows = [line.split("\t") for line in tiny_csv.read_text().splitlines()[1:9]]
    entries = [{"image": image, "caption": [caption, caption.replace("left of", "next to")]}
               for image, caption, _ in rows]
    karpathy = tiny_csv.parent / "karpathy_tiny.json"
    karpathy.write_text(json.dumps(entries))
    return {"align": align, "mlp": mlp, "karpathy": karpathy, "entries": entries, "root": tiny_csv.parent, "tmp": tmp}


def test_caption_eval_cli(trained, tmp_path):
    out = tmp_path / "out"
    result = evaluate.main(["--checkpoint", str(Path(trained["align"]).parents[1]), "--data", str(trained["karpathy"]),
                            "--out", str(out), "--batch-size", "3", "--max-new-tokens", "12", "--seed", "7",
                            "--quiet"])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["checkpoint"] == trained["align"] and saved["step"] == 8
    assert (saved["split"], saved["n_images"], saved["n_references"]) == ("karpathy_tiny", 8, 16)
    assert saved["prompt"] == "A short caption:" and saved["seed"] == 7 and saved["max_new_tokens"] == 12
    assert saved["decoding"] == {"strategy": "greedy", "num_beams": 1, "do_sample": False, "max_new_tokens": 12,
                                 "stop": "EOS"}
    captions = json.loads((out / "captions.json").read_text())
    assert [c["image_id"] for c in captions] == [int(Path(e["image"]).stem) for e in trained["entries"]]
    # the batched CLI (batches of 3, left padding) gives what one direct generate call gives
    model, tokenizer, preprocess, _ = load_checkpoint(trained["align"])
    paths = [str(trained["root"] / e["image"]) for e in trained["entries"]]
    direct = model.generate(evaluate.load_images(paths, preprocess), ["A short caption:"] * 8, tokenizer,
                            max_new_tokens=12)
    assert [c["caption"] for c in captions] == direct
    # the metrics are pycocoevalcap's on exactly those captions
    refs = {p: e["caption"] for p, e in zip(paths, trained["entries"])}
    assert saved["metrics"] == caption_scores(refs, dict(zip(paths, direct)), ["bleu4", "cider", "rouge_l"])
    table = (out / "results.md").read_text()
    assert "| split | images | BLEU-4 | CIDEr-D | ROUGE-L |" in table and "greedy" in table
    beam = evaluate.main(["--checkpoint", trained["align"], "--data", str(trained["karpathy"]), "--out",
                          str(tmp_path / "beam"), "--num-beams", "2", "--max-new-tokens", "6", "--limit", "4", "--quiet"])
    assert beam["decoding"]["strategy"] == "beam" and beam["n_images"] == 4


def _cli(module, monkeypatch, capsys, argv):
    monkeypatch.setattr("sys.argv", ["x", *argv])
    with pytest.raises(SystemExit) as exc:
        module.cli()
    return exc.value.code, capsys.readouterr().err.strip()


def test_eval_bad_input(trained, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"image": "img/0.png", "caption": ["a"]}, {"image": "img/404.png", "caption": ["b"]}]))
    no_caption = tmp_path / "nocap.json"
    no_caption.write_text(json.dumps([{"image": "img/0.png"}]))
    base = ["--checkpoint", trained["align"], "--out", str(tmp_path / "o"), "--image-root", str(trained["root"])]
    cases = [([*base, "--data", str(broken)], ["broken.json", "entry 1", "404.png", "--image-root"]),
             ([*base, "--data", str(no_caption)], ["nocap.json", "entry 0", "'caption'"]),
             ([*base, "--data", str(tmp_path / "absent.json")], ["absent.json", "not found"]),
             (["--checkpoint", str(tmp_path), "--data", str(trained["karpathy"]), "--out", str(tmp_path / "o")],
              ["not an AlignVLM checkpoint"]),
             ([*base, "--data", str(trained["karpathy"]), "--batch-size", "0"], ["--batch-size"])]
    for argv, expected in cases:
        code, err = _cli(evaluate, monkeypatch, capsys, argv)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert all(fragment in err for fragment in expected), (expected, err)
    assert not (tmp_path / "o").exists()
    code, err = _cli(noise, monkeypatch, capsys, ["--checkpoint", trained["align"], "--data", str(trained["karpathy"]),
                                                  "--out", str(tmp_path / "o"), "--sigma", "1"])
    assert code == 2 and "LABEL=PATH" in err


def test_noise_cli_compares_connectors(trained, tmp_path):
    out = tmp_path / "noise"
    result = noise.main(["--checkpoint", f"align={trained['align']}", "--checkpoint", f"mlp={trained['mlp']}",
                         "--data", str(trained["karpathy"]), "--out", str(out), "--sigma", "0", "3",
                         "--relative-sigma", "0.5", "--batch-size", "3", "--max-new-tokens", "6", "--quiet"])
    assert json.loads((out / "noise_results.json").read_text()) == json.loads(json.dumps(result))
    assert "| checkpoint | connector | sigma | sigma/std | cos dist |" in (out / "noise_results.md").read_text()
    model, _, preprocess, _ = load_checkpoint(trained["align"])
    paths = [str(trained["root"] / e["image"]) for e in trained["entries"]]
    feats = model.encode_vision(evaluate.load_images(paths, preprocess))
    std = feats.double().std(unbiased=False).item()
    clean_eval = evaluate.main(["--checkpoint", trained["align"], "--data", str(trained["karpathy"]), "--out",
                                str(tmp_path / "clean"), "--max-new-tokens", "6", "--quiet"])
    for label in ("align", "mlp"):
        r = result["checkpoints"][label]
        assert r["connector"] == label
        assert r["feature_std"] == pytest.approx(std, rel=1e-6)          # both checkpoints share the tower
        zero, three, half = r["noise"]
        assert zero["sigma"] == 0 and zero["cosine_distance"] == pytest.approx(0.0, abs=1e-6)
        assert zero["metrics"] == r["clean_metrics"] and all(v == 0 for v in zero["delta"].values())
        assert three["sigma"] == 3 and three["sigma_relative"] == pytest.approx(3 / std)
        assert half["given_as"] == "relative" and half["sigma"] == pytest.approx(0.5 * std)
        assert half["sigma_relative"] == pytest.approx(0.5)
        assert 0 < half["cosine_distance"] < three["cosine_distance"] <= 2
        for key, value in three["metrics"].items():
            assert three["delta"][key] == pytest.approx(value - r["clean_metrics"][key])
    assert result["checkpoints"]["align"]["clean_metrics"] == clean_eval["metrics"]


def test_feature_noise_is_seeded_per_batch():
    feats = torch.zeros(2, 4, 3)
    a, b = noise.FeatureNoise(2.0, seed=1), noise.FeatureNoise(2.0, seed=1)
    assert torch.equal(a.for_batch(0)(feats), b.for_batch(0)(feats))
    assert not torch.equal(a.for_batch(0)(feats), a.for_batch(1)(feats))
    big = noise.FeatureNoise(2.0, seed=1).for_batch(0)(torch.zeros(64, 64, 64))
    assert big.std().item() == pytest.approx(2.0, rel=0.01) and abs(big.mean().item()) < 0.01
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    y = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    torch.testing.assert_close(noise.cosine_distance(x, y), torch.tensor([[1.0, 0.0]]))


def test_align_output_is_robust_when_embeddings_share_a_direction():
    """The paper's mechanism: a dense P mixes rows of E, so when E's rows share a large common direction (as in
    trained LMs: SmolLM2's mean row has norm 2.2 against 3.2 per row) ALIGN's output barely moves under
    feature noise, while an MLP's output does. Unit-std features, noise std 3 (paper's sigma)."""
    torch.manual_seed(0)
    vocab, hidden, width = 512, 64, 32
    embed = 0.7 * torch.randn(hidden) / math.sqrt(hidden) * 3 + 0.5 * torch.randn(vocab, hidden) / math.sqrt(hidden) * 3
    feats = torch.nn.functional.layer_norm(torch.randn(4, 16, width), (width,))
    noisy = feats + 3.0 * torch.randn_like(feats)
    align = AlignConnector(width, hidden, vocab, lm_head_weight=embed)
    mlp = MLPConnector(width, hidden)
    with torch.no_grad():
        d_align = noise.cosine_distance(align(feats, embed), align(noisy, embed)).mean().item()
        d_mlp = noise.cosine_distance(mlp(feats), mlp(noisy)).mean().item()
    assert d_align < 0.05 < 0.3 < d_mlp, (d_align, d_mlp)
