"""The main job: every position encoding through the whole pipeline on the bundled mini data, on
the CPU, end to end: ImageNet-style pre-training -> Mask R-CNN and UperNet fine-tuned from that
checkpoint, and the same fine-tuning from random initialisation beside it, and a results table.

    python tools/run_mini.py [--methods abs peg lape pvg mpvg rope-axial rope-mixed]
        [--pretrain-iters N] [--det-iters N] [--seg-iters N] [--work-dir work_dirs/mini] [--skip-baseline]

Each run is one ``tools/train.py`` subprocess that trains, saves its last checkpoint and evaluates
it at the end (mmpretrain's accuracy: top-1 / top-5; mmdet's COCO metric: box and mask AP; mmseg's
IoU metric: mIoU), with progress lines; ``tools/test.py CONFIG CHECKPOINT`` gives the same numbers
again (tested). Per method: the classifier (``configs/mini/deit-ti-{m}_mini.py``) is pre-trained;
the detector and the segmentor are trained twice, from ``init_cfg=dict(type='Pretrained',
checkpoint=<that classifier's checkpoint>)`` and from random initialisation. The loader's log line
of each pre-trained run is checked: a ViT or PE weight missing from it stops the job. A baseline
row evaluates the untrained AbsolutePE models with ``tools/test.py``. Each pre-trained segmentor
is then evaluated at several test resolutions (``tools/resolution_sweep.py``, ``--sweep-scales``,
default 0.5 1.0 2.0 of the 128 x 128 images). The tables go to the terminal and to
``<work-dir>/results.md`` and ``results.json``.
"""
import argparse
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

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
METHODS = {'abs': 'AbsolutePE', 'none': 'NoPE', 'peg': 'PEG', 'lape': 'LaPE', 'pvg': 'PVG',
           'mpvg': 'MPVG', 'rope-axial': 'RoPEAxial', 'rope-mixed': 'RoPEMixed'}
PRETRAIN = 'configs/mini/deit-ti-{}_mini.py'
DET = 'configs/mini/mask-rcnn_vit-adapter-ti-{}_fpn_mini.py'
SEG = 'configs/mini/upernet_vit-adapter-ti-{}_mini.py'
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


def run(cmd, label, log_path):
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


def evaluate(config, checkpoint, work_dir, label):
    out = osp.join(work_dir, 'metrics.json')
    run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir', work_dir,
         '--out', out], f'{label} eval', osp.join(work_dir, 'test.log'))
    with open(out) as f:
        return json.load(f)


def final_metrics(work_dir, iters, kind):
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


def schedule_options(config, iters):
    """``--cfg-options`` that run ``config`` for ``iters`` iterations, its lr schedule (warm-up
    included) scaled in proportion, so that it ends where the training ends."""
    from mmengine.config import Config
    with CONFIG_LOCK:
        cfg = Config.fromfile(config)
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


def pretrained_options(checkpoint):
    """``--cfg-options`` that initialise a dense config's backbone from ``checkpoint``."""
    return ['model.backbone.init_cfg.type=Pretrained',
            f'model.backbone.init_cfg.checkpoint={checkpoint}']


def train_and_evaluate(config, work_dir, iters, kind, label, options=()):
    """Trains ``config`` for ``iters`` iterations in ``work_dir`` (``options``: more
    ``--cfg-options``); returns (final metrics, wall-clock seconds, CPU seconds)."""
    os.makedirs(work_dir, exist_ok=True)
    seconds, cpu = run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
                   '--cfg-options', *schedule_options(config, iters), *options],
                  f'{label} train', osp.join(work_dir, 'train.log'))
    return final_metrics(work_dir, iters, kind), seconds, cpu


def loaded_weights(log_path, checkpoint):
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


def untrained_checkpoint(config, path):
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


def sweep_stage(config, checkpoint, work_dir, scales, label):
    """Evaluates ``checkpoint`` at the test-resolution factors ``scales`` with
    ``tools/resolution_sweep.py`` (files in ``work_dir``); returns (its rows from ``sweep.json``,
    wall-clock seconds, CPU seconds)."""
    os.makedirs(work_dir, exist_ok=True)
    seconds, cpu = run([sys.executable, 'tools/resolution_sweep.py', config, checkpoint,
                        '--scales', *map(str, scales), '--work-dir', work_dir, '--out', work_dir],
                       f'{label} sweep', osp.join(work_dir, 'sweep.log'))
    with open(osp.join(work_dir, 'sweep.json')) as f:
        return json.load(f)['rows'], seconds, cpu


