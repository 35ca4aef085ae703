#!/usr/bin/env bash
# Gathers the wheels that tools/gpu_check.sh installs on a lent GPU machine into gpu_wheels/
# (ignored by git), so that they travel with the working tree (the device tool's `carry`), and
# prints their size with the tracked files: all of it must stay under 64 MiB.
#
#   bash tools/gpu_wheels.sh [MMCV_WHEEL]
#
# That machine has Python 3.12 with torch 2.11.0+cu130, numpy 2, opencv-python-headless, timm
# (hence torchvision), onnx, onnxruntime, pytest and transformers, and no package registry. What
# it lacks (found by importing mmengine, mmdet, mmseg, mmpretrain and pe_dense in such an
# environment) is pinned in DEPS below; they are downloaded once into $PE_DENSE_CACHE/gpu-deps.
# MMCV_WHEEL (default: the cache's cp312 torch-2.11.0 CUDA build, see docs/install.md) is mmcv 2.1.0
# built with CUDA ops against that torch; its debug sections are stripped (the symbols stay, so
# a backtrace still names functions).
# Every wheel above 1 MB is recompressed with LZMA inside its zip (pip reads it like any wheel;
# the files and their RECORD hashes are unchanged): deflate left them ~20 MiB over the limit.
#
# Environment: PE_DENSE_CACHE (default ~/.cache/pe-dense), PYTHON (a Python with pip that
# downloads the wheels; default python3).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${PE_DENSE_CACHE:-$HOME/.cache/pe-dense}"
DEST="$ROOT/gpu_wheels"
PY="${PYTHON:-python3}"
LIMIT=$((64 * 1024 * 1024))
say() { echo "[gpu-wheels] $*" >&2; }
die() { say "$*"; exit 1; }
trap 'say "FAILED (line $LINENO)"' ERR

DEPS=(mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0 pycocotools==2.0.11
      ftfy==6.3.1 'setuptools==80.10.2' addict==2.4.0 einops==0.8.2 importlib_metadata==10.2.0
      mat4py==0.6.0 matplotlib==3.11.2 modelindex==0.0.2 prettytable==3.18.0 wcwidth==0.9.4
      scipy==1.18.1 shapely==2.2.0 six==1.17.0 termcolor==3.3.0 terminaltables==3.1.10
      yapf==0.43.0 contourpy==1.4.0 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1
      lazy-importer==0.1.0 platformdirs==4.14.8 pyparsing==3.3.3 python-dateutil==4.0.0
      zipp==4.1.2 model-index==0.1.11 Markdown==3.11.3 ordered-set==4.1.0)

MMCV="${1:-}"
if [[ -z "$MMCV" ]]; then
    shopt -s nullglob
    found=("$CACHE"/wheels/mmcv-2.1.0-torch-2.11.0-cp312-x86_64-cu13.0-sm90*/mmcv-*.whl)
    shopt -u nullglob
    [[ ${#found[@]} -gt 0 ]] || die "no CUDA mmcv wheel for torch 2.11.0 / cp312 in $CACHE/wheels: build it with
  PE_DENSE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 bash tools/build_mmcv.sh PYTHON312
(PYTHON312: a Python 3.12 with torch==2.11.0 from PyPI; see docs/install.md) or name a wheel"
    MMCV=${found[0]}
fi
[[ -f "$MMCV" ]] || die "$MMCV: no such wheel"

DEPS_DIR="$CACHE/gpu-deps"
mkdir -p "$DEPS_DIR"
# The cached wheel of a requirement NAME==VERSION (wheel names use '_' for '-' and '.').
cached() {
    local name=${1%%==*} version=${1##*==}
    find "$DEPS_DIR" -maxdepth 1 -iname "$(echo "$name" | tr '.-' '__')-$version-*.whl" | head -1
}
missing=()
for req in "${DEPS[@]}"; do
    [[ -n "$(cached "$req")" ]] || missing+=("$req")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "downloading ${#missing[@]} wheel(s) for CPython 3.12 / manylinux x86-64 into $DEPS_DIR"
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d "$DEPS_DIR" "${missing[@]}" 2>&1 | { grep -v '^WARNING: Location' || true; } >&2
fi

rm -rf "$DEST"
mkdir -p "$DEST"
# The wheels of DEPS only (the cache folder may hold other versions).
wheels=()
for req in "${DEPS[@]}"; do
    w=$(cached "$req")
    [[ -n "$w" ]] || die "$req was not downloaded into $DEPS_DIR"
    wheels+=("$w")
done

say "repacking $(basename "$MMCV") and ${#wheels[@]} dependencies into $DEST"
"$PY" - "$DEST" "$MMCV" "${wheels[@]}" <<'PYEOF'
# Writes each wheel into DEST: mmcv's shared objects without debug sections (RECORD updated),
# every wheel above 1 MB with its members LZMA-compressed where that is smaller, the rest copied
# as they are.
import base64, hashlib, os, shutil, subprocess, sys, tempfile, zipfile
dest, mmcv, deps = sys.argv[1], sys.argv[2], sys.argv[3:]


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f'{name},sha256={digest},{len(data)}'


def repack(src, out, strip=False):
    with zipfile.ZipFile(src) as zin:
        members = {info.filename: zin.read(info) for info in zin.infolist()}
    if strip:
        changed = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in members.items():
                if name.endswith('.so'):
                    path = os.path.join(tmp, 'lib.so')
                    with open(path, 'wb') as f:
                        f.write(data)
                    subprocess.run(['strip', '--strip-debug', path], check=True)
                    changed[name] = open(path, 'rb').read()
        members.update(changed)
        record = next(n for n in members if n.endswith('.dist-info/RECORD'))
        lines = []
        for line in members[record].decode().splitlines():
            name = line.rsplit(',', 2)[0]
            lines.append(record_line(name, changed[name]) if name in changed else line)
        members[record] = ('\n'.join(lines) + '\n').encode()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_LZMA) as zout:
        for name, data in members.items():
            zout.writestr(name, data)


for src in [mmcv] + deps:
    out = os.path.join(dest, os.path.basename(src))
    if src == mmcv:
        repack(src, out, strip=True)
    elif os.path.getsize(src) > 1_000_000:
        repack(src, out)
        if os.path.getsize(out) >= os.path.getsize(src):  # many small files: deflate did better
            shutil.copy(src, out)
    else:
        shutil.copy(src, out)
    print(f'[gpu-wheels] {os.path.getsize(src) / 2**20:7.2f} MiB -> '
          f'{os.path.getsize(out) / 2**20:7.2f} MiB  {os.path.basename(src)}', file=sys.stderr)
PYEOF

wheels_bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree_bytes=$(cd "$ROOT" && git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
total=$((wheels_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say "gpu_wheels/: $(ls "$DEST"/*.whl | wc -l) wheels, $(mib "$wheels_bytes"); tracked files: $(mib "$tree_bytes"); together $(mib "$total") of the 64 MiB a carry may take"
(( total < LIMIT )) || die "over the 64 MiB limit"
