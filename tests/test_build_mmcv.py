"""``tools/build_mmcv.sh`` refuses a CUDA architecture that the machine's nvcc cannot compile for
before it fetches or compiles anything, and names the ones it can; a valid list (compute
capabilities as X.Y, with an ``a`` suffix or ``+PTX``) gets past that check to the source archive.

The build itself (15-22 minutes) is not run here: ``MMCV_SDIST`` names a missing archive, which
the script refuses right after the architecture check. Needs nvcc of torch's CUDA major version
(``$CUDA_HOME``, ``/usr/local/cuda`` or the ``PATH``); skipped without one.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'build_mmcv.sh'


def matching_nvcc():
    """Path of an nvcc of torch's CUDA major version, or None."""
    if not torch.version.cuda:
        return None
    major = torch.version.cuda.split('.')[0]
    for nvcc in (os.path.join(os.environ.get('CUDA_HOME', '/nonexistent'), 'bin', 'nvcc'),
                 '/usr/local/cuda/bin/nvcc', shutil.which('nvcc')):
        if nvcc and os.access(nvcc, os.X_OK):
            out = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
            if f'release {major}.' in out:
                return nvcc
    return None


NVCC = matching_nvcc()
pytestmark = pytest.mark.skipif(
    NVCC is None, reason="no nvcc of torch's CUDA major version on this machine (or a CPU torch)")


def build(tmp_path, archs):
    env = dict(os.environ, PE_DENSE_CUDA='1', TORCH_CUDA_ARCH_LIST=archs,
               PE_DENSE_CACHE=str(tmp_path / 'cache'), MMCV_SDIST=str(tmp_path / 'missing.tar.gz'),
               TMPDIR=str(tmp_path))
    return subprocess.run(['bash', str(SCRIPT), sys.executable], capture_output=True, text=True,
                          env=env, timeout=120)


def supported_archs():
    out = subprocess.run([NVCC, '--list-gpu-arch'], capture_output=True, text=True).stdout
    return [line.split('_')[1] for line in out.split() if line.startswith('compute_')]


@pytest.mark.parametrize('archs, bad', [('7.0', '7.0'), ('9.0;sm_80', 'sm_80'), ('90', '90'),
                                         ('9.0 5.2+PTX', '5.2+PTX')])
def test_an_architecture_nvcc_lacks_is_refused_before_the_build(tmp_path, archs, bad):
    proc = build(tmp_path, archs)
    assert proc.returncode == 1
    err = proc.stderr
    assert f"TORCH_CUDA_ARCH_LIST names '{bad}'" in err, err
    # The supported ones, written as the variable wants them (compute_90 -> 9.0, 100 -> 10.0).
    listed = [f'{n[:-1]}.{n[-1]}' for n in supported_archs()]
    assert '9.0' in listed
    assert f"It compiles for: {' '.join(listed)} written as X.Y" in err, err
    assert 'fetched' not in err and 'building mmcv' not in err
    assert not list(tmp_path.glob('pe-dense-mmcv.*')), 'no build folder is made'


@pytest.mark.parametrize('archs', ['9.0', '9.0a;8.0+PTX', '8.6 9.0'])
def test_valid_architectures_pass_the_check(tmp_path, archs):
    proc = build(tmp_path, archs)
    err = proc.stderr
    assert proc.returncode == 1
    assert f'architectures {archs}' in err, err
    assert 'TORCH_CUDA_ARCH_LIST names' not in err
    assert f"MMCV_SDIST={tmp_path / 'missing.tar.gz'}: no such file" in err, err
