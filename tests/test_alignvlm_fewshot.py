"""Few-shot captioning in the concatenation layout: the token layout of k in-context examples (hand-computed), the
draw (seeded per image, never an evaluated image), batched left-padded few-shot generation equal to one row at a
time, and vlm.evaluate --shots recording what it showed. Tiny random models, CPU, no downloads."""
import json
import sys
from pathlib import Path

import pytest
import torch

from open_clip_align.vlm import evaluate
from open_clip_align.vlm.checkpoint import load_checkpoint
from open_clip_align.vlm.fewshot import FewShotError, draw_shots
from open_clip_align.vlm.layout import SequenceLayout
from open_clip_align.vlm.lm import char_tokenizer
from training import alignvlm

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_layout_puts_k_examples_before_the_image():
    tok = char_tokenizer()
    layout = SequenceLayout(n_visual=2, bos=1, eos=2, pad=0)
    out = layout.encode(tok, ["p:", "p:"], None, shots=[["ab", "c"], ["d", "ef"]])
    ids = lambda text: tok.encode(text, add_special_tokens=False)         # noqa: E731
    rows = [[1] + [0, 0] + ids("p: ab") + [2] + [0, 0] + ids("p: c") + [2] + [0, 0] + ids("p:"),
            [1] + [0, 0] + ids("p: d") + [2] + [0, 0] + ids("p: ef") + [2] + [0, 0] + ids("p:")]
    length = max(map(len, rows))
    for i, row in enumerate(rows):                                        # left padded, for generation
        assert out["input_ids"][i].tolist() == [0] * (length - len(row)) + row
        assert out["attention_mask"][i].tolist() == [0] * (length - len(row)) + [1] * len(row)
    vis = out["visual_mask"][0].tolist()
    assert sum(vis) == 3 * 2 and vis[1:3] == [True, True] and vis[-4:-2] == [True, True]
    with pytest.raises(ValueError, match="1 rows of few-shot captions for 2 prompts"):
        layout.encode(tok, ["p:", "p:"], None, shots=[["ab"]])


def test_draw_is_seeded_per_image_and_never_shows_an_evaluated_image():
    support = [f"/s/{i}.png" for i in range(6)] + ["/e/0.png"]
    refs = {p: [f"cap {p} a", f"cap {p} b"] for p in support}
    names = [p.split("/", 2)[2] for p in support]
    shots, overlap = draw_shots(3, ["/e/0.png", "/e/1.png"], ["e0", "e1"], support, names, refs, seed=7)
    assert overlap == 1 and all(len(r) == 3 for r in shots)
    assert all(s.path != "/e/0.png" and s.caption in refs[s.path] for r in shots for s in r)
    assert all(len({s.path for s in r}) == 3 for r in shots)             # k distinct examples
    # an image's examples depend on (seed, its name) only, not on the other evaluated images
    clean = support[:6]
    both, _ = draw_shots(3, ["/e/0.png", "/e/1.png"], ["e0", "e1"], clean, names[:6], refs, seed=7)
    alone, _ = draw_shots(3, ["/e/1.png"], ["e1"], clean, names[:6], refs, seed=7)
    assert alone[0] == both[1]
    other, _ = draw_shots(3, ["/e/1.png"], ["e1"], clean, names[:6], refs, seed=8)
    assert other[0] != both[1]
    with pytest.raises(FewShotError, match="--support has 6 image"):
        draw_shots(7, ["/e/0.png"], ["e0"], support, names, refs, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_csv):
    tmp = tmp_path_factory.mktemp("fewshot")
    run = alignvlm.main(["--train-data", str(tiny_csv), "--model", "hardneg-tiny-ViT", "--lm", "tiny-llama",
                         "--batch-size", "4", "--workers", "0", "--logs", str(tmp / "logs"), "--name", "a",
                         "--device", "cpu", "--steps", "4", "--lr", "1e-2"])
    rows = [line.split("\t") for line in tiny_csv.read_text().splitlines()[1:]]
    entries = [{"image": image, "caption": [caption]} for image, caption, _ in rows]
    (tiny_csv.parent / "fs_eval.json").write_text(json.dumps(entries[:5]))
    (tiny_csv.parent / "fs_support.json").write_text(json.dumps(entries[3:]))     # 3, 4 are also evaluated
    return {"ckpt": run["checkpoint"], "root": tiny_csv.parent, "tmp": tmp}


