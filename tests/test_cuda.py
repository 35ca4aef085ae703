"""The GPU side, where the CPU suite cannot reach: mmcv's deformable-attention CUDA kernel against
pe-dense's PyTorch samplers (values and gradients, float32 and float64; float16 and bfloat16
autocast), the whole backbone on CUDA (fast path against reference path, CUDA against the CPU with
the same weights, autocast against float32), and training plus evaluation runs of the mini Mask
R-CNN and UperNet configs through tools/train.py on the GPU (fp32, and fp16 AMP for UperNet).

Every test skips without a CUDA device, and when mmcv was built without its CUDA ops (the kernel
is missing or a tiny call of it fails). TF32 is off in the numerical tests (cuDNN convolutions
use it by default), so that float32 means float32 on both sides of each comparison.

    python -m pytest tests/test_cuda.py -q -rs
"""
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (DETECTION, METHODS, SEGMENTATION, perturbed, randomize, rel_diff,
                     small_backbone)
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)

from pe_dense.models.ops import MSDeformAttn, ms_deform_attn_gather, pytorch_sampler_on_cuda
from pe_dense.models.ops import ms_deform_attn as msda_module

ROOT = Path(__file__).resolve().parents[1]


def mmcv_cuda_problem():
    """Why mmcv's deformable-attention CUDA kernel cannot run here, or None when it can: its
    compiled op must load and a tiny call on CUDA tensors must succeed (an mmcv built without
    CUDA ops has the op but no CUDA implementation behind it)."""
    try:
        from mmcv.utils import ext_loader
        ext_loader.load_ext('_ext', ['ms_deform_attn_forward'])
        dev = torch.device('cuda')
        value = torch.arange(4.0, device=dev).view(1, 4, 1, 1)
        out = MultiScaleDeformableAttnFunction.apply(
            value, torch.tensor([[2, 2]], device=dev), torch.tensor([0], device=dev),
            torch.full((1, 1, 1, 1, 1, 2), 0.5, device=dev), torch.ones(1, 1, 1, 1, 1, device=dev),
            64)
        torch.cuda.synchronize()
    except Exception as exc:  # any failure means: no usable kernel
        return f'{type(exc).__name__}: {str(exc)[:200]}'
    # The centre of a 2 x 2 map is the mean of its four cells.
    if abs(out.item() - 1.5) > 1e-6:
        return f'the kernel sampled {out.item()} at the centre of [[0, 1], [2, 3]], not 1.5'
    return None


MMCV_CUDA_PROBLEM = mmcv_cuda_problem() if torch.cuda.is_available() else None
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU'),
    pytest.mark.skipif(MMCV_CUDA_PROBLEM is not None,
                       reason=f'mmcv was built without CUDA ops ({MMCV_CUDA_PROBLEM})'),
]


@pytest.fixture
def no_tf32():
    """TF32 off for cuDNN convolutions and CUDA matmuls (legacy flags only: mixing them with
    ``fp32_precision`` is an error in recent torch), restored afterwards."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


class KernelSpy:
    """Stands in for ``MultiScaleDeformableAttnFunction`` inside pe-dense's sampler: records the
    dtype and device of each call's inputs and whether autocast was on, then runs the kernel."""

    def __init__(self):
        self.calls = []

    def apply(self, value, shapes, starts, locations, weights, im2col_step):
        self.calls.append(dict(dtypes=(value.dtype, locations.dtype, weights.dtype),
                               device=value.device.type,
                               autocast=torch.is_autocast_enabled('cuda')))
        return MultiScaleDeformableAttnFunction.apply(value, shapes, starts, locations, weights,
                                                      im2col_step)


@pytest.fixture
def kernel_spy(monkeypatch):
    spy = KernelSpy()
    monkeypatch.setattr(msda_module, 'MultiScaleDeformableAttnFunction', spy)
    return spy


def scaled_error(got, want):
    """max |got - want| / max |want|, both moved to the CPU in float64."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    return ((got - want).abs().max() / want.abs().max()).item()


# ------------------------------------------------------------------------ (a) the kernel
# Levels of non-square sizes (one of a single row, one of a single cell) and head widths that take
# different backward kernels of mmcv (D = 8 and 32: block-size-aware reductions; D = 12: the
# generic shared-memory one).
SAMPLER_CASES = [
    (0, [(13, 21), (7, 11), (3, 5), (1, 2)], 8),
    (1, [(6, 5), (3, 3), (2, 1)], 32),
    (2, [(4, 7), (1, 1)], 12),
]


def sampler_inputs(seed, shapes, d, b=2, q=37, m=3, p=4):
    """float64 CPU inputs: values N(0, 1), locations uniform in [-0.3, 1.3] (inside, across the
    border and outside the maps), attention weights uniform in [0, 1]; the upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=torch.float64)
    upstream = torch.randn(b, q, m * d, generator=g, dtype=torch.float64)
    return [value, loc, weights], upstream


