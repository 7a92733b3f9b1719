"""The seed's recipe end to end, offline, on tiny inputs in the sources' own formats: scripts/recipe_smolvlm_align.sh
(prepare PixMo-Cap and Localized Narratives, COCO Karpathy test/val; stage A; stage B LoRA; zero- and few-shot COCO
evaluation) with a tiny random SmolVLM. The script prints its commands (DRY_RUN=1); each is run in-process
through the module's own main, as `python -m` would run it."""
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from alignvlm_fixtures import server  # noqa: F401  (fixture)
from conftest import REPO
from open_clip_align.vlm import evaluate, prepare
from open_clip_align.vlm.tiny_smolvlm import write_tiny_smolvlm
from training import alignvlm

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = REPO / "scripts" / "recipe_smolvlm_align.sh"
MAINS = {"open_clip_align.vlm.prepare": prepare.main, "training.alignvlm": alignvlm.main,
         "open_clip_align.vlm.evaluate": evaluate.main}


def _png(colour) -> bytes:
    import io
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(out, format="PNG")
    return out.getvalue()


def test_the_seed_recipe_runs_end_to_end(tmp_path, server):
    www, base = server
    for i in range(4):
        (www / f"{i}.png").write_bytes(_png((60 * i, 100, 0)))
    pixmo = tmp_path / "pixmo" / "train-00000-of-00001.parquet"
    pixmo.parent.mkdir()
    pq.write_table(pa.table({"image_url": [f"{base}/{i}.png" for i in range(4)],
                             "caption": [f"A long PixMo caption about picture {i}." for i in range(4)],
                             "transcripts": [[] for _ in range(4)]}), pixmo)
    ln = tmp_path / "ln" / "train-00000-of-00001.parquet"
    ln.parent.mkdir()
    pq.write_table(pa.table({"images": [[{"bytes": _png((0, 40 * i, 90)), "path": None}] for i in range(4)],
                             "texts": [[{"user": "Describe.", "assistant": f"In this image there is shape {i}.",
                                         "source": "localized_narratives"}] for i in range(4)]}), ln)
    coco = tmp_path / "coco"
    (coco / "val2014").mkdir(parents=True)
    images = []
    for i, split in enumerate(["test", "test", "val", "val", "train"]):
        name = f"COCO_val2014_{i:012d}.jpg"
        (coco / "val2014" / name).write_bytes(_png((i * 50, 0, 200)))
        images.append({"filepath": "val2014", "filename": name, "split": split, "cocoid": i,
                       "sentences": [{"raw": f"A photo number {i}."}, {"raw": f"Picture {i}."}]})
    (coco / "dataset_coco.json").write_text(json.dumps({"images": images}))
    env = dict(os.environ, DRY_RUN="1", VLM_PATH=write_tiny_smolvlm(tmp_path / "tiny-smolvlm"),
               PIXMO=str(tmp_path / "pixmo" / "*.parquet"), LN=str(tmp_path / "ln" / "*.parquet"),
               COCO_KARPATHY=str(coco / "dataset_coco.json"), COCO_ROOT=str(coco), OUT=str(tmp_path / "out"),
               BATCH="2", ACCUM="2", STEPS="2", PRECISION="fp32", DEVICE="cpu", WORKERS="0", SHOTS="1")
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert [c[1] for c in commands] == ["open_clip_align.vlm.prepare"] * 4 + ["training.alignvlm"] * 2 + \
        ["open_clip_align.vlm.evaluate"] * 2
    results = [MAINS[command[1]](command[2:]) for command in commands]
    assert results[0]["samples"] == 4 and results[1]["samples"] == 4
    stage_b = Path(results[5]["checkpoint"])
    assert (stage_b / "lora" / "adapter_config.json").is_file()
    run_config = json.loads((stage_b / "run_config.json").read_text())
    assert run_config["model"]["vlm"] == "smolvlm" and run_config["model"]["lm_training"] == "lora"
    assert run_config["training"]["accum_freq"] == 2 and run_config["training"]["init_from"].endswith("stage-a")
    zero, few = results[6], results[7]
    assert (zero["shots"], few["shots"], zero["n_images"], few["n_images"]) == (0, 1, 2, 2)
    shots = json.loads((tmp_path / "out" / "eval" / "1-shot" / "shots.json").read_text())
    assert {s["image"] for r in shots for s in r["shots"]} <= {"val2014/COCO_val2014_000000000002.jpg",
                                                             "val2014/COCO_val2014_000000000003.jpg"}
    missing = subprocess.run(["bash", str(SCRIPT)], env={k: v for k, v in env.items() if k != "VLM_PATH"},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "set VLM_PATH" in missing.stderr
