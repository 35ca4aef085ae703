"""An mmcv wheel built with CUDA ops (``PE_DENSE_CUDA=1 tools/build_mmcv.sh``) against this
interpreter's torch, unpacked into a temporary folder and imported in a fresh subprocess (with
``PYTHONFAULTHANDLER=1``, so that a crash shows where it happened): ``mmcv._ext`` loads without a
GPU, the wheel says it was compiled with torch's CUDA major version, mmcv's compiled CPU ops give
known answers (NMS on three boxes; RoIAlign of a linear ramp, whose bilinear samples average to
the ramp at each bin centre), mmdet, mmseg, mmpretrain and pe_dense import on it, and pe-dense's
deformable-attention sampler takes the kernel route only for CUDA tensors.

The wheel: ``$PE_DENSE_CUDA_MMCV_WHEEL``, else the wheel cache's entry for this torch and Python
(``$PE_DENSE_CACHE``, default ``~/.cache/pe-dense``, ``wheels/mmcv-2.1.0-torch-<v>-cp<XY>-
<machine>-cu<CUDA>-sm<archs>/``). Without one (CI builds CPU ops only) the test is skipped.
"""
import glob
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def cuda_wheel():
    """Path of the CUDA-built mmcv wheel to check, or None."""
    named = os.environ.get('PE_DENSE_CUDA_MMCV_WHEEL')
    if named:
        return named
    cache = os.environ.get('PE_DENSE_CACHE', os.path.expanduser('~/.cache/pe-dense'))
    key = (f'mmcv-2.1.0-torch-{torch.__version__.split("+")[0]}-'
           f'cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}-cu*')
    found = sorted(glob.glob(os.path.join(cache, 'wheels', key, 'mmcv-*.whl')))
    return found[0] if found else None


WHEEL = cuda_wheel()
pytestmark = pytest.mark.skipif(
    WHEEL is None, reason='no CUDA-built mmcv wheel for this torch and Python in the wheel cache '
    '(PE_DENSE_CUDA=1 bash tools/build_mmcv.sh PYTHON makes one; or set '
    'PE_DENSE_CUDA_MMCV_WHEEL)')

CHECK = r'''
import sys
import torch
import mmcv
import mmcv._ext
assert mmcv.__file__.startswith(sys.argv[1]), mmcv.__file__
from mmcv.ops import get_compiling_cuda_version, nms, roi_align
built = get_compiling_cuda_version()
print('compiled with CUDA', built, '| torch CUDA', torch.version.cuda)
assert built.split('.')[0] == (torch.version.cuda or '').split('.')[0], built

# NMS, IoU threshold 0.5: boxes 0 and 1 overlap by 81 / 119 = 0.68, box 2 by nothing.
boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, 0.5)
assert keep.tolist() == [0, 2], keep
_, keep = nms(boxes, scores, 0.7)
assert keep.tolist() == [0, 1, 2], keep

# RoIAlign (aligned: pixel centres at integer + 0.5) of f(x, y) = x + 4 y on a 4 x 4 map: the box
# (0.5, 0.5)-(2.5, 2.5) has 2 x 2 bins whose centres lie at pixel indices 0.5 and 1.5, and the
# mean of bilinear samples of a linear function is its value at the bin centre.
ys, xs = torch.meshgrid(torch.arange(4.), torch.arange(4.), indexing='ij')
feat = (xs + 4 * ys).view(1, 1, 4, 4)
out = roi_align(feat, torch.tensor([[0, 0.5, 0.5, 2.5, 2.5]]), (2, 2), 1.0, 2, 'avg', True)
want = torch.tensor([[0.5 + 4 * 0.5, 1.5 + 4 * 0.5], [0.5 + 4 * 1.5, 1.5 + 4 * 1.5]])
assert torch.allclose(out.view(2, 2), want, rtol=0, atol=1e-5), out

import mmdet, mmseg, mmpretrain  # noqa: E401
import pe_dense
from pe_dense.models.ops import ms_deform_attn as msda
assert msda.mmcv_has_cuda_ops()
# The centre of a 2 x 2 map [[0, 1], [2, 3]] is the mean of its cells; a CPU tensor takes
# pe-dense's PyTorch sampler even though mmcv has its CUDA kernel.
value = torch.arange(4.0).view(1, 4, 1, 1)
got = msda.ms_deform_attn_sample(value, torch.tensor([[2, 2]]), torch.tensor([0]),
                                 torch.full((1, 1, 1, 1, 1, 2), 0.5), torch.ones(1, 1, 1, 1, 1))
assert abs(got.item() - 1.5) < 1e-6, got
print('ok', mmcv.__file__, pe_dense.__file__)
'''


@pytest.fixture(scope='module')
def unpacked(tmp_path_factory):
    """The wheel's files in a temporary folder (what ``pip install --target`` puts there)."""
    site = tmp_path_factory.mktemp('cuda_mmcv')
    with zipfile.ZipFile(WHEEL) as wheel:
        wheel.extractall(site)
    for so in site.glob('mmcv/*.so'):
        so.chmod(0o755)
    return site


def test_cuda_mmcv_wheel_imports_and_its_cpu_ops_give_known_answers(unpacked):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(unpacked), str(ROOT)]),
               PYTHONFAULTHANDLER='1', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, '-c', CHECK, str(unpacked)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, (
        f'exit status {proc.returncode} (a negative one is the signal that killed it)\n'
        f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    assert proc.stdout.strip().splitlines()[-1].startswith(f'ok {unpacked}')
