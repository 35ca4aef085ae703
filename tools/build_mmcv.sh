#!/usr/bin/env bash
# Builds the mmcv 2.1.0 wheel with its compiled ops for the torch of PYTHON, or finds it in the
# wheel cache, and prints the wheel's path as its last line. tools/setup_env.sh runs it (step 4);
# it also runs on its own, with any Python that has torch:
#
#   bash tools/build_mmcv.sh PYTHON
#
# CPU or CUDA ops (PE_DENSE_CUDA):
#   auto (default)  CUDA ops when PYTHON's torch sees a CUDA GPU, else CPU ops.
#   1               CUDA ops; without a GPU, name the architectures in TORCH_CUDA_ARCH_LIST.
#   0               CPU ops only, also on a GPU machine. mmcv's CUDA kernels are then missing:
#                   RoIAlign/NMS on CUDA tensors fail (Mask R-CNN cannot run on the GPU), and
#                   pe-dense's deformable attention uses its PyTorch sampler on CUDA tensors.
# The CUDA build needs nvcc of torch's CUDA major version: $CUDA_HOME/bin/nvcc, nvcc on the PATH
# or /usr/local/cuda/bin/nvcc; failing those, NVIDIA's compiler wheels of torch's CUDA version
# (nvidia-cuda-nvcc, -nvvm, -crt, -cccl, -runtime) are installed from the package index into the
# cache and CUDA_HOME points there. TORCH_CUDA_ARCH_LIST defaults to the compute capabilities of
# the GPUs present (one architecture compiles fastest).
#
# Environment: PE_DENSE_CACHE (default ~/.cache/pe-dense), MAX_JOBS (default: the cores, at most
# one per 4 GB), MMCV_SDIST (a local mmcv-2.1.0.tar.gz instead of fetching it; its hash is checked
# either way). Cache key: mmcv-2.1.0-torch-<version>-<python tag>-<machine>-<ops>, <ops> being
# "cpu" or "cu<torch's CUDA version>-sm<architectures>", e.g. cu13.0-sm90.
set -Eeuo pipefail

