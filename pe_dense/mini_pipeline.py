"""The main job: every position encoding through the whole pipeline on the bundled mini data, on
the CPU, end to end: ImageNet-style pre-training -> Mask R-CNN and UperNet fine-tuned from that
checkpoint, and the same fine-tuning from random initialisation beside it, and a results table.
:func:`run_pipeline` runs it (``tools/run_mini.py`` is its command line).

Each run is one ``tools/train.py`` subprocess that trains, saves its last checkpoint and evaluates
it at the end (mmpretrain's accuracy: top-1 / top-5; mmdet's COCO metric: box and mask AP; mmseg's
IoU metric: mIoU), with progress lines; ``tools/test.py CONFIG CHECKPOINT`` gives the same numbers
again (tested). Per method: the classifier (``configs/mini/deit-ti-{m}_mini.py``) is pre-trained;
the detector and the segmentor are trained twice, from ``init_cfg=dict(type='Pretrained',
checkpoint=<that classifier's checkpoint>)`` and from random initialisation. The loader's log line
of each pre-trained run is checked: a ViT or PE weight missing from it stops the job. A baseline
row evaluates the untrained AbsolutePE models with ``tools/test.py``. Each pre-trained segmentor
is then evaluated at several test resolutions (``tools/resolution_sweep.py``, ``sweep_scales``,
default 0.5 1.0 2.0 of the 128 x 128 images). The tables go to ``<work_dir>/results.md`` and
``results.json``.

The stages run the repository's ``tools/`` scripts on its ``configs/mini/`` files and the mini data
in ``data/mini`` (all relative to the repository root, ``ROOT``, which is also the subprocesses'
working directory): the pipeline needs a checkout of the repository, not only the package.
"""
import builtins
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pe_dense.sweep import check_scales

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
METHODS = {'abs': 'AbsolutePE', 'none': 'NoPE', 'peg': 'PEG', 'lape': 'LaPE', 'pvg': 'PVG',
           'mpvg': 'MPVG', 'rope-axial': 'RoPEAxial', 'rope-mixed': 'RoPEMixed'}
PRETRAIN = 'configs/mini/deit-ti-{}_mini.py'
DET = 'configs/mini/mask-rcnn_vit-adapter-ti-{}_fpn_mini.py'
SEG = 'configs/mini/upernet_vit-adapter-ti-{}_mini.py'
# What the main job runs unless told otherwise.
DEFAULT_METHODS = ('abs', 'peg', 'lape', 'pvg', 'mpvg', 'rope-axial', 'rope-mixed')
DEFAULT_SWEEP_SCALES = (0.5, 1.0, 2.0)
PROGRESS = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\].*?eta: (\S+).*?\sloss: ([\d.]+)')
# pe_dense.checkpoint.load_backbone_checkpoint's log line.
LOADED = re.compile(r'loaded (?P<path>\S+) into ViTAdapter \((?P<pe>\w+)\): (?P<read>\d+) tensors '
                    r'read; .*?missing \((?P<n_missing>\d+)\): (?P<missing>.*); unexpected '
                    r'\((?P<n_unexpected>\d+)\): (?P<unexpected>.*)$')
# Backbone parts that a pre-trained ViT classifier provides; the rest is the adapter's.
VIT_PARTS = ('patch_embed', 'blocks', 'pos_embed')
# ViT-Adapter's layer scale, which DeiT-style classifiers lack: it keeps its initial value 1.
LAYER_SCALE = 'blocks.{*.gamma1, *.gamma2}'

# Library warnings a user of the main job cannot act on, as (start of the message, category):
# filtered in this process and, through PYTHONWARNINGS, in every stage.
QUIET = (('', 'DeprecationWarning'), ('', 'FutureWarning'),
         ('pkg_resources is deprecated', 'UserWarning'))
METRIC_KEYS = {'cls': 'accuracy/top1', 'det': 'coco/bbox_mAP', 'seg': 'mIoU'}
# The stages' subprocesses still running (killed when another stage fails).
LIVE = set()
# mmengine reads configs through pkg_resources, which is not thread-safe.
CONFIG_LOCK = threading.Lock()
# One line at a time on the terminal from the stages running side by side.
PRINT_LOCK = threading.Lock()


