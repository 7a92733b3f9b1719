#!/usr/bin/env bash
# Set up the environment if needed, then run the quickstart (see scripts/quickstart.py --help).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
cd "$OCA_ROOT"
exec "$OCA_PYTHON" scripts/quickstart.py "$@"