def test_batched_few_shot_generation_equals_one_row_at_a_time(trained):
    model, tok, preprocess, _ = load_checkpoint(trained["ckpt"])
    paths = [str(trained["root"] / "img" / f"{i}.png") for i in range(6)]
    images = evaluate.load_images(paths[:3], preprocess)
    shot_images = evaluate.load_images(paths[3:5] * 3, preprocess).reshape(3, 2, *images.shape[1:])
    captions = [["a red square", "a blue square left of a green one"], ["x", "y"], ["a long caption " * 3, "b"]]
    prompts = ["A short caption:"] * 3
    together = model.generate(images, prompts, tok, max_new_tokens=5, return_ids=True, shot_images=shot_images,
                              shot_captions=captions)
    for i in range(3):
        alone = model.generate(images[i:i + 1], prompts[:1], tok, max_new_tokens=5, return_ids=True,
                               shot_images=shot_images[i:i + 1], shot_captions=captions[i:i + 1])
        assert together[i].tolist() == alone[0].tolist()
    zero = model.generate(images, prompts, tok, max_new_tokens=5, return_ids=True)
    assert not torch.equal(zero, together)                                # the examples reach the LM


def test_evaluate_shots_records_the_examples(trained, tmp_path, monkeypatch, capsys):
    data, support = trained["root"] / "fs_eval.json", trained["root"] / "fs_support.json"
    base = ["--checkpoint", trained["ckpt"], "--data", str(data), "--max-new-tokens", "5", "--quiet"]
    result = evaluate.main([*base, "--out", str(tmp_path / "o"), "--shots", "2", "--support", str(support),
                            "--seed", "5", "--batch-size", "2"])
    assert result["shots"] == 2 and result["seed"] == 5
    assert result["few_shot"]["support"] == str(support) and result["few_shot"]["support_images"] == 13
    assert result["few_shot"]["left_out_evaluated"] == 2
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["shots"] == 2 and "2-shot" in (tmp_path / "o" / "results.md").read_text()
    shots = json.loads((tmp_path / "o" / "shots.json").read_text())
    evaluated = {e["image"] for e in json.loads(data.read_text())}
    assert [r["image"] for r in shots] == [e["image"] for e in json.loads(data.read_text())]
    assert all(not {s["image"] for s in r["shots"]} & evaluated for r in shots)
    # the same seed gives the same examples with another batch size; the captions are one generate call's
    again = evaluate.main([*base, "--out", str(tmp_path / "p"), "--shots", "2", "--support", str(support),
                           "--seed", "5", "--batch-size", "5"])
    assert json.loads((tmp_path / "p" / "shots.json").read_text()) == shots
    model, tok, preprocess, _ = load_checkpoint(trained["ckpt"])
    root = trained["root"]
    direct = model.generate(evaluate.load_images([str(root / r["image"]) for r in shots], preprocess),
                            ["A short caption:"] * 5, tok, max_new_tokens=5,
                            shot_images=evaluate.load_images([str(root / s["image"]) for r in shots
                                                              for s in r["shots"]], preprocess).reshape(5, 2, 3, 64, 64),
                            shot_captions=[[s["caption"] for s in r["shots"]] for r in shots])
    for out in (tmp_path / "o", tmp_path / "p"):
        assert [c["caption"] for c in json.loads((out / "captions.json").read_text())] == direct
    assert again["metrics"] == result["metrics"]
    cases = [(["--shots", "2"], "--shots 2 needs --support FILE"),
             (["--support", str(support)], "--support is only used with --shots N"),
             (["--shots", "12", "--support", str(support)], "--shots 12: --support has 11 image(s)"),
             (["--prompt", "Hi:"], "--prompt: a checkpoint is evaluated with its own training prompt")]
    for flags, fragment in cases:
        monkeypatch.setattr(sys, "argv", ["x", *base, "--out", str(tmp_path / "q"), *flags])
        with pytest.raises(SystemExit):
            evaluate.cli()
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    assert not Path(tmp_path / "q").exists()
