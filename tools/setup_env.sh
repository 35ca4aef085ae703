#!/usr/bin/env bash
# Sets up pe-dense from a machine that has only Python 3.11: an isolated environment in .venv,
# torch, mmcv 2.1.0 built with its compiled ops (cached outside the clone), mmengine, mmdet,
# mmsegmentation, timm, pycocotools and pe_dense itself (editable). Safe to run again: a finished
# setup is recorded in .venv and the second run returns at once.
#
# Environment:
#   PYTHON          interpreter that creates the environment (default: python3.11, else python3)
#   PE_DENSE_CACHE  where built wheels are kept (default: ~/.cache/pe-dense)
#   MAX_JOBS        parallel compile jobs for mmcv (default: number of cores, at most 2 per 8 GB)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
CACHE="${PE_DENSE_CACHE:-$HOME/.cache/pe-dense}"

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
MMCV_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
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

# The stamp covers everything that decides what is installed: this script and setup.py.
STAMP="$VENV/.pe-dense-setup"
WANT=$(cat "$ROOT/tools/setup_env.sh" "$ROOT/setup.py" | sha256sum | cut -c1-16)
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
MMCV_KEY="mmcv-$MMCV_VERSION-torch-$TORCH_VERSION-$PYTAG-$(uname -m)"
WHEEL_DIR="$CACHE/wheels/$MMCV_KEY"
have_mmcv_ops() {
    "$PYV" - <<PYEOF 2>/dev/null
import mmcv, mmcv.ops
from mmcv.utils import ext_loader
ext_loader.load_ext('_ext', ['nms'])
assert mmcv.__version__ == '$MMCV_VERSION', mmcv.__version__
PYEOF
}
if have_mmcv_ops; then
    echo "[setup] mmcv $MMCV_VERSION with ops already installed"
else
    if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
        BUILD=$(mktemp -d "${TMPDIR:-/tmp}/pe-dense-mmcv.XXXXXX")
        echo "[setup] no cached wheel in $WHEEL_DIR: building mmcv from source."
        echo "[setup] this compiles 77 C++ files and takes 15-20 minutes on 2 cores; it is done once"
        echo "[setup] per machine (the wheel is cached). Full log: $BUILD/build.log"
        "$PYV" - "$BUILD/mmcv-$MMCV_VERSION.tar.gz" "$MMCV_VERSION" "$MMCV_SHA256" <<'PYEOF'
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
        tar -xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
        # mmcv's setup.py imports pkg_resources, which setuptools 70 removed from its API surface.
        pipi 'setuptools<70'
        SRC="$BUILD/mmcv-$MMCV_VERSION"
        # torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17 for torch > 1.12.
        # Raise the flag in the recipe (a compiler flag given later on the command line wins).
        sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC/setup.py"
        grep -q "'-std=c++20'" "$SRC/setup.py"
        mem_gb=$(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo)
        jobs=$(nproc)
        (( jobs > mem_gb / 4 )) && jobs=$(( mem_gb / 4 > 0 ? mem_gb / 4 : 1 ))
        export MAX_JOBS="${MAX_JOBS:-$jobs}"
        echo "[setup] compiling with MAX_JOBS=$MAX_JOBS"
        (cd "$SRC" && MMCV_WITH_OPS=1 "$PYV" -m pip wheel -v --no-build-isolation --no-deps \
            --disable-pip-version-check -w "$BUILD/dist" . 2>&1) | tee "$BUILD/build.log" |
            awk 'match($0, /^ *\[[0-9]+\/[0-9]+\]/) {
                     s = substr($0, RSTART, RLENGTH); gsub(/[][ ]/, "", s); split(s, a, "/");
                     if (a[1] == a[2] || a[1] % 5 == 0) {
                         printf "[setup] mmcv build: %d/%d files compiled\n", a[1], a[2]; fflush() } }
                 /error:/ { print; fflush() }'
        mkdir -p "$WHEEL_DIR"
        cp "$BUILD"/dist/mmcv-*.whl "$WHEEL_DIR/"
        rm -rf "$BUILD"
        echo "[setup] cached $(ls "$WHEEL_DIR"/mmcv-*.whl)"
    else
        echo "[setup] using cached wheel $(ls "$WHEEL_DIR"/mmcv-*.whl)"
    fi
    pipi --no-deps --force-reinstall "$WHEEL_DIR"/mmcv-*.whl
    pipi "$WHEEL_DIR"/mmcv-*.whl
    have_mmcv_ops || { echo "[setup] mmcv installed but mmcv.ops does not load" >&2; false; }
fi

step 5 "mmdet $MMDET_VERSION, mmsegmentation $MMSEG_VERSION, mmpretrain $MMPRETRAIN_VERSION, timm, pycocotools, test tools"
# mmengine imports pkg_resources at run time (removed from setuptools 81 on); torch wants >= 77.
# transformers is left out on purpose: beside pycocotools it makes `import mmpretrain` reach its
# multimodal models, which fail on recent transformers releases.
pipi "mmdet==$MMDET_VERSION" "mmsegmentation==$MMSEG_VERSION" "mmpretrain==$MMPRETRAIN_VERSION" \
    timm pycocotools ftfy regex \
    'setuptools<81' \
    pytest ruff matplotlib

step 6 "pe_dense (editable)"
pipi --no-build-isolation --no-deps -e "$ROOT"
"$PYV" -m pip check | grep -v -i 'no broken' || true
"$PYV" -c 'import mmdet, mmseg, mmpretrain, mmcv, torch, pe_dense
print(f"[setup] ready: torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}, pe_dense {pe_dense.__version__}")'
echo "$WANT" > "$STAMP"
