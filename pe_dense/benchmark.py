"""Speed and memory of the ViT-Adapter backbone, per position encoding and input size.

:func:`run_benchmark` measures, :func:`markdown` writes the table; ``tools/benchmark.py`` is the
command line:

    python tools/benchmark.py [--config CFG] [--methods AbsolutePE PVG ...]
        [--sizes 512x512 1024x1024 1333x800] [--batch 1] [--device cpu|cuda] [--threads N]
        [--repeats 7] [--warmup 2] [--reference | --compare] [--with-cp] [--clock wall|cpu]
        [--amp off|fp16|bf16] [--cuda-sampler kernel|pytorch] [--no-train] [--no-memory]
        [--no-flops] [--out work_dirs/benchmark]

The backbone is ``cfg.model.backbone`` of ``--config`` (``pos_embed`` replaced by each method,
``init_cfg`` dropped: random weights) or, without ``--config``, ``ViTAdapter()``'s defaults
(ViT-Adapter-Ti). The input is a random ``(batch, 3, H, W)`` image. Measured per method, size and
path:

- **forward**: eval mode under ``no_grad``; the median wall time of ``--repeats`` runs after
  ``--warmup`` runs, and images/s = batch / median.
- **forward+backward**: train mode, backward of the sum of the outputs' means, parameter
  gradients reset to None before each run.
- Every model of a size (methods x paths) is built up front and the runs are interleaved: run r of
  every model comes before run r + 1 of any, the order rotated from round to round. Load that
  drifts on a shared machine then hits all models alike; ratios (``vs AbsolutePE``, fast vs
  reference) are medians of the per-round ratios.
  On CUDA every timed run is bracketed by ``torch.cuda.synchronize()``. The process's CPU time
  of each run is recorded too; ``--clock cpu`` bases the table and the ratios on it instead of
  the wall time (CPU only): on a machine shared with other jobs it leaves out the time the
  process waited for a core (with ``OMP_WAIT_POLICY=PASSIVE``, threads that wait for each other
  do not spin either).
- **peak memory** of one forward (eval, no_grad) and of one forward+backward (train), above what
  was resident before the pass (weights, input, and after a warm-up pass also the gradients).
  CUDA: ``torch.cuda.max_memory_allocated()``. CPU: each measurement runs in a fresh subprocess
  with glibc's ``MALLOC_MMAP_THRESHOLD_=65536``, so that every tensor above 64 KiB is its own
  mapping and returns to the system when freed; after a warm-up pass the kernel's peak-RSS
  counter is reset (``/proc/self/clear_refs``) and the peak is ``VmHWM`` minus ``VmRSS`` before
  the measured pass. That is the resident memory the pass needed (tensors, allocator and library
  workspaces), close to the CUDA number; where ``clear_refs`` is unavailable the pass runs
  without warm-up and ``ru_maxrss`` is used.
- ``--amp fp16`` / ``--amp bf16``: every timed pass and every memory measurement runs under
  ``torch.autocast(device_type, dtype)`` (the training loss is formed inside it and its backward
  runs after it, as mmengine's ``AmpOptimWrapper`` does; no loss scaling, which timing does not
  need). One precision per run, recorded as ``amp`` and ``precision`` in the JSON meta and in the
  Markdown header. float16 autocast is a GPU feature: on the CPU only ``bf16`` is accepted.
- ``--cuda-sampler pytorch`` (CUDA): deformable attention samples with pe-dense's PyTorch
  samplers instead of mmcv's CUDA kernel (:func:`pe_dense.models.ops.pytorch_sampler_on_cuda`),
  as with an mmcv built without CUDA ops; the default ``kernel`` uses mmcv's kernel when mmcv has
  its CUDA ops. What ran is recorded as ``sampler`` in the JSON meta and the Markdown header.
- **parameters**, and **GMACs** of one forward of the batch (multiply-accumulates, mmengine's
  ``FlopAnalyzer``, traced on the reference path, whose attention is explicit matmuls; a bilinear
  sample counts as 4 MACs per value; element-wise operations are not counted; traced in float32
  whatever ``--amp``: the count does not depend on the precision).

``--reference`` times the reference path instead of the fast one; ``--compare`` times both,
interleaved, and adds a table of fast-path speed-ups; ``--with-cp`` adds a twin of each model
with gradient checkpointing (``with_cp=True``) and a table of its training peak memory and time
against the same model without (the keyword arguments of :func:`run_benchmark` carry the same
names). ``tools/benchmark.py`` prints the Markdown table and writes it with the JSON record to
``--out`` (``benchmark.md``, ``benchmark.json``).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pe_dense.models import ViTAdapter
from pe_dense.models.ops import ms_deform_attn as msda
from pe_dense.models.ops import pytorch_sampler_on_cuda

# The folder that holds the pe_dense package: the memory subprocesses import the same copy.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a memory subprocess runs: argv[1] the folder above, argv[2] the spec as JSON.
_MEMORY_CHILD = ('import json, sys; sys.path.insert(0, sys.argv[1]); '
                 'from pe_dense.benchmark import measure_memory; '
                 'print(json.dumps(measure_memory(json.loads(sys.argv[2]))))')

METHODS = ('AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG', 'MPVG', 'RoPEAxial', 'RoPEMixed')
DEFAULT_SIZES = ('512x512', '1024x1024', '1333x800')
# --amp choices: the autocast dtype (None: no autocast, float32 throughout).
AMP_DTYPES = {'off': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
# --cuda-sampler choices: deformable attention on CUDA with mmcv's kernel (when mmcv has its CUDA
# ops) or with the PyTorch samplers.
CUDA_SAMPLERS = ('kernel', 'pytorch')
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------- models
def backbone_kwargs(config: Optional[str]) -> dict:
    """The backbone's constructor arguments from a config (type and init_cfg dropped; SyncBN,
    which needs a process group to train, becomes BN), or {} for ViTAdapter's defaults."""
    if config is None:
        return {}
    from mmengine.config import Config
    backbone = Config.fromfile(config).model.backbone.to_dict()
    if backbone.pop('type', 'ViTAdapter') not in ('ViTAdapter', ViTAdapter):
        raise ValueError(f'{config}: model.backbone is not a ViTAdapter')
    backbone.pop('init_cfg', None)
    norm = backbone.get('norm_cfg')
    if isinstance(norm, dict) and norm.get('type') == 'SyncBN':
        backbone['norm_cfg'] = dict(norm, type='BN')
    return backbone