def run_sampler(fn, inputs, upstream):
    """Output and the gradients of (value, locations, weights) of ``fn(value, loc, weights)``
    for the upstream gradient ``upstream``."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out * upstream.to(out)).sum().backward()
    return [out] + [t.grad for t in leaves]


# Tolerances, relative to the largest magnitude of each reference tensor. float32: the kernel
# rounds every product and accumulates the value gradient with atomic adds in arbitrary order;
# ~1e-6 is expected, 1e-5 (outputs) and 1e-4 (gradients, sums over many points and channels)
# leave a margin while a wrong corner, weight or border rule gives errors of order 1. float64:
# the same arithmetic with 29 more bits.
FP32_TOL = dict(out=1e-5, grad=1e-4)
FP64_TOL = dict(out=1e-12, grad=1e-10)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['fp32', 'fp64'])
@pytest.mark.parametrize('seed,shapes,d', SAMPLER_CASES)
def test_cuda_kernel_matches_pytorch_samplers(seed, shapes, d, dtype, kernel_spy):
    inputs, upstream = sampler_inputs(seed, shapes, d)
    # The references see exactly the inputs the kernel sees (rounded to its dtype), in float64.
    inputs = [t.to(dtype).double() for t in inputs]
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    mmcv_ref = run_sampler(lambda v, x, w: multi_scale_deformable_attn_pytorch(v, spatial, x, w),
                           inputs, upstream)
    gather_ref = run_sampler(lambda v, x, w: ms_deform_attn_gather(v, spatial, x, w),
                             inputs, upstream)
    for a, b in zip(gather_ref, mmcv_ref):  # the two CPU paths agree (float64)
        assert scaled_error(a, b) <= 1e-12

    cuda_spatial, cuda_starts = spatial.cuda(), starts.cuda()
    got = run_sampler(
        lambda v, x, w: msda_module.ms_deform_attn_sample(v, cuda_spatial, cuda_starts, x, w),
        [t.to(dtype).cuda() for t in inputs], upstream.to(dtype).cuda())
    assert [c['device'] for c in kernel_spy.calls] == ['cuda']  # mmcv's kernel did the work
    assert got[0].shape == (2, 37, 3 * d) and got[0].dtype == dtype and got[0].is_cuda
    tol = FP32_TOL if dtype == torch.float32 else FP64_TOL
    names = ('output', 'grad value', 'grad locations', 'grad attention weights')
    for name, g, want, limit in zip(names, got, mmcv_ref, [tol['out']] + [tol['grad']] * 3):
        assert g is not None and g.dtype == dtype, name
        assert scaled_error(g, want) <= limit, (name, scaled_error(g, want))
    # Points whose four corners all lie outside their level read zeros: no gradient reaches
    # their locations or attention weights (a margin of 0.01 cell keeps off the border itself).
    size = spatial.flip(-1).to(torch.float64).view(len(shapes), 1, 2)  # (W, H) per level
    pix = inputs[1] * size - 0.5
    outside = ((pix <= -1.01) | (pix >= size + 0.01)).any(-1)
    assert outside.any() and not outside.all()
    assert got[2].cpu()[outside].abs().max().item() == 0.0
    assert got[3].cpu()[outside].abs().max().item() == 0.0


@pytest.mark.parametrize('seed,shapes,d', SAMPLER_CASES[:2])
def test_gather_sampler_on_cuda_when_mmcv_has_no_cuda_ops(seed, shapes, d, monkeypatch):
    """With an mmcv built without CUDA ops (PE_DENSE_CUDA=0), CUDA tensors take the gather
    sampler: same values and gradients as mmcv's PyTorch form in float64, and the kernel is not
    called."""
    monkeypatch.setattr(msda_module, 'mmcv_has_cuda_ops', lambda: False)

    class NoKernel:
        @staticmethod
        def apply(*args):
            raise AssertionError('mmcv kernel called although mmcv has no CUDA ops')

    monkeypatch.setattr(msda_module, 'MultiScaleDeformableAttnFunction', NoKernel)
    inputs, upstream = sampler_inputs(seed, shapes, d)
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    want = run_sampler(lambda v, x, w: multi_scale_deformable_attn_pytorch(v, spatial, x, w),
                       inputs, upstream)
    got = run_sampler(
        lambda v, x, w: msda_module.ms_deform_attn_sample(v, spatial.cuda(), starts.cuda(), x, w),
        [t.cuda() for t in inputs], upstream.cuda())
    assert got[0].is_cuda
    for g, w in zip(got, want):
        assert scaled_error(g, w) <= FP64_TOL['grad']


def test_pytorch_sampler_on_cuda_switches_the_kernel_off_and_back(kernel_spy):
    """Inside ``pytorch_sampler_on_cuda()`` (tools/benchmark.py --cuda-sampler pytorch) CUDA
    tensors take the gather sampler, with the kernel's values and gradients (float64); outside it,
    and after an exception inside it, the kernel samples again."""
    seed, shapes, d = SAMPLER_CASES[0]
    inputs, upstream = sampler_inputs(seed, shapes, d)
    spatial = torch.tensor(shapes).cuda()
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])

    def sample():
        return run_sampler(
            lambda v, x, w: msda_module.ms_deform_attn_sample(v, spatial, starts, x, w),
            [t.cuda() for t in inputs], upstream.cuda())

    with pytorch_sampler_on_cuda():
        pytorch = sample()
    assert kernel_spy.calls == []
    kernel = sample()
    assert len(kernel_spy.calls) == 1
    for a, b in zip(pytorch, kernel):
        assert a.is_cuda and scaled_error(a, b) <= FP64_TOL['grad']
    with pytest.raises(RuntimeError, match='inside'):
        with pytorch_sampler_on_cuda():
            raise RuntimeError('inside')
    sample()
    assert len(kernel_spy.calls) == 2


def deform_attn_case(seed=0):
    """An MSDeformAttn of the injector's size (192 channels, 6 heads, 3 levels, 4 points) with
    offsets and attention weights that depend on the query, and its inputs on CUDA: a 224 x 320
    image's levels at strides 8, 16, 32 as values, the stride-16 grid as queries."""
    torch.manual_seed(seed)
    attn = MSDeformAttn(d_model=192, n_levels=3, n_heads=6, n_points=4)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.05)
        attn.attention_weights.weight.normal_(0, 0.1)
    shapes = [(28, 40), (14, 20), (7, 10)]
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    h, w = shapes[1]
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                            indexing='ij')
    ref = torch.stack([xs.flatten(), ys.flatten()], -1)[None, :, None]
    g = torch.Generator().manual_seed(seed + 1)
    query = torch.randn(2, h * w, 192, generator=g)
    feat = torch.randn(2, int(spatial.prod(1).sum()), 192, generator=g)
    cuda = [t.cuda() for t in (query, ref, feat, spatial, starts)]
    return attn.cuda(), cuda


