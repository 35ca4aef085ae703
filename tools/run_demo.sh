#!/usr/bin/env bash
# The main job: sets the environment up first when needed (tools/setup_env.sh), makes the mini
# datasets, trains Mask R-CNN and UperNet with each position encoding on the CPU, evaluates them
# (COCO box/mask AP, mIoU) and prints the table (also in work_dirs/mini/results.md).
# Extra arguments go to tools/run_mini.py (e.g. --methods pvg mpvg --det-iters 200).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec .venv/bin/python tools/run_mini.py "$@"