def sweep_table(rows):
    """The Markdown table of mIoU against the test-resolution factor, one row per segmentor
    that was swept ('' if none)."""
    swept = [r for r in rows if r.get('sweep')]
    if not swept:
        return ''
    scales = [s['scale'] for s in swept[0]['sweep']]
    lines = ['| method | backbone init | ' + ' | '.join(f'mIoU at {s:g}x' for s in scales)
             + ' | time |',
             '|---|---|' + '---|' * (len(scales) + 1)]
    for r in swept:
        by_scale = {s['scale']: s['metrics']['mIoU'] for s in r['sweep']}
        lines.append(f"| {r['method']} | {r['init']} | "
                     + ' | '.join(_number(by_scale.get(s), '.2f') for s in scales)
                     + f" | {r['sweep_seconds']:.0f} s |")
    return '\n'.join(lines)


def _number(value, fmt):
    return '-' if value is None else format(value, fmt)


def table(rows):
    """The Markdown table: one row per (method, initialisation)."""
    lines = ['| method | backbone init | top-1 (%) | box AP | mask AP | mIoU | '
             'time: pre-train / det / seg |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        times = ' / '.join(_number(r[k], '.0f') + ('' if r[k] is None else ' s')
                           for k in ('pretrain_seconds', 'det_seconds', 'seg_seconds'))
        lines.append(f"| {r['method']} | {r['init']} | {_number(r['top1'], '.1f')} | "
                     f"{r['bbox_mAP']:.3f} | {r['segm_mAP']:.3f} | {r['mIoU']:.2f} | {times} |")
    return '\n'.join(lines)


def pretrain_stage(short, args, iters, done):
    """Pre-trains the classifier of one method; returns its part of the pre-trained row."""
    label = f'{METHODS[short]} pre-train'
    say(f'{label}: ViT classifier on mini ImageNet, {iters} iterations')
    work_dir = osp.join(args.work_dir, f'{short}_pretrain')
    cls, seconds, cpu = train_and_evaluate(PRETRAIN.format(short), work_dir, iters, 'cls', label)
    top1, top5 = cls['accuracy/top1'], cls.get('accuracy/top5')
    say(f'{label}: top-1 {top1:.1f}%' + ('' if top5 is None else f', top-5 {top5:.1f}%')
        + f' ({seconds:.0f} s)')
    return dict(top1=top1, top5=top5, pretrain_seconds=seconds, pretrain_cpu_seconds=cpu,
                checkpoint=osp.join(work_dir, f'iter_{iters}.pth'))


def dense_stage(short, kind, args, iters, pretrain, done):
    """Trains and evaluates Mask R-CNN (``kind`` 'det') or UperNet ('seg') of one method, from
    the checkpoint of the finished stage ``pretrain`` (``done[pretrain]``) or, with ``pretrain``
    None, from random initialisation; returns its part of the row."""
    checkpoint = done[pretrain]['checkpoint'] if pretrain else None
    init = 'pre-trained' if checkpoint else 'random'
    label = f'{METHODS[short]} {kind} ({init})'
    say(f'{label}: {"Mask R-CNN" if kind == "det" else "UperNet"}, {iters} iterations')
    work_dir = osp.join(args.work_dir, f'{short}_{kind}' + ('_pretrained' if checkpoint else ''))
    config = (DET if kind == 'det' else SEG).format(short)
    options = pretrained_options(checkpoint) if checkpoint else []
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
    if kind == 'seg' and checkpoint and args.sweep_scales:
        swept, seconds, cpu = sweep_stage(config, osp.join(work_dir, f'iter_{iters}.pth'),
                                          osp.join(work_dir, 'sweep'), args.sweep_scales, label)
        result.update(sweep=swept, sweep_seconds=seconds, sweep_cpu_seconds=cpu)
        say(f'{label}: mIoU at test resolution ' + ', '.join(
            f"{s['scale']:g}x {s['metrics']['mIoU']:.2f}" for s in swept) + f' ({seconds:.0f} s)')
    return result


def baseline_stage(args, done):
    """Evaluates the untrained AbsolutePE models; returns the baseline row."""
    say('untrained baseline (AbsolutePE, random initialisation)')
    row = dict(method='AbsolutePE', init='untrained', top1=None, pretrain_seconds=None,
               det_seconds=None, seg_seconds=None)
    for config, kind in ((DET.format('abs'), 'det'), (SEG.format('abs'), 'seg')):
        work_dir = osp.join(args.work_dir, f'untrained_{kind}')
        os.makedirs(work_dir, exist_ok=True)
        ckpt = osp.join(work_dir, 'init.pth')
        untrained_checkpoint(config, ckpt)
        row.update(evaluate(config, ckpt, work_dir, f'untrained {kind}'))
    return row


def show(line):
    """Prints one whole line, also while other stages print."""
    with PRINT_LOCK:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()


def say(text):
    show(f'[mini] {text}')


