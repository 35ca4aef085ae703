#!/usr/bin/env bash
# The test suite: sets the environment up first when needed (tools/setup_env.sh), then runs
# pytest on tests/. Extra arguments go to pytest (e.g. -k checkpoint, -x).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
