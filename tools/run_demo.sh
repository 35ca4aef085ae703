#!/usr/bin/env bash
# The main job: sets the environment up first when needed (tools/setup_env.sh), then builds Mask
# R-CNN and UperNet on ViT-Adapter-Ti with each position encoding and runs them on a CPU image.
# Extra arguments go to tools/smoke.py (e.g. --methods PVG MPVG --size 512 512).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec .venv/bin/python tools/smoke.py "$@"
