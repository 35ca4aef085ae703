#!/usr/bin/env bash
# Everything pe-dense checks on a GPU, in one run of at most 8 minutes on a lent machine that has
# Python 3.12 with torch 2.11.0+cu130 and no package registry; gpu_wheels/ (tools/gpu_wheels.sh)
# travels with the working tree and holds what the machine lacks. Steps, each with a timeout cut
# to what is left of the budget, each logged under $OUT:
#   1. env.txt: GPU, driver, Python, torch, the packages already there.
#   2. a venv that sees what python3 sees (through a .pth file: python3 is itself a venv there,
#      and `venv --system-site-packages` from a venv gives the base interpreter's packages, not
#      the venv's), except transformers (see install_env); the wheels installed into it with
#      pip --no-index --no-deps.
#   3. imports/: mmcv._ext imported in fresh subprocesses with PYTHONFAULTHANDLER=1, in several
#      orders (torch first, alone, after a CUDA context, with cv2 first, the GPU hidden), then
#      mmcv.ops, then the whole stack with mmcv's CUDA ops on known answers. A crash is run
#      again under gdb (when there is one) and its backtrace saved; ldd/readelf/cuobjdump of the
#      extension are saved.
#   4. tests/test_cuda.py (junit XML) and, beside it, the mini main job on the GPU
#      (tools/run_mini.py, two methods, default iterations).
#   5. tools/benchmark.py on CUDA: fp32 fast vs reference path, mmcv's kernel vs the PyTorch
#      sampler, fp16 (fast vs reference) and bf16 autocast, forward and training step, 512x512
#      and 1024x1024; kernel_vs_pytorch.md compares the samplers.
# summary.txt says what ran, how long, and what was skipped and why.
#
#   bash tools/gpu_check.sh        # results in $OUT, else work_dirs/gpu_check
#
# Environment: OUT, PYTHON (default python3), GPU_CHECK_BUDGET (seconds, default 480).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="${OUT:-$ROOT/work_dirs/gpu_check}"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-480}"
VENV="${TMPDIR:-/tmp}/pe-dense-gpu-venv"
mkdir -p "$OUT/imports"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "[gpu-check] $*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - SECONDS)); }

# step NAME LIMIT CMD...: CMD with a timeout of LIMIT seconds or what the budget has left,
# output to $OUT/NAME.log; its status goes to the summary.
step() {
    local name=$1 limit=$2 avail rc t0
    shift 2
    avail=$(( $(left) - 10 ))
    (( limit > avail )) && limit=$avail
    if (( limit < 15 )); then
        note "SKIPPED $name: the ${BUDGET}-second budget is spent"
        return 99
    fi
    t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) note "$name: ok in $((SECONDS - t0)) s" ;;
        124|137) note "$name: TIMED OUT after $limit s (log: $name.log)" ;;
        *) note "$name: FAILED with exit status $rc in $((SECONDS - t0)) s (log: $name.log)" ;;
    esac
    return $rc
}

note "start $(date -u +%FT%TZ) on $(hostname); budget ${BUDGET} s; results in $OUT"
{
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    echo "--- $PY: $("$PY" -VV 2>&1)"
    "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.is_available() and torch.cuda.get_device_name(0), "C++11 ABI", torch._C._GLIBCXX_USE_CXX11_ABI)' 2>&1
    echo "--- OS: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"); $(ldd --version 2>&1 | head -1); gcc: $(gcc --version 2>/dev/null | head -1 || echo none)"
    echo "--- TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}; nvcc: $(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || echo none); gdb: $(command -v gdb || echo none)"
    "$PY" -m pip list 2>&1
} > "$OUT/env.txt"
GPU=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
[[ "$GPU" == 1 ]] || note "no CUDA GPU visible to $PY's torch: the GPU steps will skip"