def build(kwargs: dict, method: str, fast_path: bool, with_cp: bool,
          device: torch.device) -> ViTAdapter:
    """A backbone for ``method`` (keeping the config's PE options when it is that method)."""
    kwargs = copy.deepcopy(kwargs)
    pos_embed = kwargs.pop('pos_embed', None)
    if not (isinstance(pos_embed, dict) and pos_embed.get('type') == method):
        pos_embed = dict(type=method)
    kwargs.update(fast_path=fast_path, with_cp=with_cp)
    torch.manual_seed(0)
    return ViTAdapter(pos_embed=pos_embed, **kwargs).to(device)


def parse_size(text: str) -> Tuple[int, int]:
    """``'WxH'`` (mmdet's order, as in 1333x800) -> (H, W); ValueError for anything else."""
    try:
        w, h = (int(v) for v in str(text).lower().split('x'))
    except ValueError:
        raise ValueError(f'size {text!r} is not WIDTHxHEIGHT') from None
    return h, w


# ---------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    """Waits for the CUDA device's queued work (no-op on the CPU), so that a timer reads it."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str = 'off'):
    """``torch.autocast`` of the ``--amp`` choice on ``device``, or a no-op for ``'off'``."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def forward_pass(model: ViTAdapter, img: torch.Tensor, amp: str = 'off') -> None:
    """One eval-mode forward of the (B, 3, H, W) ``img`` under ``no_grad`` (and autocast)."""
    model.eval()
    with torch.no_grad(), autocast(img.device, amp):
        model(img)


def train_pass(model: ViTAdapter, img: torch.Tensor, amp: str = 'off') -> None:
    """Forward and the loss under autocast (if any), backward after it, as mmengine's
    ``AmpOptimWrapper`` runs them."""
    model.train()
    model.zero_grad(set_to_none=True)
    with autocast(img.device, amp):
        outs = model(img)
        loss = sum(o.float().mean() for o in outs)
    loss.backward()


def time_interleaved(models: Dict[str, ViTAdapter], img: torch.Tensor, step, repeats: int,
                     warmup: int) -> Dict[str, Dict[str, List[float]]]:
    """Seconds of ``step(model, img)``, ``{key: {'wall': [...], 'cpu': [...]}}`` (the process's
    CPU time): ``warmup`` untimed runs of every model, then ``repeats`` rounds, each running every
    model once, the order rotated by one model from round to round."""
    for model in models.values():
        for _ in range(warmup):
            step(model, img)
    times = {key: dict(wall=[], cpu=[]) for key in models}
    keys = list(models)
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            model = models[key]
            sync(img.device)
            wall, cpu = time.perf_counter(), time.process_time()
            step(model, img)
            sync(img.device)
            times[key]['wall'].append(time.perf_counter() - wall)
            times[key]['cpu'].append(time.process_time() - cpu)
    return times


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[r] / den[r]``."""
    return statistics.median(a / b for a, b in zip(num, den))


