#!/usr/bin/env bash
# Create or update the project virtualenv (default ./.venv, override with OCA_VENV) with the tested
# requirements (requirements-nodeps.txt without their dependencies) and an editable install of the package.
# Re-installs only when a requirements file or setup.py changed since the last run. Sourced by quickstart.sh
# and test.sh.
set -euo pipefail
OCA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OCA_VENV="${OCA_VENV:-$OCA_ROOT/.venv}"
OCA_PYTHON="$OCA_VENV/bin/python"
_stamp="$OCA_VENV/.open_clip_align-installed"
_want="$(cat "$OCA_ROOT/requirements.txt" "$OCA_ROOT/requirements-nodeps.txt" "$OCA_ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$OCA_PYTHON" ]; then
  _base="${OCA_BASE_PYTHON:-python3}"
  if ! "$_base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "[setup] error: $_base is Python $("$_base" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '(not found)'); the tested requirements need Python >= 3.11 (pandas 3, torch 2.14). Set OCA_BASE_PYTHON=/path/to/python3.11 or newer." >&2
    return 1 2>/dev/null || exit 1
  fi
  echo "[setup] creating virtualenv $OCA_VENV"
  "$_base" -m venv "$OCA_VENV"
fi
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_want" ]; then
  echo "[setup] installing requirements into $OCA_VENV (first run: several minutes)"
  "$OCA_PYTHON" -m pip install -q --upgrade pip
  "$OCA_PYTHON" -m pip install -q -r "$OCA_ROOT/requirements.txt"
  "$OCA_PYTHON" -m pip install -q --no-deps -r "$OCA_ROOT/requirements-nodeps.txt"
  "$OCA_PYTHON" -m pip install -q --no-deps --no-build-isolation -e "$OCA_ROOT"
  echo "$_want" > "$_stamp"
fi
export HF_HUB_OFFLINE=1