# ---- 2. the environment
shopt -s nullglob
WHEELS=("$ROOT"/gpu_wheels/*.whl)
shopt -u nullglob
if [[ ${#WHEELS[@]} -eq 0 ]]; then
    note "no gpu_wheels/*.whl: run tools/gpu_wheels.sh here and carry gpu_wheels; nothing else can run"
    exit 1
fi
install_env() {
    local view="$VENV/image-site" site entry
    rm -rf "$VENV"
    # Without ensurepip, the venv runs the image's pip (it sees it through the links below).
    { "$PY" -m venv "$VENV" || "$PY" -m venv --without-pip "$VENV"; } && mkdir -p "$view" || return 1
    # Every package folder on python3's path (its venv's, and the system's if that venv includes
    # them) as links in one folder, on the venv's path after its own packages; without
    # transformers: beside pycocotools it makes mmpretrain import its multimodal models, which
    # fail on recent transformers releases (tools/setup_env.sh leaves it out too).
    "$PY" -c 'import os, sys; print("\n".join(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")))' |
    while read -r site; do
        for entry in "$site"/*; do
            case "$(basename "$entry")" in transformers|transformers-*|*.pth) continue ;; esac
            [[ -e "$view/$(basename "$entry")" ]] || ln -s "$entry" "$view/"
        done
    done
    echo "$view" > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_image_site.pth" &&
    "$VENV/bin/python" -m pip install --no-index --no-deps --disable-pip-version-check \
        --progress-bar off "$ROOT"/gpu_wheels/*.whl
}
export -f install_env
export ROOT PY VENV
step install 90 bash -c install_env || { note "the environment could not be made: stopping"; exit 1; }
VPY="$VENV/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONFAULTHANDLER=1

# ---- 3. imports, crash diagnosis
EXT=$("$VPY" -c 'import importlib.util as u; print(u.find_spec("mmcv").submodule_search_locations[0])' 2>/dev/null)
EXT=$(ls "$EXT"/_ext*.so 2>/dev/null | head -1)
{
    echo "extension: ${EXT:-not found}"
    [[ -n "$EXT" ]] && { ldd "$EXT"; readelf -p .comment "$EXT"; readelf -d "$EXT" | grep -E 'NEEDED|RUNPATH|RPATH'; }
    CUOBJDUMP=$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump 2>/dev/null)
    [[ -n "$EXT" && -n "$CUOBJDUMP" ]] && "$CUOBJDUMP" --list-elf "$EXT" | head -20
} > "$OUT/imports/extension.txt" 2>&1
IMPORT_OK=1
GDB_RUNS=0
probe() {  # probe NAME CODE [VAR=VALUE...]: CODE in a fresh interpreter; a crash (the first two)
    local name=$1 code=$2 rc  # is run again under gdb
    shift 2
    env "$@" timeout -k 5 60 "$VPY" -c "$code" > "$OUT/imports/$name.log" 2>&1
    rc=$?
    if (( rc > 128 && rc != 137 )); then
        note "import probe $name: CRASHED (signal $((rc - 128))); Python's traceback in imports/$name.log"
        if command -v gdb > /dev/null && (( GDB_RUNS < 2 )); then
            GDB_RUNS=$((GDB_RUNS + 1))
            env "$@" timeout -k 5 90 gdb -batch -ex 'set pagination off' -ex run -ex 'bt 60' \
                -ex 'info sharedlibrary' --args "$VPY" -c "$code" > "$OUT/imports/$name.gdb.txt" 2>&1
            note "  gdb backtrace: imports/$name.gdb.txt"
        elif ! command -v gdb > /dev/null; then
            note "  no gdb on this machine: only the Python traceback"
        fi
    elif (( rc != 0 )); then
        note "import probe $name: failed with exit status $rc (imports/$name.log)"
    else
        note "import probe $name: ok"
    fi
    return $rc
}
probe torch_then_ext 'import torch, mmcv._ext; print("ok", torch.__version__)'
probe ext_alone 'import mmcv._ext; print("ok")'
probe cuda_context_then_ext 'import torch; torch.zeros(1, device="cuda") if torch.cuda.is_available() else None; import mmcv._ext; print("ok")'
probe cv2_first 'import cv2, torch, mmcv._ext; print("ok", cv2.__version__)'
probe gpu_hidden 'import torch, mmcv._ext; print("ok")' CUDA_VISIBLE_DEVICES=
probe ops 'import torch, mmcv, mmcv.ops; from mmcv.ops import get_compiling_cuda_version as v, get_compiler_version as c; print(mmcv.__file__, v(), c())' || IMPORT_OK=0
probe stack "
import torch, mmdet, mmseg, mmpretrain, mmengine, pe_dense
from mmcv.ops import nms
from pe_dense.models.ops.ms_deform_attn import mmcv_has_cuda_ops
print('versions', torch.__version__, mmengine.__version__, mmdet.__version__, mmseg.__version__, mmpretrain.__version__)
print('mmcv has CUDA ops:', mmcv_has_cuda_ops())
if torch.cuda.is_available():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.]], device='cuda')
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device='cuda'), 0.5)
    assert keep.tolist() == [0, 2], keep
    print('nms on CUDA: ok', keep.tolist())
" || IMPORT_OK=0

# ---- 4. tests/test_cuda.py and the main job, side by side
if [[ "$GPU" != 1 ]]; then
    note "SKIPPED test_cuda, run_mini, benchmarks: no CUDA GPU"
elif [[ "$IMPORT_OK" != 1 ]]; then
    note "SKIPPED test_cuda, run_mini, benchmarks: mmcv.ops or the stack does not import (see imports/)"
else
    cd "$ROOT"
    step test_cuda 240 "$VPY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider \
        --junitxml "$OUT/test_cuda.xml" &
    step run_mini 240 env OMP_NUM_THREADS=2 "$VPY" tools/run_mini.py --methods abs pvg --jobs 4 \
        --work-dir "$OUT/mini" &
    wait
    note "run_mini's runs logged: $(grep -rhoa 'GPU 0: [^,]*' "$OUT/mini" 2>/dev/null | sort | uniq -c | head -3 | tr -s ' \n' ' ')"

    # ---- 5. benchmarks, one at a time
    BENCH=("$VPY" tools/benchmark.py --device cuda --sizes 512x512 1024x1024 --repeats 5 --warmup 2 --no-flops)
    step bench_fp32 90 "${BENCH[@]}" --compare --out "$OUT/bench_fp32"
    step bench_fp32_pytorch_sampler 60 "${BENCH[@]}" --cuda-sampler pytorch --out "$OUT/bench_fp32_pytorch_sampler"
    step bench_fp16 90 "${BENCH[@]}" --amp fp16 --compare --out "$OUT/bench_fp16"
    step bench_bf16 60 "${BENCH[@]}" --amp bf16 --out "$OUT/bench_bf16"
    "$VPY" - "$OUT" > "$OUT/kernel_vs_pytorch.md" 2>&1 <<'PYEOF'
import json, os, sys
out = sys.argv[1]
runs = [json.load(open(os.path.join(out, d, 'benchmark.json')))['records']
        for d in ('bench_fp32', 'bench_fp32_pytorch_sampler')]
pytorch = {(r['method'], tuple(r['size'])): r for r in runs[1]}
print('| size (WxH) | method | fwd kernel (ms) | fwd PyTorch (ms) | fwd+bwd kernel (ms) '
      '| fwd+bwd PyTorch (ms) |\n|---|---|---|---|---|---|')
for r in runs[0]:
    p = pytorch.get((r['method'], tuple(r['size'])))
    if r['path'] == 'fast' and p:
        print(f"| {r['size'][1]}x{r['size'][0]} | {r['method']} | {r['fwd_ms']:.1f} "
              f"| {p['fwd_ms']:.1f} | {r.get('train_ms', 0):.1f} | {p.get('train_ms', 0):.1f} |")
PYEOF
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/nvidia_smi_end.txt" 2>&1
note "done in $SECONDS s"