PY=${1:?usage: tools/build_mmcv.sh PYTHON}
# The build runs PYTHON from inside the unpacked source: make a relative path absolute (without
# resolving links: a venv's python is a link that must stay the venv's) and a bare name a path.
if [[ "$PY" == */* ]]; then
    [[ -x "$PY" ]] || { echo "[setup] $PY is not an executable Python" >&2; exit 1; }
    PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
else
    PY=$(command -v "$PY") || { echo "[setup] no '$1' on the PATH" >&2; exit 1; }
fi
CACHE="${PE_DENSE_CACHE:-$HOME/.cache/pe-dense}"
MMCV_VERSION=2.1.0
MMCV_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
MODE="${PE_DENSE_CUDA:-auto}"
say() { echo "[setup] $*" >&2; }
die() { say "$*"; exit 1; }
trap 'say "mmcv build FAILED (line $LINENO)${BUILD:+; full log: $BUILD/build.log}"' ERR

case "$MODE" in auto|0|1) ;; *) die "PE_DENSE_CUDA must be auto, 0 or 1, got '$MODE'" ;; esac

# torch version, torch's CUDA version ('' for a CPU build), GPUs seen, their capabilities, tag.
read -r TORCH_V TORCH_CUDA N_GPU CAPS PYTAG < <("$PY" - <<'PYEOF'
import sys
import torch
caps = sorted({'%d.%d' % torch.cuda.get_device_capability(i)
               for i in range(torch.cuda.device_count())}) if torch.cuda.is_available() else []
print(torch.__version__.split('+')[0], torch.version.cuda or '-',
      torch.cuda.device_count() if torch.cuda.is_available() else 0, ';'.join(caps) or '-',
      f'cp{sys.version_info[0]}{sys.version_info[1]}')
PYEOF
)
[[ "$TORCH_CUDA" == - ]] && TORCH_CUDA=''
[[ "$CAPS" == - ]] && CAPS=''

WANT_CUDA=0
if [[ "$MODE" == 1 ]]; then
    [[ -n "$TORCH_CUDA" ]] || die "PE_DENSE_CUDA=1, but PYTHON's torch $TORCH_V is a CPU build"
    WANT_CUDA=1
elif [[ "$MODE" == auto && "$N_GPU" -gt 0 ]]; then
    WANT_CUDA=1
fi

if [[ "$WANT_CUDA" == 1 ]]; then
    ARCHS="${TORCH_CUDA_ARCH_LIST:-$CAPS}"
    [[ -n "$ARCHS" ]] || die "no GPU is visible: set TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0') for a CUDA build"
    OPS="cu$TORCH_CUDA-sm$(echo "$ARCHS" | tr -d '.+' | tr ' ;' '__' | sed 's/PTX//g')"
else
    OPS=cpu
fi
KEY="mmcv-$MMCV_VERSION-torch-$TORCH_V-$PYTAG-$(uname -m)-$OPS"
WHEEL_DIR="$CACHE/wheels/$KEY"
# Wheels cached before the key said which ops they hold were CPU builds.
OLD_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch-$TORCH_V-$PYTAG-$(uname -m)"
if [[ "$OPS" == cpu && -d "$OLD_DIR" ]] && ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEEL_DIR" && cp "$OLD_DIR"/mmcv-*.whl "$WHEEL_DIR/" 2>/dev/null || true
fi
if ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    say "using cached wheel in $WHEEL_DIR"
    ls "$WHEEL_DIR"/mmcv-*.whl | head -1
    exit 0
fi

# nvcc of torch's CUDA major version, or NVIDIA's compiler wheels in the cache.
nvcc_major() { "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p' | head -1; }
find_cuda_home() {
    local major=${TORCH_CUDA%%.*} candidate
    for candidate in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" /usr/local/cuda/bin/nvcc \
                     "$(command -v nvcc || true)" "$CACHE/cuda-$TORCH_CUDA/nvidia/cu$major/bin/nvcc"; do
        [[ -n "$candidate" && -x "$candidate" ]] || continue
        home=$(dirname "$(dirname "$(readlink -f "$candidate")")")
        if [[ ! -f "$home/include/cuda_runtime_api.h" ]]; then
            say "skipping $candidate: no CUDA headers in $home/include"
        elif [[ "$(nvcc_major "$candidate")" != "$major" ]]; then
            say "skipping $candidate: CUDA $(nvcc_major "$candidate"), torch has CUDA $TORCH_CUDA"
        else
            echo "$home"
            return 0
        fi
    done
    return 1
}
if [[ "$WANT_CUDA" == 1 ]]; then
    if ! CUDA_HOME=$(find_cuda_home); then
        major=${TORCH_CUDA%%.*}
        target="$CACHE/cuda-$TORCH_CUDA"
        say "no nvcc for CUDA $major found: installing NVIDIA's CUDA $TORCH_CUDA compiler wheels into $target"
        "$PY" -m pip install --disable-pip-version-check --progress-bar off -q --target "$target" \
            "nvidia-cuda-nvcc==$TORCH_CUDA.*" "nvidia-nvvm==$TORCH_CUDA.*" \
            "nvidia-cuda-crt==$TORCH_CUDA.*" "nvidia-cuda-cccl==$TORCH_CUDA.*" \
            "nvidia-cuda-runtime==$TORCH_CUDA.*" >&2 ||
            die "no CUDA $major compiler could be installed. Install the CUDA $TORCH_CUDA toolkit and set CUDA_HOME, or run with PE_DENSE_CUDA=0 for CPU-only ops (see the top of tools/build_mmcv.sh for what then does not work on the GPU)."
        home="$target/nvidia/cu$major"
        # torch's extension builder links -lcudart from $CUDA_HOME/lib64.
        [[ -e "$home/lib64" ]] || ln -s lib "$home/lib64"
        [[ -e "$home/lib/libcudart.so" ]] || ln -s "$(basename "$(ls "$home"/lib/libcudart.so.* | head -1)")" "$home/lib/libcudart.so"
        CUDA_HOME=$(find_cuda_home) || die "the installed compiler in $target does not run"
    fi
    # Each named architecture must be one this nvcc compiles for (CUDA 13 dropped those before
    # 7.5): refuse a wrong one now rather than minutes into the build. Forms: 9.0, 9.0a, 8.6+PTX.
    supported=$("$CUDA_HOME/bin/nvcc" --list-gpu-arch 2>/dev/null | sed -n 's/^compute_\([0-9]*\)$/\1/p' | tr '\n' ' ')
    if [[ -n "$supported" ]]; then
        for arch in $(echo "$ARCHS" | tr ';' ' '); do
            num=$(echo "${arch%+PTX}" | sed -n 's/^\([0-9]*\)\.\([0-9]\)[af]\{0,1\}$/\1\2/p')
            if [[ -z "$num" || " $supported " != *" $num "* ]]; then
                die "TORCH_CUDA_ARCH_LIST names '$arch', which nvcc $(nvcc_major "$CUDA_HOME/bin/nvcc") at $CUDA_HOME cannot compile for. It compiles for: $(echo "$supported" | sed 's/\([0-9]\)\([0-9]\) /\1.\2 /g')written as X.Y (sm_90 is 9.0), optionally with an 'a' suffix (9.0a) or '+PTX'; separate several with ';'."
            fi
        done
    fi
    export CUDA_HOME FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS"
    say "CUDA build: nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') at $CUDA_HOME, architectures $ARCHS"
    # torch's CUDA headers include cusparse.h etc.; pip-installed CUDA keeps them in nvidia/*.
    if [[ ! -f "$CUDA_HOME/include/cusparse.h" ]]; then
        extra=$("$PY" -c 'import glob, os, nvidia; print(os.pathsep.join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "cusparse.h"), recursive=True)})))' 2>/dev/null || true)
        [[ -n "$extra" ]] || die "cusparse.h (needed by torch's CUDA headers) is neither in $CUDA_HOME/include nor in an nvidia-* package"
        export CPATH="$extra${CPATH:+:$CPATH}" MMCV_CUDA_ARGS="-I${extra//:/ -I}"
    fi
else
    # mmcv's setup.py builds CUDA ops whenever torch sees a GPU.
    export CUDA_VISIBLE_DEVICES='' FORCE_CUDA=0
fi

[[ -z "${MMCV_SDIST:-}" || -f "$MMCV_SDIST" ]] ||
    die "MMCV_SDIST=$MMCV_SDIST: no such file (unset it to fetch mmcv-$MMCV_VERSION.tar.gz from the package index)"
BUILD=$(mktemp -d "${TMPDIR:-/tmp}/pe-dense-mmcv.XXXXXX")
SDIST="$BUILD/mmcv-$MMCV_VERSION.tar.gz"
if [[ -n "${MMCV_SDIST:-}" ]]; then
    cp "$MMCV_SDIST" "$SDIST"
    echo "$MMCV_SHA256  $SDIST" | sha256sum -c --quiet - >&2 || die "$MMCV_SDIST: sha256 mismatch"
else
    "$PY" - "$SDIST" "$MMCV_VERSION" "$MMCV_SHA256" >&2 <<'PYEOF'
# Fetch the source archive from the package index pip uses, checking its published hash.
# (`pip download` cannot: it runs mmcv's setup.py, which imports torch, in an isolated env.)
import hashlib, re, subprocess, sys, urllib.request
dest, version, sha = sys.argv[1:4]
cfg = subprocess.run([sys.executable, '-m', 'pip', 'config', 'get', 'global.index-url'],
                     capture_output=True, text=True).stdout.strip()
index = (cfg or 'https://pypi.org/simple').rstrip('/')
page = urllib.request.urlopen(f'{index}/mmcv/', timeout=120).read().decode()
links = re.findall(r'href="([^"]*mmcv-%s\.tar\.gz[^"]*)"' % re.escape(version), page)
if not links:
    sys.exit(f'mmcv-{version}.tar.gz is not listed at {index}/mmcv/')
url = urllib.request.urljoin(f'{index}/mmcv/', links[0].split('#')[0])
data = urllib.request.urlopen(url, timeout=600).read()
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit(f'sha256 of {url} is {got}, expected {sha}')
open(dest, 'wb').write(data)
print(f'[setup] fetched {url} ({len(data) / 1e6:.1f} MB, sha256 ok)')
PYEOF
fi
tar -xzf "$SDIST" -C "$BUILD"
SRC="$BUILD/mmcv-$MMCV_VERSION"
# mmcv's setup.py imports pkg_resources, which setuptools 70 removed from its API surface.
if ! "$PY" -c 'import pkg_resources' 2>/dev/null; then
    "$PY" -m pip install --disable-pip-version-check --progress-bar off -q 'setuptools<70' >&2
fi
# setuptools < 70 writes wheels through the wheel package, and torch's builder wants ninja (without
# it the files compile one after another); a fresh Python such as a GPU image's may have neither.
"$PY" -c 'import wheel' 2>/dev/null ||
    "$PY" -m pip install --disable-pip-version-check --progress-bar off -q wheel >&2 ||
    die "the wheel package is missing and could not be installed: pip install wheel"
"$PY" -c 'import ninja' 2>/dev/null ||
    "$PY" -m pip install --disable-pip-version-check --progress-bar off -q ninja >&2 ||
    say "no ninja: the files compile one at a time"
# torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17 for torch > 1.12 (for the
# C++ and the CUDA compiler). Raise the flag in the recipe.
sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC/setup.py"
grep -q "'-std=c++20'" "$SRC/setup.py"
n_cpp=$(ls "$SRC"/mmcv/ops/csrc/pytorch/*.cpp "$SRC"/mmcv/ops/csrc/pytorch/cpu/*.cpp | wc -l)
n_cu=0
[[ "$WANT_CUDA" == 1 ]] && n_cu=$(ls "$SRC"/mmcv/ops/csrc/pytorch/cuda/*.cu "$SRC"/mmcv/ops/csrc/pytorch/cuda/*.cpp | wc -l)
mem_gb=$(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo)
jobs=$(nproc)
(( jobs > mem_gb / 4 )) && jobs=$(( mem_gb / 4 > 0 ? mem_gb / 4 : 1 ))
export MAX_JOBS="${MAX_JOBS:-$jobs}"
say "no cached wheel in $WHEEL_DIR: building mmcv $MMCV_VERSION ($OPS ops) from source:"
say "$n_cpp C++ files and $n_cu CUDA files with MAX_JOBS=$MAX_JOBS. Measured: CPU ops 15-20 minutes on"
say "2 cores; CUDA ops for one architecture: see docs/install.md. Done once per machine (the wheel is"
say "cached). Full log: $BUILD/build.log"
start=$(date +%s)
(cd "$SRC" && MMCV_WITH_OPS=1 PYTHONUNBUFFERED=1 "$PY" -m pip wheel -v --no-build-isolation --no-deps \
    --disable-pip-version-check -w "$BUILD/dist" . 2>&1) | tee "$BUILD/build.log" |
    awk -v t0="$start" 'match($0, /^ *\[[0-9]+\/[0-9]+\]/) {
             s = substr($0, RSTART, RLENGTH); gsub(/[][ ]/, "", s); split(s, a, "/");
             if (a[1] == a[2] || a[1] % 5 == 0) {
                 printf "[setup] mmcv build: %d/%d files compiled (%d s)\n", a[1], a[2],
                        systime() - t0 > "/dev/stderr"; fflush("/dev/stderr") } }
         /error:/ { print > "/dev/stderr"; fflush("/dev/stderr") }'
ls "$BUILD"/dist/mmcv-*.whl >/dev/null 2>&1 || die "the build made no wheel; see $BUILD/build.log"
mkdir -p "$WHEEL_DIR"
cp "$BUILD"/dist/mmcv-*.whl "$WHEEL_DIR/"
rm -rf "$BUILD"
say "built in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; cached in $WHEEL_DIR"
ls "$WHEEL_DIR"/mmcv-*.whl | head -1
