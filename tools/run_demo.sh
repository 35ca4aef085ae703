#!/usr/bin/env bash
# The main job: sets the environment up first when needed (tools/setup_env.sh), makes the mini
# datasets, and per position encoding pre-trains a ViT classifier on the mini ImageNet-layout set,
# then trains Mask R-CNN and UperNet from that checkpoint and from random initialisation on the
# CPU, evaluates everything (top-1, COCO box/mask AP, mIoU) and prints the table (also in
# work_dirs/mini/results.md). Extra arguments go to tools/run_mini.py (e.g. --methods pvg mpvg
# --pretrain-iters 400 --det-iters 200 --jobs 1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec .venv/bin/python tools/run_mini.py "$@"