def run_stages(stages, jobs):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+',
                        default=['abs', 'peg', 'lape', 'pvg', 'mpvg', 'rope-axial', 'rope-mixed'],
                        choices=list(METHODS))
    parser.add_argument('--pretrain-iters', type=int, default=None,
                        help='pre-training iterations of the classifier (default: the mini '
                        'config)')
    parser.add_argument('--det-iters', type=int, default=None,
                        help='training iterations of Mask R-CNN (default: the mini config)')
    parser.add_argument('--seg-iters', type=int, default=None,
                        help='training iterations of UperNet (default: the mini config)')
    parser.add_argument('--jobs', type=int, default=2,
                        help='runs at the same time, each with CPU cores / JOBS threads unless '
                        'OMP_NUM_THREADS is set (default: 2)')
    parser.add_argument('--work-dir', default='work_dirs/mini')
    parser.add_argument('--sweep-scales', nargs='*', type=float, default=[0.5, 1.0, 2.0],
                        help='test-resolution factors at which each pre-trained segmentor is '
                        'evaluated (tools/resolution_sweep.py; default: 0.5 1.0 2.0; none: no '
                        'sweep)')
    parser.add_argument('--skip-baseline', action='store_true',
                        help='do not evaluate the untrained models')
    args = parser.parse_args()
    quiet_warnings()
    for flag in ('pretrain_iters', 'det_iters', 'seg_iters', 'jobs'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f'--{flag.replace("_", "-")} must be at least 1')
    if any(not s > 0 for s in args.sweep_scales):
        parser.error('--sweep-scales must all be > 0 (1.0: the configured test resolution)')
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // args.jobs)))
    os.chdir(ROOT)
    args.work_dir = osp.abspath(args.work_dir)
    start = time.time()
    say('making the mini datasets (data/mini)')
    subprocess.run([sys.executable, 'tools/make_mini_data.py', '--out', 'data/mini'], check=True,
                   env=subprocess_env())

    from mmengine.config import Config
    pretrain_iters = (args.pretrain_iters
                      or Config.fromfile(PRETRAIN.format('abs')).train_cfg.max_iters)
    det_iters = args.det_iters or Config.fromfile(DET.format('abs')).train_cfg.max_iters
    seg_iters = args.seg_iters or Config.fromfile(SEG.format('abs')).train_cfg.max_iters
    say(f'{len(args.methods)} method(s): pre-training ({pretrain_iters} iterations), then Mask '
        f'R-CNN ({det_iters}) and UperNet ({seg_iters}) from the pre-trained checkpoint and from '
        f'random initialisation; {args.jobs} run(s) at a time, '
        f'{os.environ["OMP_NUM_THREADS"]} thread(s) each')
    # In order of preference: per method, the pre-training first, then the random-init runs
    # (which need nothing) while it runs, then the runs that start from its checkpoint.
    stages = {}
    for short in args.methods:
        pre = f'{short} pretrain'
        stages[pre] = ((), partial(pretrain_stage, short, args, pretrain_iters))
        for kind, iters in (('det', det_iters), ('seg', seg_iters)):
            stages[f'{short} {kind} random'] = ((), partial(dense_stage, short, kind, args, iters,
                                                            None))
        for kind, iters in (('det', det_iters), ('seg', seg_iters)):
            stages[f'{short} {kind} pre-trained'] = ((pre,), partial(dense_stage, short, kind,
                                                                     args, iters, pre))
    if not args.skip_baseline:
        stages['baseline'] = ((), partial(baseline_stage, args))
    results = run_stages(stages, args.jobs)

    rows = [results['baseline']] if not args.skip_baseline else []
    for short in args.methods:
        for init in ('pre-trained', 'random'):
            row = dict(method=METHODS[short], init=init, top1=None, top5=None,
                       pretrain_seconds=None, pretrain_cpu_seconds=None)
            if init == 'pre-trained':
                row.update(results[f'{short} pretrain'])
            row.update(results[f'{short} det {init}'])
            row.update(results[f'{short} seg {init}'])
            rows.append(row)
    for row in rows:
        row['bbox_mAP'] = row.pop('coco/bbox_mAP')
        row['segm_mAP'] = row.pop('coco/segm_mAP')
    text = table(rows)
    swept = sweep_table(rows)
    if swept:
        text += ('\n\nUperNet (pre-trained) at other test resolutions (factor of the 128 x 128 '
                 'images; tools/resolution_sweep.py):\n\n' + swept)
    print('\n' + text)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(text + '\n')
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(pretrain_iters=pretrain_iters, det_iters=det_iters, seg_iters=seg_iters,
                       jobs=args.jobs, threads=int(os.environ['OMP_NUM_THREADS']), rows=rows),
                  f, indent=1)
    print(f'\n[mini] done in {(time.time() - start) / 60:.1f} min; table in '
          f'{osp.join(args.work_dir, "results.md")}')


if __name__ == '__main__':
    main()