# ---------------------------------------------------------------------------------- memory
def measure_memory(spec: dict) -> dict:
    """Peak memory (bytes) of one pass described by ``spec`` (see :func:`memory_spec`), in this
    process: CUDA allocator statistics, or the process's peak RSS on the CPU."""
    device = torch.device(spec['device'])
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    model = build(spec['kwargs'], spec['method'], spec['fast_path'], spec['with_cp'], device)
    img = torch.randn(spec['batch'], 3, *spec['size'], device=device)
    step = partial(train_pass if spec['mode'] == 'train' else forward_pass,
                   amp=spec.get('amp', 'off'))
    if device.type == 'cuda':
        step(model, img)
        if spec['mode'] == 'train':
            model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(model, img)
        torch.cuda.synchronize(device)
        return dict(peak_bytes=torch.cuda.max_memory_allocated(device) - before,
                    how='cuda max_memory_allocated')
    warm = _reset_peak_rss()
    if warm:
        step(model, img)
        if spec['mode'] == 'train':
            model.zero_grad(set_to_none=True)
        gc.collect()
        _reset_peak_rss()
    before = _proc_status_kib('VmRSS')
    step(model, img)
    if warm:
        peak = _proc_status_kib('VmHWM')
        how = 'VmHWM - VmRSS after warm-up'
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        how = 'ru_maxrss - RSS, no warm-up'
    return dict(peak_bytes=(peak - before) * 1024, how=how)


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _proc_status_kib(field: str) -> int:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if field == 'VmHWM' else 0