# Autocast error of MSDeformAttn, max |amp - fp32| / max |fp32|. The projections (and the result
# handed back by the sampler) are rounded to the half type: unit roundoff 2^-11 for float16, 2^-8
# for bfloat16, a few roundings in a row. The same module and inputs under CPU autocast measure
# 0.0023 (fp16) and 0.0119 (bf16); the limits, 0.01 and 0.04 (as the CPU bf16 test of a smaller
# module allows), leave a margin of 3-4x for other kernels' rounding. That the kernel itself
# samples in float32 is checked directly, on the dtypes it receives.
AUTOCAST_ATTN_TOL = {torch.float16: 0.01, torch.bfloat16: 0.04}


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_msdeformattn_autocast_is_close_to_fp32(dtype, kernel_spy, no_tf32):
    attn, (query, ref, feat, spatial, starts) = deform_attn_case()
    want = attn(query, ref, feat, spatial, starts)
    assert kernel_spy.calls[-1]['dtypes'] == (torch.float32,) * 3
    with torch.autocast('cuda', dtype=dtype):
        got = attn(query, ref, feat, spatial, starts)
    # The kernel ran in float32 with autocast off; output_proj ran in the half type.
    assert kernel_spy.calls[-1] == dict(dtypes=(torch.float32,) * 3, device='cuda',
                                        autocast=False)
    assert got.dtype == dtype and got.shape == want.shape == (2, 280, 192)
    err = scaled_error(got, want)
    print(f'MSDeformAttn {dtype} autocast: max error / max |fp32| = {err:.5f}')
    assert err <= AUTOCAST_ATTN_TOL[dtype], err
    # A backward under autocast reaches the offsets and attention weights with finite values.
    (got.float() ** 2).mean().backward()
    for p in (attn.sampling_offsets.weight, attn.attention_weights.weight, attn.value_proj.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# ------------------------------------------------------------------------ (b) the backbone
# The backbone in float32 (TF32 off): fast against reference path on CUDA, CUDA against the CPU.
# Measured on the CPU for these models and this size: fast vs reference and float32 vs float64
# differ by 0.6e-6 to 1.1e-6 of the output scale; 1e-4 allows summation-order differences of
# other kernels (SDPA, cuDNN, mmcv's) with a wide margin, while any wiring or sampling difference
# is of order 1.
BACKBONE_TOL = 1e-4
SIZE = (224, 320)  # non-square; a 14 x 20 token grid (3 x 3 windows leave padded windows)


@pytest.fixture
def cpu_threads():
    """Up to 8 CPU threads for the CPU forward passes (tests/conftest.py sets 2), restored
    afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, min(8, os.cpu_count() or 1)))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize('variant', ['det', 'seg'])
@pytest.mark.parametrize('method', METHODS)
def test_backbone_fast_reference_and_cpu_agree(method, variant, kernel_spy, no_tf32, cpu_threads):
    kwargs = DETECTION if variant == 'det' else SEGMENTATION
    cpu_model = randomize(small_backbone(method, **kwargs))
    fast = copy.deepcopy(cpu_model).cuda()
    ref = copy.deepcopy(fast)
    ref.fast_path = False
    assert fast.fast_path and not ref.fast_path
    img = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cpu_out = cpu_model(img)
        assert kernel_spy.calls == []  # the CPU used the gather sampler
        fast_out = fast(img.cuda())
        ref_out = ref(img.cuda())
        again = fast(img.cuda())  # the fast path's per-grid cache on CUDA
    # Every deformable attention (injectors, extractors) sampled with mmcv's kernel, on CUDA, in
    # each of the three forwards.
    n_attn = sum(isinstance(m, MSDeformAttn) for m in fast.modules())
    assert n_attn >= 2 * len(fast.interactions)
    assert len(kernel_spy.calls) == 3 * n_attn
    assert all(c['device'] == 'cuda' and c['dtypes'] == (torch.float32,) * 3
               for c in kernel_spy.calls)
    shapes = [(2, 192, SIZE[0] // s, SIZE[1] // s) for s in (4, 8, 16, 32)]
    assert [tuple(o.shape) for o in fast_out] == [tuple(o.shape) for o in cpu_out] == shapes
    assert all(o.is_cuda and o.dtype == torch.float32 for o in fast_out + ref_out)
    fast_vs_ref, cuda_vs_cpu = rel_diff(fast_out, ref_out), rel_diff(
        [o.cpu() for o in fast_out], cpu_out)
    print(f'{method} {variant}: fast vs reference {fast_vs_ref:.2e}, CUDA vs CPU {cuda_vs_cpu:.2e}')
    assert fast_vs_ref <= BACKBONE_TOL, fast_vs_ref
    assert cuda_vs_cpu <= BACKBONE_TOL, cuda_vs_cpu
    assert rel_diff([o.cpu() for o in ref_out], cpu_out) <= BACKBONE_TOL
    assert rel_diff(again, fast_out) <= 1e-6


# Autocast forward of the whole backbone, max |amp - fp32| / max |fp32| over the output maps.
# Under CPU autocast the same models measure 0.006-0.010 in bf16 (tests/test_amp.py, 70 x 100,
# which allows 0.02) and, here at 224 x 320, 0.0103 (bf16) and 0.0013 (fp16) for PEG: float16
# carries 3 more mantissa bits. CUDA's autocast also keeps layer norms and softmax in float32 and
# adds fused attention in the half type. Limits: 0.03 (bf16) and 0.01 (fp16), a margin of ~3x
# (bf16) and ~7x (fp16); a layer left in the wrong precision or a lost cast back to float32
# gives errors of order 1 or outputs in the half type (also checked).
AUTOCAST_BACKBONE_TOL = {torch.float16: 0.01, torch.bfloat16: 0.03}


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('method', METHODS)
def test_backbone_autocast_is_close_to_fp32(method, dtype, no_tf32):
    model = perturbed(method, **DETECTION).cuda()
    img = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(8)).cuda()
    with torch.no_grad():
        want = model(img)
        with torch.autocast('cuda', dtype=dtype):
            got = model(img)
    assert all(o.dtype == torch.float32 for o in got)  # the output BatchNorms run in float32
    err = rel_diff(got, want)
    print(f'{method} {dtype} autocast backbone: {err:.4f}')
    assert err <= AUTOCAST_BACKBONE_TOL[dtype], err


# ------------------------------------------------------------------------ (c) training runs
# A hook loaded by the training process (custom_imports) records where the model's parameters are
# and how the backbone's first convolution runs, in training and in evaluation. A CPU run cannot
# write 'cuda' here.
PROBE = '''
"""Records the devices, optimizer wrapper and autocast state of a training run (test_cuda.py)."""
import json

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class CudaProbe(Hook):
    priority = 'LOWEST'

    def __init__(self, out):
        self.out = out
        self.record = dict(train=[], eval=[])

    def _model(self, runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def _devices(self, runner):
        return sorted({p.device.type for p in self._model(runner).parameters()})

    def before_train(self, runner):
        self.record['devices_before_train'] = self._devices(runner)
        self.record['optim_wrapper'] = type(runner.optim_wrapper).__name__

        def seen(module, args, output):
            self.record['train' if module.training else 'eval'].append(dict(
                input_device=args[0].device.type, output_dtype=str(output.dtype),
                autocast=torch.is_autocast_enabled('cuda'),
                autocast_dtype=str(torch.get_autocast_dtype('cuda'))))
        self._model(runner).backbone.patch_embed.proj.register_forward_hook(seen)

    def after_train(self, runner):
        self.record['devices_after_train'] = self._devices(runner)
        self.record['max_memory_allocated'] = (torch.cuda.max_memory_allocated()
                                               if torch.cuda.is_available() else 0)

    def after_run(self, runner):
        with open(self.out, 'w') as f:
            json.dump(self.record, f)
'''

DET_CONFIG = ROOT / 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py'
SEG_CONFIG = ROOT / 'configs/mini/upernet_vit-adapter-ti-abs_mini.py'
ITERS = 2
RUN_TIMEOUT = 150  # seconds per run (estimated: ~30 s on an H100)


def det_options(data):
    root = f'{data}/coco/'
    ann = f'{root}annotations/instances_val2017.json'
    return [f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}', f'val_evaluator.ann_file={ann}',
            f'test_evaluator.ann_file={ann}', 'train_dataloader.batch_size=2']


def seg_options(data):
    root = f'{data}/ade/ADEChallengeData2016'
    return [f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}', 'train_dataloader.batch_size=2']


def schedule_options():
    return [f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS}',
            f'default_hooks.checkpoint.interval={ITERS}', 'default_hooks.logger.interval=1']


RUNS = {  # name: (config, options, extra arguments of tools/train.py)
    'mask_rcnn': (DET_CONFIG, det_options, []),
    'upernet': (SEG_CONFIG, seg_options, []),
    'upernet_amp': (SEG_CONFIG, seg_options, ['--amp']),
}


@pytest.fixture(scope='module')
def gpu_runs(tmp_path_factory):
    """Mini data (4 training and 4 validation images of 128 x 128 per dataset), then the three
    training runs of RUNS started together (one GPU holds them easily; running them side by side
    keeps the file quick). Returns ``{name: (work_dir, probe_file, log_file, process, log)}``
    (``log``: the open log file the process writes); each test waits for its own run."""
    from pe_dense.datasets import mini
    base = tmp_path_factory.mktemp('cuda_runs')
    data = base / 'data'
    mini.make_coco(data / 'coco', num_train=4, num_val=4)
    mini.make_ade(data / 'ade', num_train=4, num_val=4)
    (base / 'cuda_probe.py').write_text(PROBE)
    env = dict(os.environ, OMP_NUM_THREADS='4',
               PYTHONPATH=os.pathsep.join(filter(None, [str(base),
                                                        os.environ.get('PYTHONPATH')])))
    runs = {}
    for name, (config, options, extra) in RUNS.items():
        probe = base / f'{name}_probe.json'
        wrapper = base / f'{name}_config.py'
        wrapper.write_text(f"_base_ = [{str(config)!r}]\n"
                           "custom_imports = dict(imports=['pe_dense', 'cuda_probe'], "
                           "allow_failed_imports=False)\n"
                           f"custom_hooks = [dict(type='CudaProbe', out={str(probe)!r})]\n")
        work = base / name
        log = open(base / f'{name}.log', 'w')
        cmd = [sys.executable, str(ROOT / 'tools/train.py'), str(wrapper), '--work-dir', str(work),
               *extra, '--cfg-options', *options(data), *schedule_options()]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        runs[name] = (work, probe, base / f'{name}.log', proc, log)
    yield runs
    for *_, proc, log in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


RUN_TESTS = ('test_mask_rcnn_trains_and_evaluates_on_cuda',
             'test_upernet_trains_and_evaluates_on_cuda',
             'test_upernet_trains_with_fp16_amp_on_cuda')


@pytest.fixture(scope='module', autouse=True)
def start_runs_early(request):
    """Starts the training runs at the first test of this file when any of their tests is
    selected, so that they run while the numerical tests do."""
    if any(getattr(item, 'originalname', None) in RUN_TESTS for item in request.session.items):
        request.getfixturevalue('gpu_runs')


def finished(runs, name):
    """Waits for run ``name``; returns its work dir and probe record, and the rows mmengine's
    LocalVisBackend logged (training rows, then the validation metrics)."""
    work, probe, log_file, proc, _ = runs[name]
    start = time.monotonic()
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f'{name} did not finish in {RUN_TIMEOUT} s:\n'
                    f'{log_file.read_text()[-5000:]}')
    log = log_file.read_text()
    assert code == 0, f'{name} exited with {code}:\n{log[-5000:]}'
    print(f'{name}: finished {time.monotonic() - start:.1f} s after the test started waiting')
    scalars = list(work.glob('*/vis_data/scalars.json'))
    assert len(scalars) == 1, scalars
    rows = [json.loads(line) for line in scalars[0].read_text().splitlines()]
    return json.loads(probe.read_text()), rows, log


def check_run(record, rows, loss_keys, metric_ranges, wrapper, autocast_dtype=None):
    # The model lived on the GPU, trained there (its images were on the GPU) and evaluated there.
    assert record['devices_before_train'] == record['devices_after_train'] == ['cuda']
    assert record['max_memory_allocated'] > 10 * 2 ** 20
    assert record['optim_wrapper'] == wrapper
    assert len(record['train']) == ITERS and len(record['eval']) >= 1
    for call in record['train']:
        assert call['input_device'] == 'cuda'
        if autocast_dtype is None:
            assert not call['autocast'] and call['output_dtype'] == 'torch.float32', call
        else:
            assert call['autocast'] and call['autocast_dtype'] == autocast_dtype, call
            assert call['output_dtype'] == autocast_dtype, call
    assert all(c['input_device'] == 'cuda' for c in record['eval'])
    train_rows = [r for r in rows if 'loss' in r]
    assert [r['iter'] for r in train_rows] == list(range(1, ITERS + 1))
    for row in train_rows:
        assert math.isfinite(row['loss']) and row['loss'] > 0, row
        for key in loss_keys:
            assert math.isfinite(row[key]) and row[key] >= 0, (key, row)
    metrics = [r for r in rows if all(k in r for k in metric_ranges)]
    assert metrics, f'no evaluation row with {sorted(metric_ranges)}: {rows[-1]}'
    for key, (lo, hi) in metric_ranges.items():
        assert lo <= metrics[-1][key] <= hi, (key, metrics[-1][key])
    return metrics[-1]


def test_mask_rcnn_trains_and_evaluates_on_cuda(gpu_runs):
    record, rows, _ = finished(gpu_runs, 'mask_rcnn')
    metrics = check_run(
        record, rows, ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'),
        {k: (0.0, 1.0) for k in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP',
                                 'coco/segm_mAP_50')}, 'OptimWrapper')
    print('mask_rcnn metrics:', metrics)


def test_upernet_trains_and_evaluates_on_cuda(gpu_runs):
    record, rows, _ = finished(gpu_runs, 'upernet')
    metrics = check_run(record, rows, ('decode.loss_ce', 'aux.loss_ce'),
                        {'mIoU': (0.0, 100.0), 'aAcc': (0.0, 100.0)}, 'OptimWrapper')
    print('upernet metrics:', metrics)


def test_upernet_trains_with_fp16_amp_on_cuda(gpu_runs):
    record, rows, log = finished(gpu_runs, 'upernet_amp')
    # tools/train.py --amp: mmengine's AmpOptimWrapper, the forward under float16 autocast.
    assert '[pe-dense] no CUDA' not in log
    metrics = check_run(record, rows, ('decode.loss_ce', 'aux.loss_ce'),
                        {'mIoU': (0.0, 100.0), 'aAcc': (0.0, 100.0)}, 'AmpOptimWrapper',
                        autocast_dtype='torch.float16')
    print('upernet fp16 AMP metrics:', metrics)
