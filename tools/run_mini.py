"""The main job: every position encoding through Mask R-CNN and UperNet on the bundled mini data,
on the CPU, end to end (make data -> train -> save checkpoint -> evaluate), and a results table.

    python tools/run_mini.py [--methods abs peg lape pvg mpvg] [--det-iters N] [--seg-iters N]
        [--work-dir work_dirs/mini] [--skip-baseline]

Each run is one ``tools/train.py`` subprocess that trains, saves its last checkpoint and evaluates
it at the end (mmdet's COCO metric: box and mask AP; mmseg's IoU metric: mIoU), with progress
lines; ``tools/test.py CONFIG CHECKPOINT`` gives the same numbers again (tested). A baseline row
evaluates the untrained AbsolutePE models with ``tools/test.py``. The table goes to the terminal
and to ``<work-dir>/results.md`` and ``results.json``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
METHODS = {'abs': 'AbsolutePE', 'none': 'NoPE', 'peg': 'PEG', 'lape': 'LaPE', 'pvg': 'PVG',
           'mpvg': 'MPVG'}
DET = 'configs/mini/mask-rcnn_vit-adapter-ti-{}_fpn_mini.py'
SEG = 'configs/mini/upernet_vit-adapter-ti-{}_mini.py'
PROGRESS = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\].*?eta: (\S+).*?\sloss: ([\d.]+)')


def run(cmd, label, log_path):
    """Runs ``cmd``, writing its output to ``log_path`` and a short progress line per log step."""
    start = time.time()
    with open(log_path, 'w', buffering=1) as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
        for line in proc.stdout:
            log.write(line)
            m = PROGRESS.search(line)
            if m:
                it, total, eta, loss = m.groups()
                print(f'  [{label}] iter {it}/{total}  loss {loss}  eta {eta}', flush=True)
        code = proc.wait()
    if code:
        raise SystemExit(f'{label} failed (exit {code}); see {log_path}')
    return time.time() - start


def evaluate(config, checkpoint, work_dir, label):
    out = osp.join(work_dir, 'metrics.json')
    run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir', work_dir,
         '--out', out], f'{label} eval', osp.join(work_dir, 'test.log'))
    with open(out) as f:
        return json.load(f)


def final_metrics(work_dir, iters):
    """The evaluation logged at iteration ``iters`` (mmengine's ``vis_data/scalars.json``)."""
    path = max(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')), key=osp.getmtime)
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    found = [r for r in rows if r.get('step') == iters and ('mIoU' in r or 'coco/bbox_mAP' in r)]
    if not found:
        raise SystemExit(f'no evaluation at iteration {iters} in {path}')
    return {k: v for k, v in found[-1].items()
            if k.startswith('coco/') or k in ('aAcc', 'mIoU', 'mAcc')}


def schedule_options(config, iters):
    """``--cfg-options`` that run ``config`` for ``iters`` iterations, its lr schedule (warm-up
    included) scaled in proportion, so that it ends where the training ends."""
    from mmengine.config import Config
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


def train_and_evaluate(config, work_dir, iters, label):
    os.makedirs(work_dir, exist_ok=True)
    seconds = run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
                   '--cfg-options', *schedule_options(config, iters)],
                  f'{label} train', osp.join(work_dir, 'train.log'))
    return final_metrics(work_dir, iters), seconds


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
                   capture_output=True)


def table(rows):
    lines = ['| method | box AP | mask AP | mIoU | train + evaluate (det / seg) |',
             '|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['method']} | {r['bbox_mAP']:.3f} | {r['segm_mAP']:.3f} | "
                     f"{r['mIoU']:.2f} | {r['det_seconds']:.0f} s / {r['seg_seconds']:.0f} s |")
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=['abs', 'peg', 'lape', 'pvg', 'mpvg'],
                        choices=list(METHODS))
    parser.add_argument('--det-iters', type=int, default=None,
                        help='training iterations of Mask R-CNN (default: the mini config)')
    parser.add_argument('--seg-iters', type=int, default=None,
                        help='training iterations of UperNet (default: the mini config)')
    parser.add_argument('--work-dir', default='work_dirs/mini')
    parser.add_argument('--skip-baseline', action='store_true',
                        help='do not evaluate the untrained models')
    args = parser.parse_args()
    os.chdir(ROOT)
    start = time.time()
    print('[mini] making the mini datasets (data/mini)', flush=True)
    subprocess.run([sys.executable, 'tools/make_mini_data.py', '--out', 'data/mini'], check=True)

    from mmengine.config import Config
    det_iters = args.det_iters or Config.fromfile(DET.format('abs')).train_cfg.max_iters
    seg_iters = args.seg_iters or Config.fromfile(SEG.format('abs')).train_cfg.max_iters
    rows = []
    if not args.skip_baseline:
        print('[mini] untrained baseline (AbsolutePE, random initialisation)', flush=True)
        row = dict(method='untrained (AbsolutePE)', det_seconds=0.0, seg_seconds=0.0)
        for config, kind in ((DET.format('abs'), 'det'), (SEG.format('abs'), 'seg')):
            work_dir = osp.join(args.work_dir, f'untrained_{kind}')
            os.makedirs(work_dir, exist_ok=True)
            ckpt = osp.join(work_dir, 'init.pth')
            untrained_checkpoint(config, ckpt)
            row.update(evaluate(config, ckpt, work_dir, f'untrained {kind}'))
        rows.append(row)
    for short in args.methods:
        name = METHODS[short]
        print(f'[mini] {name}: Mask R-CNN, {det_iters} iterations', flush=True)
        det, det_s = train_and_evaluate(DET.format(short), osp.join(args.work_dir, f'{short}_det'),
                                        det_iters, f'{name} det')
        print(f'[mini] {name}: box AP {det["coco/bbox_mAP"]:.3f}, mask AP '
              f'{det["coco/segm_mAP"]:.3f} ({det_s:.0f} s)', flush=True)
        print(f'[mini] {name}: UperNet, {seg_iters} iterations', flush=True)
        seg, seg_s = train_and_evaluate(SEG.format(short), osp.join(args.work_dir, f'{short}_seg'),
                                        seg_iters, f'{name} seg')
        print(f'[mini] {name}: mIoU {seg["mIoU"]:.2f} ({seg_s:.0f} s)', flush=True)
        rows.append(dict(method=name, det_seconds=det_s, seg_seconds=seg_s, **det, **seg))
    for row in rows:
        row['bbox_mAP'] = row.pop('coco/bbox_mAP')
        row['segm_mAP'] = row.pop('coco/segm_mAP')
    text = table(rows)
    print('\n' + text)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(text + '\n')
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(det_iters=det_iters, seg_iters=seg_iters, rows=rows), f, indent=1)
    print(f'\n[mini] done in {(time.time() - start) / 60:.1f} min; table in '
          f'{osp.join(args.work_dir, "results.md")}')


if __name__ == '__main__':
    main()
