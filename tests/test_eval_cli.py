"""``python -m open_clip_align.eval`` end to end: ShapeCrepe through every code path, outputs, cache, errors."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from open_clip_align.data.synthetic import generate
from open_clip_align.eval import cli
from open_clip_align.eval.items import EvalDataError

MODEL = "hardneg-tiny-ViT"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli") / "shapes"
    generate(root, preset="ci", seed=0, progress=False)
    return root


def _args(*argv):
    return cli._parser().parse_args(["--model", MODEL, "--quiet", *argv])


def test_synthetic_benchmark_runs_every_path_with_blind_baselines(shapes, tmp_path):
    records = cli.evaluate(_args("--benchmark", "synthetic", "--data-root", f"synthetic={shapes}"))
    datasets = [r["dataset"] for r in records]
    assert datasets == [f"shapecrepe/{split}/{kind}" for split in ("heldout", "iid")
                        for kind in ("sugar_crepe", "winoground", "zeroshot")]
    by_name = {r["dataset"]: r for r in records}
    sugar = by_name["shapecrepe/iid/sugar_crepe"]
    assert sugar["task"] == "compositionality" and sugar["model"] == MODEL
    assert sugar["protocol"]["precision"] == "fp32" and sugar["protocol"]["n_items"] == 350
    assert "strict" in sugar["protocol"]["tie_policy"]
    # swap subsets are 100% bag-identical by construction
    assert sugar["metrics"]["subsets"]["swap_att"]["bag_identical_share"] == 100.0
    blind = sugar["metrics"]["blind"]
    assert set(blind) == {"ngram", "caption_prior"}
    # counterbalanced: a text-only scorer cannot beat 50% on any subset (ties count as wrong)
    for name, result in blind.items():
        assert all(s["acc"] <= 50.0 for s in result["subsets"].values()), name
    wino = by_name["shapecrepe/iid/winoground"]["metrics"]
    assert {"text", "image", "group"} <= set(wino)
    zs = by_name["shapecrepe/iid/zeroshot"]
    assert zs["task"] == "zeroshot_classification" and zs["metrics"]["n_classes"] == 40


def test_cli_writes_json_markdown_and_compares(shapes, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    out = tmp_path / "a.json"
    base = [sys.executable, "-m", "open_clip_align.eval", "--model", MODEL, "--benchmark", "sugarcrepe",
            "winoground", "--data-root", f"sugarcrepe={shapes}/sugarcrepe/iid", f"winoground={shapes}/winoground/iid",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    proc = subprocess.run([*base, "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["dataset"] for r in records] == ["sugar_crepe", "winoground"]
    assert "swap_att" in proc.stdout and "|" in proc.stdout
    assert list((tmp_path / "cache").glob("image-features-*.pt"))

    again = tmp_path / "b.json"
    proc = subprocess.run([*base, "--out", str(again), "--no-blind"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cached = json.loads(again.read_text())
    assert cached[0]["metrics"]["subsets"] == records[0]["metrics"]["subsets"]  # same numbers from cached features
    assert "blind" not in cached[0]["metrics"]

    proc = subprocess.run([sys.executable, "-m", "open_clip_align.eval", "--compare", str(out), str(again),
                           "--compare-png", str(tmp_path / "c.png")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "swap_att" in proc.stdout and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_feature_cache_skips_encoding_on_the_second_run(shapes, tmp_path):
    argv = ("--benchmark", "sugarcrepe", "--data-root", f"sugarcrepe={shapes}/sugarcrepe/iid",
            "--cache-dir", str(tmp_path), "--no-blind")
    first = cli.build_scorer(_args(*argv))
    cli.evaluate(_args(*argv), scorer=first)
    second = cli.build_scorer(_args(*argv))
    records = cli.evaluate(_args(*argv), scorer=second)
    assert first.images_encoded == 350 and second.images_encoded == 0 and records[0]["metrics"]["n_items"] == 350


def test_missing_data_says_what_is_expected_where(tmp_path):
    with pytest.raises(EvalDataError, match="valse.*not a directory.*instrument"):
        cli.data_roots([str(tmp_path)], ["valse"])
    with pytest.raises(EvalDataError, match="unknown benchmark 'sugar'"):
        cli.data_roots([f"sugar={tmp_path}"], ["sugarcrepe"])
    (tmp_path / "sugarcrepe").mkdir()
    assert cli.data_roots([str(tmp_path)], ["sugarcrepe"]) == {"sugarcrepe": tmp_path / "sugarcrepe"}
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "open_clip_align.eval", "--model", MODEL, "--benchmark", "sugarcrepe",
                           "--data-root", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "replace_obj.json" in proc.stderr and "Traceback" not in proc.stderr


def test_clip_benchmark_entry_imports_the_plugin_then_runs_its_cli(tmp_path):
    """A stand-in clip_benchmark package records whether plugin model names were known when main() ran."""
    fake = tmp_path / "fake" / "clip_benchmark"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text(
        "import sys, open_clip\n"
        "def main():\n"
        "    print('known' if 'degla-tiny-ViT' in open_clip.list_models() else 'unknown', sys.argv[1:])\n"
        "    return 0\n")
    code = "import sys; sys.argv[1:] = ['eval', '--no_amp']; from open_clip_align.eval.clip_benchmark_cli import main; main()"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'fake'}{os.pathsep}{REPO}", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("known ['eval', '--no_amp']")
    env["PYTHONPATH"] = str(REPO)  # without CLIP_benchmark: one line saying how to install it
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "pip install 'open_clip_align[eval]'" in proc.stderr
