#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite (CPU, offline). Extra args go to pytest.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
cd "$OCA_ROOT"
exec "$OCA_PYTHON" -m pytest -q tests "$@"