def memory_in_subprocess(spec: dict) -> dict:
    """:func:`measure_memory` in a fresh interpreter (CPU), so that earlier passes leave no
    trace in its RSS."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    proc = subprocess.run([sys.executable, '-c', _MEMORY_CHILD, PACKAGE_PARENT, json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f'memory measurement failed ({spec}):\n{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_spec(kwargs: dict, method: str, fast_path: bool, with_cp: bool, size: Tuple[int, int],
                batch: int, mode: str, device: torch.device, threads: Optional[int],
                amp: str = 'off') -> dict:
    """The JSON-able description of one memory measurement (``mode`` 'forward' or 'train')."""
    return dict(kwargs=kwargs, method=method, fast_path=fast_path, with_cp=with_cp,
                size=list(size), batch=batch, mode=mode, device=str(device), threads=threads,
                amp=amp)


def peak_memory(spec: dict) -> dict:
    """``{'peak_bytes': int, 'how': str}`` of ``spec``: in this process on CUDA, in a fresh one
    on the CPU."""
    if spec['device'].startswith('cuda'):
        return measure_memory(spec)
    return memory_in_subprocess(spec)


# ---------------------------------------------------------------------------------- flops
def count_macs(model: ViTAdapter, img: torch.Tensor) -> int:
    """Multiply-accumulates of one forward, traced on the reference path."""
    from mmengine.analysis import FlopAnalyzer
    from mmengine.analysis.jit_handles import get_shape
    model = copy.deepcopy(model).eval()
    model.fast_path = False
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        analyzer = FlopAnalyzer(model, (img,))
        analyzer.set_op_handle('aten::grid_sampler',
                               lambda inputs, outputs: 4 * math.prod(get_shape(outputs[0])))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())


# ---------------------------------------------------------------------------------- report
def variants(reference: bool = False, compare: bool = False,
             with_cp: bool = False) -> List[Tuple[str, bool, Optional[bool]]]:
    """(name, fast_path, with_cp) of every model timed per method; with_cp None: as configured."""
    paths = [('reference', False)] if reference else [('fast', True)]
    if compare:
        paths = [('fast', True), ('reference', False)]
    out = []
    for name, fast in paths:
        out.append((name, fast, False if with_cp else None))
        if with_cp:
            out.append((name + '+cp', fast, True))
    return out


def check_options(repeats: int = 7, warmup: int = 2, batch: int = 1, clock: str = 'wall',
                  device: str = 'cpu', amp: str = 'off', with_cp: bool = False,
                  train: bool = True, sizes: Sequence[str] = (),
                  methods: Sequence[str] = METHODS, threads: Optional[int] = None,
                  config: Optional[str] = None, cuda_sampler: str = 'kernel') -> None:
    """Raises ValueError, with the command-line option names, for settings that cannot run: also
    a size that is not ``WxH`` or under 32 pixels a side (ViTAdapter's smallest input), an unknown
    method, ``threads`` below 1, a config file that does not exist."""
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError('--repeats and --batch must be >= 1, --warmup >= 0')
    if isinstance(sizes, str) or isinstance(methods, str):
        raise ValueError('--sizes and --methods are lists, e.g. sizes=["512x512"]')
    for text in sizes:
        h, w = parse_size(text)
        if min(h, w) < 32:
            raise ValueError(f'--sizes {text}: ViTAdapter takes images of at least 32 pixels a '
                             'side (WIDTHxHEIGHT, e.g. 512x512)')
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f'--methods: unknown {unknown}; choose from {list(METHODS)}')
    if threads is not None and threads < 1:
        raise ValueError(f'--threads must be >= 1, got {threads}')
    if config is not None and not os.path.isfile(config):
        raise ValueError(f'--config {config} does not exist')
    if clock not in ('wall', 'cpu'):
        raise ValueError(f"--clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == 'cpu' and device != 'cpu':
        raise ValueError('--clock cpu is for --device cpu')
    if amp not in AMP_DTYPES:
        raise ValueError(f'--amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}')
    if amp == 'fp16' and device.split(':')[0] == 'cpu':
        raise ValueError('--amp fp16 needs --device cuda: float16 autocast is a GPU feature; on '
                         'the CPU use --amp bf16 (bfloat16 autocast) or leave --amp off')
    if with_cp and not train:
        raise ValueError('--with-cp measures training; it cannot go with --no-train')
    if cuda_sampler not in CUDA_SAMPLERS:
        raise ValueError(f'--cuda-sampler must be one of {list(CUDA_SAMPLERS)}, got '
                         f'{cuda_sampler!r}')
    if cuda_sampler == 'pytorch' and device.split(':')[0] != 'cuda':
        raise ValueError('--cuda-sampler pytorch is for --device cuda (the CPU always uses the '
                         'PyTorch samplers)')


def fmt(value: Optional[float], spec: str = '.1f') -> str:
    """``value`` formatted, or '-' for None."""
    return '-' if value is None else format(value, spec)


def markdown(meta: dict, records: List[dict], compare: bool = False,
             with_cp: bool = False) -> str:
    """The Markdown report of :func:`run_benchmark`'s ``meta`` and ``records``: the main table,
    and the fast-vs-reference table (``compare``) and the gradient-checkpointing table
    (``with_cp``) when they were measured."""
    lines = [f"# Backbone benchmark: {meta['backbone']}", '',
             f"- device: {meta['device_name']}; threads: {meta['threads']}; batch {meta['batch']};"
             f" {meta['repeats']} timed runs after {meta['warmup']} warm-up runs, interleaved;"
             f" times: {meta['clock']} clock (OMP_WAIT_POLICY={meta['omp_wait_policy']})",
             f"- torch {meta['torch']}; {meta['date']}; load average before: {meta['load']}",
             *([f"- precision: {meta['precision']}"] if meta['amp'] != 'off' else []),
             *([f"- deformable attention: {meta['sampler']}"] if 'sampler' in meta else []),
             f"- memory: {meta['memory_method']}", f"- command: `{meta['command']}`", '',
             '| size (WxH) | method | path | params (M) | GMACs | fwd (ms) | img/s '
             '| fwd+bwd (ms) | fwd peak (MiB) | train peak (MiB) | fwd vs Abs | fwd+bwd vs Abs |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in records:
        lines.append(
            f"| {r['size'][1]}x{r['size'][0]} | {r['method']} | {r['path']} "
            f"| {r['params'] / 1e6:.2f} | {fmt(r.get('gmacs'), '.2f')} "
            f"| {fmt(r.get('fwd_ms'))} | {fmt(r.get('img_per_s'), '.2f')} "
            f"| {fmt(r.get('train_ms'))} | {fmt(r.get('fwd_peak_mib'))} "
            f"| {fmt(r.get('train_peak_mib'))} | {_pct(r.get('fwd_vs_abs'))} "
            f"| {_pct(r.get('train_vs_abs'))} |")
    lines += ['', '"vs Abs": median over rounds of time / AbsolutePE\'s time in the same round '
              '(same path), as a change in %.']
    if compare:
        lines += ['', '## Fast path vs reference path (interleaved; speed-up = reference time / '
                  'fast time, median over rounds)', '',
                  '| size (WxH) | method | fwd speed-up | fwd+bwd speed-up | fwd peak ratio '
                  '| train peak ratio |', '|---|---|---|---|---|---|']
        for r in records:
            if r['path'] == 'fast':
                lines.append(f"| {r['size'][1]}x{r['size'][0]} | {r['method']} "
                             f"| {fmt(r.get('fwd_speedup'), '.2f')}x "
                             f"| {fmt(r.get('train_speedup'), '.2f')}x "
                             f"| {fmt(r.get('fwd_peak_ratio'), '.2f')} "
                             f"| {fmt(r.get('train_peak_ratio'), '.2f')} |")
    if with_cp:
        lines += ['', '## Gradient checkpointing (with_cp=True vs False, same path)', '',
                  '| size (WxH) | method | path | train peak (MiB) | with_cp (MiB) | ratio '
                  '| fwd+bwd time ratio |', '|---|---|---|---|---|---|---|']
        for r in records:
            if 'cp_train_peak_mib' in r:
                lines.append(f"| {r['size'][1]}x{r['size'][0]} | {r['method']} | {r['path']} "
                             f"| {fmt(r.get('train_peak_mib'))} "
                             f"| {fmt(r.get('cp_train_peak_mib'))} "
                             f"| {fmt(r.get('cp_peak_ratio'), '.2f')} "
                             f"| {fmt(r.get('cp_time_ratio'), '.2f')} |")
    return '\n'.join(lines) + '\n'


def _pct(ratio: Optional[float]) -> str:
    return '-' if ratio is None else f'{(ratio - 1) * 100:+.1f}%'


# ---------------------------------------------------------------------------------- main
def run_benchmark(config: Optional[str] = None, methods: Sequence[str] = METHODS,
                  sizes: Sequence[str] = DEFAULT_SIZES, batch: int = 1, device: str = 'cpu',
                  threads: Optional[int] = None, repeats: int = 7, warmup: int = 2,
                  reference: bool = False, compare: bool = False, with_cp: bool = False,
                  clock: str = 'wall', amp: str = 'off', train: bool = True, memory: bool = True,
                  flops: bool = True, load: Optional[str] = None,
                  command: Optional[str] = None,
                  cuda_sampler: str = 'kernel') -> Tuple[dict, List[dict]]:
    """Builds every model (``methods`` x paths) and measures them at each size, as the module
    docstring describes; prints one progress line per model and size.

    Args:
        config: config whose ``model.backbone`` is measured (None: ``ViTAdapter()``'s defaults).
        methods: position encodings, names of ``METHODS``.
        sizes: input sizes as ``'WxH'`` strings (mmdet's order, e.g. ``'1333x800'``).
        batch, threads: images per pass; ``torch.set_num_threads`` (CPU; None: torch's default).
        repeats, warmup: timed runs, and untimed runs before them, per model.
        reference, compare, with_cp: time the reference path instead of the fast one; both,
            interleaved; each model also with gradient checkpointing.
        clock: 'wall', or 'cpu' (the process's CPU time; CPU only) for the table and the ratios.
        amp: 'off', 'fp16' (CUDA) or 'bf16': ``torch.autocast`` around every pass.
        train, memory, flops: also measure forward+backward, peak memory, MACs.
        load, command: recorded in ``meta`` (None: the load average now, ``sys.argv``).
        cuda_sampler: 'kernel' (mmcv's CUDA kernel when mmcv has its CUDA ops) or 'pytorch'
            (pe-dense's PyTorch samplers on CUDA tensors; CUDA only).

    Returns:
        ``meta`` (device, versions, settings) and one record per (size, method, path) with
        ``params``, ``gmacs``, ``fwd_ms``, ``img_per_s``, ``train_ms``, ``fwd_peak_mib``,
        ``train_peak_mib`` and the ratios (``fwd_vs_abs``, ``fwd_speedup``, ``cp_peak_ratio``,
        ...); times in ms, memory in MiB.

    Raises:
        ValueError: options that cannot run or do not go together (see :func:`check_options`:
            sizes, methods, threads, a missing config, ...), a config whose backbone is not a
            ViTAdapter.
        SystemExit: ``device`` is CUDA and no CUDA device is available.
    """
    check_options(repeats, warmup, batch, clock, device, amp, with_cp, train, sizes, methods,
                  threads, config, cuda_sampler)
    if cuda_sampler == 'pytorch':
        with pytorch_sampler_on_cuda():
            return run_benchmark(config, methods, sizes, batch, device, threads, repeats, warmup,
                                 reference, compare, with_cp, clock, amp, train, memory, flops,
                                 load, command)
    if load is None:
        load = (' '.join(f'{v:.2f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg')
                else 'n/a')
    command = ' '.join(sys.argv) if command is None else command
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available')
    if threads:
        torch.set_num_threads(threads)
    kwargs = backbone_kwargs(config)
    base_cp = bool(kwargs.pop('with_cp', False))
    sizes = [parse_size(s) for s in sizes]
    models = {}
    for method in methods:
        for name, fast, cp in variants(reference, compare, with_cp):
            models[(method, name)] = build(kwargs, method, fast, base_cp if cp is None else cp,
                                           device)
    records = []
    for size in sizes:
        img = torch.randn(batch, 3, *size, device=device)
        fwd_runs = time_interleaved(models, img, partial(forward_pass, amp=amp), repeats, warmup)
        train_runs = (time_interleaved(models, img, partial(train_pass, amp=amp), repeats, warmup)
                      if train else None)
        fwd = {key: runs[clock] for key, runs in fwd_runs.items()}
        train_times = ({key: runs[clock] for key, runs in train_runs.items()}
                       if train_runs is not None else None)
        macs: Dict[str, int] = {}
        for (method, name), model in models.items():
            if flops and method not in macs:
                macs[method] = count_macs(model, img)
            rec = dict(size=list(size), method=method, path=name, with_cp=model.with_cp,
                       batch=batch, params=sum(p.numel() for p in model.parameters()),
                       gmacs=macs[method] / 1e9 if method in macs else None,
                       fwd_ms=statistics.median(fwd[(method, name)]) * 1e3,
                       fwd_runs_ms=_ms(fwd_runs[(method, name)]))
            rec['img_per_s'] = batch / (rec['fwd_ms'] / 1e3)
            if train_times is not None:
                rec['train_ms'] = statistics.median(train_times[(method, name)]) * 1e3
                rec['train_runs_ms'] = _ms(train_runs[(method, name)])
            if ('AbsolutePE', name) in models:
                rec['fwd_vs_abs'] = paired_ratio(fwd[(method, name)], fwd[('AbsolutePE', name)])
                if train_times is not None:
                    rec['train_vs_abs'] = paired_ratio(train_times[(method, name)],
                                                       train_times[('AbsolutePE', name)])
            if memory:
                for mode in ('forward', 'train') if train_times is not None else ('forward',):
                    spec = memory_spec(kwargs, method, model.fast_path, model.with_cp, size,
                                       batch, mode, device, threads, amp)
                    result = peak_memory(spec)
                    key = 'fwd_peak_mib' if mode == 'forward' else 'train_peak_mib'
                    rec[key] = result['peak_bytes'] / MiB
                    rec['memory_how'] = result['how']
            records.append(rec)
            print(f"{size[1]}x{size[0]} {method:10s} {name:14s} fwd {rec['fwd_ms']:8.1f} ms"
                  + (f"  fwd+bwd {rec['train_ms']:8.1f} ms" if 'train_ms' in rec else ''),
                  flush=True)
        _relate(records, size, fwd, train_times)
    meta = dict(backbone=config or 'ViTAdapter() defaults (ViT-Adapter-Ti)',
                device=str(device), device_name=_device_name(device),
                threads=torch.get_num_threads() if device.type == 'cpu' else None,
                batch=batch, repeats=repeats, warmup=warmup, clock=clock,
                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', 'unset'),
                torch=torch.__version__, date=datetime.datetime.now().isoformat(timespec='seconds'),
                load=load, command=command, amp=amp, precision=_precision(amp),
                sampler=_sampler(device),
                memory_method=('cuda max_memory_allocated above the allocation before the pass'
                               if device.type == 'cuda' else
                               'CPU peak RSS above RSS before the pass, fresh subprocess per '
                               'measurement, MALLOC_MMAP_THRESHOLD_=65536, after a warm-up pass'))
    return meta, records


def _ms(runs: Dict[str, List[float]]) -> Dict[str, List[float]]:
    return {clock: [round(t * 1e3, 2) for t in values] for clock, values in runs.items()}


def _relate(records: List[dict], size: Tuple[int, int], fwd: dict,
            train: Optional[dict]) -> None:
    """Adds fast-vs-reference and with_cp-vs-without fields to the records of ``size``."""
    here = {(r['method'], r['path']): r for r in records if tuple(r['size']) == tuple(size)}
    for (method, name), rec in here.items():
        ref = here.get((method, 'reference'))
        if name == 'fast' and ref is not None:
            rec['fwd_speedup'] = paired_ratio(fwd[(method, 'reference')], fwd[(method, 'fast')])
            if train is not None:
                rec['train_speedup'] = paired_ratio(train[(method, 'reference')],
                                                    train[(method, 'fast')])
            for key in ('fwd_peak_mib', 'train_peak_mib'):
                if key in rec and key in ref:
                    rec[key.replace('_mib', '_ratio')] = rec[key] / ref[key]
        cp = here.get((method, name + '+cp'))
        if cp is not None and train is not None:
            rec['cp_time_ratio'] = paired_ratio(train[(method, name + '+cp')],
                                                train[(method, name)])
            if 'train_peak_mib' in rec and 'train_peak_mib' in cp:
                rec['cp_train_peak_mib'] = cp['train_peak_mib']
                rec['cp_peak_ratio'] = cp['train_peak_mib'] / rec['train_peak_mib']


def _precision(amp: str) -> str:
    if amp == 'off':
        return 'float32'
    dtype = str(AMP_DTYPES[amp]).replace('torch.', '')
    return f'{dtype} autocast, float32 weights; MACs traced in float32'


def _sampler(device: torch.device) -> str:
    """What sampled deformable attention in this run."""
    if device.type != 'cuda':
        return 'PyTorch sampler (CPU)'
    if msda._KERNEL_OFF[0]:
        return 'PyTorch sampler on CUDA (--cuda-sampler pytorch)'
    if not msda.mmcv_has_cuda_ops():
        return 'PyTorch sampler on CUDA (this mmcv has no CUDA ops)'
    return "mmcv's CUDA kernel"


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)'