def quiet_warnings() -> None:
    """Filters the warnings of ``QUIET`` in this process."""
    for message, category in QUIET:
        warnings.filterwarnings('ignore', message=re.escape(message),
                                category=getattr(builtins, category))


def subprocess_env() -> dict:
    """The environment of every stage: unbuffered output, the warnings of ``QUIET`` filtered
    (after the caller's own PYTHONWARNINGS, so these take precedence)."""
    own = os.environ.get('PYTHONWARNINGS')
    quiet = ([own] if own else []) + [f'ignore:{message}:{category}' for message, category in QUIET]
    return dict(os.environ, PYTHONUNBUFFERED='1', PYTHONWARNINGS=','.join(quiet))


def run(cmd: Sequence[str], label: str, log_path: str) -> Tuple[float, float]:
    """Runs ``cmd``, writing its output to ``log_path`` and a short progress line per log step;
    returns (wall-clock seconds, CPU seconds of the subprocess)."""
    start = time.time()
    with open(log_path, 'w', buffering=1) as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=subprocess_env())
        LIVE.add(proc)
        for line in proc.stdout:
            log.write(line)
            m = PROGRESS.search(line)
            if m:
                it, total, eta, loss = m.groups()
                show(f'  [{label}] iter {it}/{total}  loss {loss}  eta {eta}')
        # wait4: this child's own CPU time, also while other stages' children run
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        LIVE.discard(proc)
    if code:
        raise SystemExit(f'{label} failed (exit {code}); see {log_path}')
    return time.time() - start, usage.ru_utime + usage.ru_stime


def evaluate(config: str, checkpoint: str, work_dir: str, label: str,
             options: Sequence[str] = ()) -> dict:
    """``tools/test.py`` on ``checkpoint`` in ``work_dir`` (``options``: its ``--cfg-options``);
    returns its metrics (``--out`` JSON)."""
    out = osp.join(work_dir, 'metrics.json')
    extra = ['--cfg-options', *options] if options else []
    run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir', work_dir,
         '--out', out, *extra], f'{label} eval', osp.join(work_dir, 'test.log'))
    with open(out) as f:
        return json.load(f)


def final_metrics(work_dir: str, iters: int, kind: str) -> dict:
    """The evaluation logged at iteration ``iters`` (mmengine's ``vis_data/scalars.json``) of a
    run of ``kind`` ('cls', 'det' or 'seg')."""
    path = max(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')), key=osp.getmtime)
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    found = [r for r in rows if r.get('step') == iters and METRIC_KEYS[kind] in r]
    if not found:
        raise SystemExit(f'no evaluation at iteration {iters} in {path}')
    return {k: v for k, v in found[-1].items()
            if k.startswith(('coco/', 'accuracy/')) or k in ('aAcc', 'mIoU', 'mAcc')}


def schedule_options(config: str, iters: int) -> List[str]:
    """``--cfg-options`` that run ``config`` (a path relative to ``ROOT``, or absolute) for
    ``iters`` iterations, its lr schedule (warm-up included) scaled in proportion, so that it ends
    where the training ends."""
    from mmengine.config import Config
    with CONFIG_LOCK:
        cfg = Config.fromfile(osp.join(ROOT, config))
    scale = iters / cfg.train_cfg.max_iters
    options = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
               f'default_hooks.checkpoint.interval={iters}']
    for i, sched in enumerate(cfg.param_scheduler):
        begin = round(sched.get('begin', 0) * scale)
        options += [f'param_scheduler.{i}.begin={begin}',
                    f'param_scheduler.{i}.end={max(begin + 1, round(sched.end * scale))}']
        if 'T_max' in sched:
            options.append(f'param_scheduler.{i}.T_max={max(1, round(sched.T_max * scale))}')
    return options


def pretrained_options(checkpoint: str) -> List[str]:
    """``--cfg-options`` that initialise a dense config's backbone from ``checkpoint``."""
    return ['model.backbone.init_cfg.type=Pretrained',
            f'model.backbone.init_cfg.checkpoint={checkpoint}']


