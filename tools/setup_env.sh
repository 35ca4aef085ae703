#!/usr/bin/env bash
# Sets up pe-dense from a machine that has only Python 3.11: an isolated environment in .venv,
# torch, mmcv 2.1.0 built with its compiled ops (cached outside the clone), mmengine, mmdet,
# mmsegmentation, mmpretrain, timm, pycocotools, onnx/onnxscript/onnxruntime (ONNX export) and
# pe_dense itself (editable). Safe to run again: a finished setup is recorded in .venv and the
# second run returns at once.
#
# Environment:
#   PYTHON          interpreter that creates the environment (default: python3.11, else python3)
#   PE_DENSE_CACHE  where built wheels are kept (default: ~/.cache/pe-dense)
#   MAX_JOBS        parallel compile jobs for mmcv (default: number of cores, at most 2 per 8 GB)
#   PE_DENSE_CUDA   auto (default: mmcv's CUDA ops when torch sees a GPU), 1 or 0 (force CUDA or
#                   CPU ops); the CUDA build and its compiler: tools/build_mmcv.sh
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
MMSEG_VERSION=1.2.2
MMPRETRAIN_VERSION=1.2.0
NSTEPS=6

CURRENT_STEP="start"
step() {
    CURRENT_STEP="$1/$NSTEPS: $2"
    echo "[setup] step $CURRENT_STEP"
}
fail() {
    echo "[setup] FAILED at step $CURRENT_STEP" >&2
    echo "[setup] fix the error above and run tools/setup_env.sh again; finished steps are kept." >&2
}
trap fail ERR

# The stamp covers everything that decides what is installed: this script, the mmcv build and
# setup.py.
STAMP="$VENV/.pe-dense-setup"
WANT=$(cat "$ROOT/tools/setup_env.sh" "$ROOT/tools/build_mmcv.sh" "$ROOT/setup.py" | sha256sum | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c 'import pe_dense' 2>/dev/null; then
    echo "[setup] environment in .venv is up to date"
    exit 0
fi

step 1 "Python environment at .venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    "$PY" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' || {
        echo "[setup] Python >= 3.9 is needed (3.11 is what is tested); set PYTHON=/path/to/python" >&2
        false
    }
    "$PY" -m venv "$VENV"
fi
PYV="$VENV/bin/python"
PIP=("$PYV" -m pip install --disable-pip-version-check --progress-bar off)
# pip install, without the "already satisfied" noise; pip's exit status is kept (pipefail).
pipi() { "${PIP[@]}" "$@" 2>&1 | { grep -v -E '^(Requirement already satisfied|Looking in|WARNING: Location)' || true; }; }
PYTAG=$("$PYV" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
echo "[setup] using $("$PYV" --version) ($PYTAG) at $VENV"

step 2 "torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION"
pipi "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

step 3 "build prerequisites and mmengine $MMENGINE_VERSION"
pipi wheel ninja psutil numpy packaging addict pyyaml yapf Pillow \
    opencv-python "mmengine==$MMENGINE_VERSION"

step 4 "mmcv $MMCV_VERSION with compiled ops"
# CPU ops, or CUDA ops when torch sees a GPU (PE_DENSE_CUDA=auto|0|1): see tools/build_mmcv.sh.
have_mmcv_ops() {
    "$PYV" - <<PYEOF 2>/dev/null
import os
import mmcv, mmcv.ops, torch
from mmcv.ops import get_compiling_cuda_version
from mmcv.utils import ext_loader
ext_loader.load_ext('_ext', ['nms'])
assert mmcv.__version__ == '$MMCV_VERSION', mmcv.__version__
mode = os.environ.get('PE_DENSE_CUDA', 'auto')
want_cuda = mode == '1' or (mode == 'auto' and torch.cuda.is_available())
assert get_compiling_cuda_version() != 'not available' or not want_cuda, 'no CUDA ops'
PYEOF
}
if have_mmcv_ops; then
    echo "[setup] mmcv $MMCV_VERSION with ops already installed"
else
    WHEEL=$(bash "$ROOT/tools/build_mmcv.sh" "$PYV" | tail -1)
    pipi --no-deps --force-reinstall "$WHEEL"
    pipi "$WHEEL"
    have_mmcv_ops || { echo "[setup] mmcv installed but mmcv.ops does not load (or lacks the CUDA ops asked for)" >&2; false; }
    "$PYV" -c 'from mmcv.ops import get_compiling_cuda_version as v; print("[setup] mmcv ops: CUDA", v()) if v() != "not available" else print("[setup] mmcv ops: CPU only")'
fi

step 5 "mmdet $MMDET_VERSION, mmsegmentation $MMSEG_VERSION, mmpretrain $MMPRETRAIN_VERSION, timm, pycocotools, ONNX export and test tools"
# mmengine imports pkg_resources at run time (removed from setuptools 81 on); torch wants >= 77.
# transformers is left out on purpose: beside pycocotools it makes `import mmpretrain` reach its
# multimodal models, which fail on recent transformers releases.
pipi "mmdet==$MMDET_VERSION" "mmsegmentation==$MMSEG_VERSION" "mmpretrain==$MMPRETRAIN_VERSION" \
    timm pycocotools ftfy regex \
    'setuptools<81' \
    'onnx>=1.16' 'onnxscript>=0.3' 'onnxruntime>=1.18' \
    pytest ruff matplotlib

step 6 "pe_dense (editable)"
pipi --no-build-isolation --no-deps -e "$ROOT"
"$PYV" -m pip check | grep -v -i 'no broken' || true
"$PYV" -c 'import mmdet, mmseg, mmpretrain, mmcv, torch, pe_dense
print(f"[setup] ready: torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}, pe_dense {pe_dense.__version__}")'
echo "$WANT" > "$STAMP"
