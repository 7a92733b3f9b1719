#!/usr/bin/env bash
# Set up the environment if needed, then run the quickstart (see scripts/quickstart.py --help). The set-up's time
# (venv check, or the first install) is the first row of the quickstart's time-per-stage table.
set -euo pipefail
export OCA_QUICKSTART_T0="$(date +%s.%N)"
source "$(dirname "$0")/setup_env.sh"
cd "$OCA_ROOT"
exec "$OCA_PYTHON" scripts/quickstart.py "$@"