def train_and_evaluate(config: str, work_dir: str, iters: int, kind: str, label: str,
                       options: Sequence[str] = ()) -> Tuple[dict, float, float]:
    """Trains ``config`` for ``iters`` iterations in ``work_dir`` (``options``: more
    ``--cfg-options``); returns (final metrics, wall-clock seconds, CPU seconds)."""
    os.makedirs(work_dir, exist_ok=True)
    seconds, cpu = run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
                   '--cfg-options', *schedule_options(config, iters), *options],
                  f'{label} train', osp.join(work_dir, 'train.log'))
    return final_metrics(work_dir, iters, kind), seconds, cpu


def loaded_weights(log_path: str, checkpoint: str) -> Tuple[int, str]:
    """Reads the loader's log line of a run started from ``checkpoint``; returns (tensors read,
    missing-key summary). A ViT or PE parameter missing (or no such line) is an error."""
    with open(log_path) as f:
        found = [m for m in map(LOADED.search, f) if m and m['path'] == checkpoint]
    if not found:
        raise SystemExit(f'{log_path} has no loader line for {checkpoint}: the pre-trained '
                         'weights were not loaded')
    m = found[-1]
    parts = [p for p in m['missing'].split('; ') if p not in ('none', LAYER_SCALE)]
    vit_missing = [p for p in parts if re.split(r'[. ]', p)[0] in VIT_PARTS]
    if vit_missing:
        raise SystemExit(f'{checkpoint} left ViT weights of the backbone uninitialised '
                         f'({"; ".join(vit_missing)}); see {log_path}')
    return int(m['read']), m['missing']


def untrained_checkpoint(config: str, path: str) -> None:
    """Saves the freshly initialised model of ``config`` (what training starts from)."""
    code = (
        'import sys, torch, warnings; warnings.filterwarnings("ignore");'
        'from mmengine.config import Config; from mmengine.registry import init_default_scope;'
        'import pe_dense; from mmengine.registry import MODELS;'
        'cfg = Config.fromfile(sys.argv[1]); init_default_scope(cfg.default_scope);'
        'torch.manual_seed(0); m = MODELS.build(cfg.model); m.init_weights();'
        'torch.save({"state_dict": m.state_dict()}, sys.argv[2])')
    subprocess.run([sys.executable, '-c', code, config, path], cwd=ROOT, check=True,
                   capture_output=True, env=subprocess_env())


def sweep_stage(config: str, checkpoint: str, work_dir: str, scales: Sequence[float],
                label: str, options: Sequence[str] = ()) -> Tuple[list, float, float]:
    """Evaluates ``checkpoint`` at the test-resolution factors ``scales`` with
    ``tools/resolution_sweep.py`` (files in ``work_dir``; ``options``: its ``--cfg-options``);
    returns (its rows from ``sweep.json``, wall-clock seconds, CPU seconds)."""
    os.makedirs(work_dir, exist_ok=True)
    extra = ['--cfg-options', *options] if options else []
    seconds, cpu = run([sys.executable, 'tools/resolution_sweep.py', config, checkpoint,
                        '--scales', *map(str, scales), '--work-dir', work_dir, '--out', work_dir,
                        *extra],
                       f'{label} sweep', osp.join(work_dir, 'sweep.log'))
    with open(osp.join(work_dir, 'sweep.json')) as f:
        return json.load(f)['rows'], seconds, cpu


def sweep_table(rows: List[dict]) -> str:
    """The Markdown table of mIoU against the test-resolution factor, one row per segmentor
    that was swept ('' if none)."""
    swept = [r for r in rows if r.get('sweep')]
    if not swept:
        return ''
    scales = [s['scale'] for s in swept[0]['sweep']]
    lines = ['| method | backbone init | seed | ' + ' | '.join(f'mIoU at {s:g}x' for s in scales)
             + ' | time |',
             '|---|---|---|' + '---|' * (len(scales) + 1)]
    for r in swept:
        by_scale = {s['scale']: s['metrics']['mIoU'] for s in r['sweep']}
        lines.append(f"| {r['method']} | {r['init']} | {r.get('seed', '-')} | "
                     + ' | '.join(_number(by_scale.get(s), '.2f') for s in scales)
                     + f" | {r['sweep_seconds']:.0f} s |")
    return '\n'.join(lines)


