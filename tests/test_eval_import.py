"""--import on the evaluation CLI: a user module's benchmark is usable by name and listed in --help."""
import json
import os
import subprocess
import sys

from conftest import REPO

USER_BENCHMARK = '''
from open_clip_align.eval.benchmarks import Part, register


@register("toy", "toy/: any folder")
def run_toy(scorer, root, options):
    return [Part("toy", "compositionality", {"acc": 100.0}, {"rule": "none"}, headline={"Toy acc": "acc"})]
'''


def test_a_benchmark_from_an_imported_module_runs_by_name(tmp_path):
    (tmp_path / "toy_benchmark.py").write_text(USER_BENCHMARK)
    (tmp_path / "data" / "toy").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    base = [sys.executable, "-m", "open_clip_align.eval", "--import", str(tmp_path / "toy_benchmark.py")]
    help_out = subprocess.run([*base, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert help_out.returncode == 0 and "toy" in help_out.stdout
    out = tmp_path / "out.json"
    proc = subprocess.run([*base, "--model", "hardneg-tiny-ViT", "--benchmark", "toy", "--data-root",
                           str(tmp_path / "data"), "--no-blind", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())
    records = records["results"] if isinstance(records, dict) else records
    assert [r["dataset"] for r in records] == ["toy"] and records[0]["metrics"]["acc"] == 100.0
    bad = subprocess.run([sys.executable, "-m", "open_clip_align.eval", "--import", "no_such_module_xyz",
                          "--model", "hardneg-tiny-ViT", "--benchmark", "toy"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--import no_such_module_xyz: ModuleNotFoundError" in bad.stderr
    assert "Traceback" not in bad.stderr
