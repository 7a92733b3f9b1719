"""scripts/setup_env.sh: an interpreter older than the pinned set needs stops with one clear message."""
import os
import subprocess

from conftest import REPO


def test_an_old_python_is_refused_before_creating_the_venv(tmp_path):
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\n"
                    "case \"$2\" in *version_info*) exit 1;; *python_version*) echo 3.9.18;; esac\n"
                    "echo 'must not be asked to create a venv' >&2; exit 3\n")
    fake.chmod(0o755)
    env = dict(os.environ, OCA_BASE_PYTHON=str(fake), OCA_VENV=str(tmp_path / "venv"))
    proc = subprocess.run(["bash", "-c", f"source {REPO}/scripts/setup_env.sh"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "Python 3.9.18" in proc.stderr and ">= 3.11" in proc.stderr and "OCA_BASE_PYTHON" in proc.stderr
    assert "must not be asked" not in proc.stderr and not (tmp_path / "venv").exists()