def _number(value, fmt):
    return '-' if value is None else format(value, fmt)


def table(rows: List[dict]) -> str:
    """The Markdown table: one row per (seed, method, initialisation)."""
    lines = ['| method | backbone init | seed | top-1 (%) | box AP | mask AP | mIoU | '
             'time: pre-train / det / seg |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        times = ' / '.join(_number(r[k], '.0f') + ('' if r[k] is None else ' s')
                           for k in ('pretrain_seconds', 'det_seconds', 'seg_seconds'))
        lines.append(f"| {r['method']} | {r['init']} | {r.get('seed', '-')} | "
                     f"{_number(r['top1'], '.1f')} | {r['bbox_mAP']:.3f} | {r['segm_mAP']:.3f} | "
                     f"{r['mIoU']:.2f} | {times} |")
    return '\n'.join(lines)


SUMMARY_METRICS = ('top1', 'bbox_mAP', 'segm_mAP', 'mIoU')
DIFFERENCE = 'pre-trained - random'


def _mean_sd(values: List[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def seed_summary(rows: List[dict]) -> List[dict]:
    """Statistics over the seeds of the rows of :func:`run_pipeline`: per (method,
    initialisation), in the order of the rows, ``dict(method, init, seeds, mean, sd)`` with
    ``mean`` / ``sd`` mapping each metric of ``SUMMARY_METRICS`` that the rows have to its mean and
    sample standard deviation (None with one seed); then per method that has both, the same for
    the per-seed difference pre-trained minus random (``init`` = ``DIFFERENCE``; box AP, mask AP,
    mIoU), pairing the two runs of each seed, which share their data. Entries of swept
    segmentors also get ``sweep``: per test-resolution factor, ``dict(scale, n, mean, sd)`` of
    the mIoU over the seeds."""
    groups: Dict[Tuple[str, str], Dict[int, dict]] = {}
    for row in rows:
        groups.setdefault((row['method'], row['init']), {})[row.get('seed', 0)] = row

    def stats(method, init, by_seed, metrics):
        entry = dict(method=method, init=init, seeds=sorted(by_seed), mean={}, sd={})
        for key in metrics:
            values = [by_seed[s][key] for s in sorted(by_seed) if by_seed[s].get(key) is not None]
            if values:
                entry['mean'][key], entry['sd'][key] = _mean_sd(values)
        return entry

    out = [stats(method, init, by_seed, SUMMARY_METRICS)
           for (method, init), by_seed in groups.items()]
    for entry, by_seed in zip(out, groups.values()):
        swept = [by_seed[s]['sweep'] for s in sorted(by_seed) if by_seed[s].get('sweep')]
        if swept:
            scales = [row['scale'] for row in swept[0]]
            entry['sweep'] = [dict(scale=scale, n=len(swept), **dict(zip(('mean', 'sd'), _mean_sd(
                [row['metrics']['mIoU'] for rows in swept for row in rows
                 if row['scale'] == scale])))) for scale in scales]
    for (method, init), pre in groups.items():
        random = groups.get((method, 'random'))
        if init != 'pre-trained' or not random:
            continue
        paired = {seed: {k: pre[seed][k] - random[seed][k] for k in SUMMARY_METRICS[1:]}
                  for seed in pre if seed in random}
        if paired:
            out.append(stats(method, DIFFERENCE, paired, SUMMARY_METRICS[1:]))
    return out


def sweep_summary_table(summary: List[dict]) -> str:
    """The Markdown table of the ``sweep`` entries of :func:`seed_summary`: mIoU mean +- sample
    standard deviation over the seeds per test-resolution factor ('' if nothing was swept)."""
    swept = [entry for entry in summary if entry.get('sweep')]
    if not swept:
        return ''
    scales = [row['scale'] for row in swept[0]['sweep']]
    lines = ['| method | backbone init | seeds | ' + ' | '.join(f'mIoU at {s:g}x' for s in scales)
             + ' |', '|---|---|---|' + '---|' * len(scales)]
    for entry in swept:
        cells = [format(row['mean'], '.2f') + ('' if row['sd'] is None
                                                else ' ± ' + format(row['sd'], '.2f'))
                 for row in entry['sweep']]
        lines.append(f"| {entry['method']} | {entry['init']} | {entry['sweep'][0]['n']} | "
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def summary_table(summary: List[dict]) -> str:
    """The Markdown table of :func:`seed_summary`: mean +- sample standard deviation per metric
    (top-1 in %, box and mask AP, mIoU in %)."""
    formats = dict(top1='.1f', bbox_mAP='.3f', segm_mAP='.3f', mIoU='.2f')
    lines = ['| method | backbone init | seeds | top-1 (%) | box AP | mask AP | mIoU |',
             '|---|---|---|---|---|---|---|']
    for entry in summary:
        cells = []
        for key in SUMMARY_METRICS:
            if key not in entry['mean']:
                cells.append('-')
                continue
            fmt = formats[key]
            sign = '+' if entry['init'] == DIFFERENCE else ''
            cell = format(entry['mean'][key], sign + fmt)
            if entry['sd'][key] is not None:
                cell += ' ± ' + format(entry['sd'][key], fmt)
            cells.append(cell)
        lines.append(f"| {entry['method']} | {entry['init']} | {len(entry['seeds'])} | "
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def seed_options(kind: str, seed: int, data_root: str) -> List[str]:
    """``--cfg-options`` that run a mini config of ``kind`` ('cls', 'det' or 'seg') with training
    seed ``seed`` (``randomness.seed``) on the mini data written under ``data_root`` (the folder
    of ``coco/``, ``ade/`` and ``imagenet/``)."""
    sub = {'cls': 'imagenet', 'det': 'coco/', 'seg': 'ade/ADEChallengeData2016'}[kind]
    root = osp.join(data_root, sub)
    options = [f'randomness.seed={seed}']
    options += [f'{loader}.dataset.data_root={root}'
                for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if kind == 'det':
        ann_file = osp.join(root, 'annotations', 'instances_val2017.json')
        options += [f'val_evaluator.ann_file={ann_file}', f'test_evaluator.ann_file={ann_file}']
    return options


def data_root(seed: int) -> str:
    """Where the main job writes the mini data of ``seed``: ``data/mini`` for seed 0 (the mini
    configs' own paths), ``data/mini_seed<seed>`` for the others; absolute."""
    return osp.join(ROOT, 'data', 'mini' if seed == 0 else f'mini_seed{seed}')


def pretrain_stage(short: str, seed: int, work_root: str, iters: int, done: dict) -> dict:
    """Pre-trains the classifier of one method (``short``, a key of ``METHODS``) with ``seed``
    (its data and its training) in a folder of ``work_root``; returns its part of the pre-trained
    row."""
    label = f'{METHODS[short]} pre-train' + _seed_label(seed)
    say(f'{label}: ViT classifier on mini ImageNet, {iters} iterations')
    work_dir = osp.join(work_root, f'{short}_pretrain')
    cls, seconds, cpu = train_and_evaluate(PRETRAIN.format(short), work_dir, iters, 'cls', label,
                                           seed_options('cls', seed, data_root(seed)))
    top1, top5 = cls['accuracy/top1'], cls.get('accuracy/top5')
    say(f'{label}: top-1 {top1:.1f}%' + ('' if top5 is None else f', top-5 {top5:.1f}%')
        + f' ({seconds:.0f} s)')
    return dict(top1=top1, top5=top5, pretrain_seconds=seconds, pretrain_cpu_seconds=cpu,
                checkpoint=osp.join(work_dir, f'iter_{iters}.pth'))


def dense_stage(short: str, kind: str, seed: int, work_root: str, sweep_scales: Sequence[float],
                iters: int, pretrain: Optional[str], done: dict) -> dict:
    """Trains and evaluates Mask R-CNN (``kind`` 'det') or UperNet ('seg') of one method with
    ``seed`` (its data and its training), from the checkpoint of the finished stage ``pretrain``
    (``done[pretrain]``) or, with ``pretrain`` None, from random initialisation, in a folder of
    ``work_root``; a pre-trained segmentor is then swept over the test-resolution factors
    ``sweep_scales`` (none: no sweep). Returns its part of the row."""
    checkpoint = done[pretrain]['checkpoint'] if pretrain else None
    init = 'pre-trained' if checkpoint else 'random'
    label = f'{METHODS[short]} {kind} ({init})' + _seed_label(seed)
    say(f'{label}: {"Mask R-CNN" if kind == "det" else "UperNet"}, {iters} iterations')
    work_dir = osp.join(work_root, f'{short}_{kind}' + ('_pretrained' if checkpoint else ''))
    config = (DET if kind == 'det' else SEG).format(short)
    data = seed_options(kind, seed, data_root(seed))
    options = data + (pretrained_options(checkpoint) if checkpoint else [])
    metrics, seconds, cpu = train_and_evaluate(config, work_dir, iters, kind, label, options)
    if checkpoint:
        read, missing = loaded_weights(osp.join(work_dir, 'train.log'), checkpoint)
        say(f'{label}: loaded {read} tensors of {checkpoint}; every ViT and PE weight loaded, '
            f'left at initialisation: {missing}')
    if kind == 'det':
        say(f'{label}: box AP {metrics["coco/bbox_mAP"]:.3f}, mask AP '
            f'{metrics["coco/segm_mAP"]:.3f} ({seconds:.0f} s)')
    else:
        say(f'{label}: mIoU {metrics["mIoU"]:.2f} ({seconds:.0f} s)')
    result = dict(metrics, **{f'{kind}_seconds': seconds, f'{kind}_cpu_seconds': cpu})
    if kind == 'seg' and checkpoint and sweep_scales:
        swept, seconds, cpu = sweep_stage(config, osp.join(work_dir, f'iter_{iters}.pth'),
                                          osp.join(work_dir, 'sweep'), sweep_scales, label, data)
        result.update(sweep=swept, sweep_seconds=seconds, sweep_cpu_seconds=cpu)
        say(f'{label}: mIoU at test resolution ' + ', '.join(
            f"{s['scale']:g}x {s['metrics']['mIoU']:.2f}" for s in swept) + f' ({seconds:.0f} s)')
    return result


def baseline_stage(seed: int, work_root: str, done: dict) -> dict:
    """Evaluates the untrained AbsolutePE models on the validation data of ``seed`` in folders of
    ``work_root``; returns the baseline row."""
    say('untrained baseline (AbsolutePE, random initialisation)' + _seed_label(seed))
    row = dict(method='AbsolutePE', init='untrained', seed=seed, top1=None,
               pretrain_seconds=None, det_seconds=None, seg_seconds=None)
    for config, kind in ((DET.format('abs'), 'det'), (SEG.format('abs'), 'seg')):
        work_dir = osp.join(work_root, f'untrained_{kind}')
        os.makedirs(work_dir, exist_ok=True)
        ckpt = osp.join(work_dir, 'init.pth')
        untrained_checkpoint(config, ckpt)
        row.update(evaluate(config, ckpt, work_dir, f'untrained {kind}',
                            seed_options(kind, seed, data_root(seed))))
    return row


def _seed_label(seed: int) -> str:
    return f' [seed {seed}]'



def show(line: str) -> None:
    """Prints one whole line, also while other stages print."""
    with PRINT_LOCK:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()


def say(text: str) -> None:
    """Prints a progress line of the main job (``[mini] text``)."""
    show(f'[mini] {text}')


def run_stages(stages: Dict[str, Tuple[Sequence[str], Callable[[dict], Any]]],
               jobs: int) -> dict:
    """Runs ``stages`` (name -> (names it needs, function of the results so far: ``done``)), at most
    ``jobs`` at a time, each as soon as the stages it needs have finished, preferring earlier
    ones; returns name -> result. A failed stage stops the others."""
    results, running, pending = {}, {}, list(stages)
    with ThreadPoolExecutor(jobs) as pool:
        try:
            while pending or running:
                for name in [n for n in pending if set(stages[n][0]) <= set(results)]:
                    if len(running) == jobs:
                        break
                    pending.remove(name)
                    running[pool.submit(stages[name][1], results)] = name
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    results[running.pop(future)] = future.result()
        except BaseException:
            for proc in list(LIVE):
                proc.kill()
            raise
    return results




def check_seeds(seeds: Sequence[int]) -> List[int]:
    """``seeds`` as a list: a non-empty sequence of distinct integers >= 0 (ValueError
    otherwise)."""
    if isinstance(seeds, (str, int)) or not seeds:
        raise ValueError(f'seeds must be a non-empty list of integers >= 0, got {seeds!r}')
    seeds = list(seeds)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f'seeds must be integers >= 0, got {seeds}')
    if len(set(seeds)) != len(seeds):
        raise ValueError(f'seeds must be distinct, got {seeds}')
    return seeds


def run_pipeline(methods: Sequence[str] = DEFAULT_METHODS, pretrain_iters: Optional[int] = None,
                 det_iters: Optional[int] = None, seg_iters: Optional[int] = None, jobs: int = 2,
                 work_dir: str = 'work_dirs/mini',
                 sweep_scales: Sequence[float] = DEFAULT_SWEEP_SCALES,
                 skip_baseline: bool = False, seeds: Sequence[int] = (0,)) -> dict:
    """Runs the main job and writes ``<work_dir>/results.md`` and ``results.json``.

    Args:
        methods: keys of ``METHODS`` ('abs', 'peg', ...).
        pretrain_iters, det_iters, seg_iters: training iterations of the classifier, Mask R-CNN
            and UperNet (None: the mini config's ``train_cfg.max_iters``); the lr schedules are
            scaled to them (:func:`schedule_options`).
        jobs: runs at the same time; each gets ``OMP_NUM_THREADS`` = CPU cores / ``jobs`` unless
            ``OMP_NUM_THREADS`` is set (it is set in ``os.environ`` for the stages).
        work_dir: where the runs and the results go; a relative path is taken from ``ROOT``. With
            several seeds, each seed's runs go to ``<work_dir>/seed<seed>/``.
        sweep_scales: test-resolution factors of each pre-trained segmentor (empty: no sweep).
        skip_baseline: leave out the untrained AbsolutePE rows.
        seeds: each seed s gives its own mini data (``tools/make_mini_data.py --seed s``, in
            :func:`data_root`) and its own training seed (``randomness.seed=s``) to every stage;
            every (method, initialisation) runs once per seed. With more than one seed,
            ``results.md`` also gets the mean and the spread over the seeds
            (:func:`seed_summary`).

    Returns:
        ``dict(pretrain_iters, det_iters, seg_iters, jobs, threads, seeds, rows, summary, text,
        results_md, results_json)``: the iterations run, the rows of the table (one per seed,
        method and initialisation, the metrics and the seconds of each stage), the statistics over
        the seeds (:func:`seed_summary`), the Markdown text written to ``results_md``.

    Raises:
        ValueError: no methods or an unknown one, iterations or ``jobs`` below 1, seeds that are
            not distinct integers >= 0, a factor that is not a finite number > 0
            (:class:`pe_dense.sweep.SweepError`).
        SystemExit: a stage failed (the message names its log file); the other stages are killed.
    """
    if isinstance(methods, str) or not methods:
        raise ValueError(f'methods must be a non-empty list of names from {sorted(METHODS)}, '
                         f'got {methods!r}')
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f'unknown methods {unknown}; choose from {sorted(METHODS)}')
    for name, value in (('pretrain_iters', pretrain_iters), ('det_iters', det_iters),
                        ('seg_iters', seg_iters), ('jobs', jobs)):
        if value is not None and value < 1:
            raise ValueError(f'{name} must be at least 1, got {value}')
    seeds = check_seeds(seeds)
    sweep_scales = check_scales(sweep_scales) if sweep_scales else []
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // jobs)))
    work_dir = osp.abspath(osp.join(ROOT, work_dir))
    for seed in seeds:
        say(f'making the mini datasets of seed {seed} ({osp.relpath(data_root(seed), ROOT)})')
        subprocess.run([sys.executable, 'tools/make_mini_data.py', '--out', data_root(seed),
                        '--seed', str(seed)], check=True, cwd=ROOT, env=subprocess_env())

    from mmengine.config import Config

    def configured(config):
        return Config.fromfile(osp.join(ROOT, config.format('abs'))).train_cfg.max_iters

    pretrain_iters = pretrain_iters or configured(PRETRAIN)
    det_iters = det_iters or configured(DET)
    seg_iters = seg_iters or configured(SEG)
    say(f'{len(methods)} method(s), seed(s) {", ".join(map(str, seeds))}: pre-training '
        f'({pretrain_iters} iterations), then Mask R-CNN ({det_iters}) and UperNet ({seg_iters}) '
        f'from the pre-trained checkpoint and from random initialisation; {jobs} run(s) at a '
        f'time, {os.environ["OMP_NUM_THREADS"]} thread(s) each')
    # In order of preference: per seed and method, the pre-training first, then the random-init
    # runs (which need nothing) while it runs, then the runs that start from its checkpoint.
    stages = {}
    for seed in seeds:
        root = work_dir if len(seeds) == 1 else osp.join(work_dir, f'seed{seed}')
        for short in methods:
            pre = f'{seed} {short} pretrain'
            stages[pre] = ((), partial(pretrain_stage, short, seed, root, pretrain_iters))
            for kind, iters in (('det', det_iters), ('seg', seg_iters)):
                stages[f'{seed} {short} {kind} random'] = ((), partial(
                    dense_stage, short, kind, seed, root, sweep_scales, iters, None))
            for kind, iters in (('det', det_iters), ('seg', seg_iters)):
                stages[f'{seed} {short} {kind} pre-trained'] = ((pre,), partial(
                    dense_stage, short, kind, seed, root, sweep_scales, iters, pre))
        if not skip_baseline:
            stages[f'{seed} baseline'] = ((), partial(baseline_stage, seed, root))
    results = run_stages(stages, jobs)

    rows = []
    for seed in seeds:
        if not skip_baseline:
            rows.append(results[f'{seed} baseline'])
        for short in methods:
            for init in ('pre-trained', 'random'):
                row = dict(method=METHODS[short], init=init, seed=seed, top1=None, top5=None,
                           pretrain_seconds=None, pretrain_cpu_seconds=None)
                if init == 'pre-trained':
                    row.update(results[f'{seed} {short} pretrain'])
                row.update(results[f'{seed} {short} det {init}'])
                row.update(results[f'{seed} {short} seg {init}'])
                rows.append(row)
    for row in rows:
        row['bbox_mAP'] = row.pop('coco/bbox_mAP')
        row['segm_mAP'] = row.pop('coco/segm_mAP')
    summary = seed_summary(rows)
    text = table(rows)
    if len(seeds) > 1:
        text = (f'Mean and sample standard deviation over {len(seeds)} seeds '
                f'({", ".join(map(str, seeds))}):\n\n{summary_table(summary)}\n\n'
                f'Per seed:\n\n{text}')
    swept = sweep_table(rows)
    if swept:
        text += ('\n\nUperNet (pre-trained) at other test resolutions (factor of the 128 x 128 '
                 'images; tools/resolution_sweep.py):\n\n' + swept)
        if len(seeds) > 1:
            text += ('\n\nThe same, mean and sample standard deviation over the seeds:\n\n'
                     + sweep_summary_table(summary))
    results_md = osp.join(work_dir, 'results.md')
    results_json = osp.join(work_dir, 'results.json')
    os.makedirs(work_dir, exist_ok=True)
    with open(results_md, 'w') as f:
        f.write(text + '\n')
    out = dict(pretrain_iters=pretrain_iters, det_iters=det_iters, seg_iters=seg_iters,
               jobs=jobs, threads=int(os.environ['OMP_NUM_THREADS']), seeds=seeds, rows=rows,
               summary=summary)
    with open(results_json, 'w') as f:
        json.dump(out, f, indent=1)
    return dict(out, text=text, results_md=results_md, results_json=results_json)
