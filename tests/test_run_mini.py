"""The main job (pe_dense.mini_pipeline) and its script (tools/run_mini.py) end to end at a few
iterations: data, pre-training, fine-tuning from the pre-trained checkpoint and from random
initialisation through the project's tools, the check of the loader's log line, the results table
and JSON."""
import json
import os.path as osp
import subprocess
import sys
import threading
from functools import partial

import pytest
from mmengine.config import Config

from pe_dense import mini_pipeline

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def scheduled(config, iters):
    cfg = Config.fromfile(config)
    for option in mini_pipeline.schedule_options(config, iters):
        key, value = option.split('=')
        cfg.merge_from_dict({key: int(value)})
    return cfg


def test_run_pipeline_refuses_bad_arguments_before_running_anything(monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError('nothing may run')
    monkeypatch.setattr(mini_pipeline.subprocess, 'run', no_run)
    monkeypatch.setattr(mini_pipeline.subprocess, 'Popen', no_run)
    for methods in ([], 'abs', ['abs', 'xyz']):
        with pytest.raises(ValueError, match='methods'):
            mini_pipeline.run_pipeline(methods)
    with pytest.raises(ValueError, match='finite and > 0'):
        mini_pipeline.run_pipeline(['abs'], sweep_scales=[1.0, float('inf')])
    with pytest.raises(ValueError, match='at least 1'):
        mini_pipeline.run_pipeline(['abs'], jobs=0)
    for seeds in ([], 3, [0, 0], [-1], [1.5], [True]):
        with pytest.raises(ValueError, match='seeds'):
            mini_pipeline.run_pipeline(['abs'], seeds=seeds)


def test_seed_options_point_every_loader_and_evaluator_at_the_seeds_data():
    """--cfg-options of a seed: training seed, the three loaders' data roots and (detection)
    the COCO evaluators' annotation files, each a path that the mini configs would read."""
    root = '/d/mini_seed7'
    cls = mini_pipeline.seed_options('cls', 7, root)
    assert cls == ['randomness.seed=7'] + [
        f'{loader}.dataset.data_root=/d/mini_seed7/imagenet'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    det = dict(option.split('=', 1) for option in mini_pipeline.seed_options('det', 7, root))
    ann = '/d/mini_seed7/coco/annotations/instances_val2017.json'
    assert det['val_evaluator.ann_file'] == det['test_evaluator.ann_file'] == ann
    assert det['train_dataloader.dataset.data_root'] == '/d/mini_seed7/coco/'
    seg = dict(option.split('=', 1) for option in mini_pipeline.seed_options('seg', 7, root))
    assert seg['val_dataloader.dataset.data_root'] == '/d/mini_seed7/ade/ADEChallengeData2016'
    assert mini_pipeline.data_root(0) == osp.join(ROOT, 'data', 'mini')
    assert mini_pipeline.data_root(12) == osp.join(ROOT, 'data', 'mini_seed12')
    # seed 0 reads what the configs read without options
    for kind, config in (('cls', 'configs/mini/deit-ti-abs_mini.py'),
                         ('det', 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py'),
                         ('seg', 'configs/mini/upernet_vit-adapter-ti-abs_mini.py')):
        cfg = Config.fromfile(osp.join(ROOT, config))
        for option in mini_pipeline.seed_options(kind, 0, 'data/mini'):
            key, value = option.split('=', 1)
            node = cfg
            for part in key.split('.'):
                node = node[part]
            assert osp.normpath(str(node)) == osp.normpath(value), (kind, key)


def _row(method, init, seed, top1, box, mask, miou):
    row = {'method': method, 'init': init, 'seed': seed, 'top1': top1, 'bbox_mAP': box,
           'segm_mAP': mask, 'mIoU': miou}
    if init == 'pre-trained':  # swept: mIoU at 0.5x is the 1x mIoU minus 10, at 2x plus the seed
        row['sweep'] = [dict(scale=scale, metrics=dict(mIoU=value)) for scale, value in
                        ((0.5, miou - 10), (1.0, miou), (2.0, miou + seed))]
    return row


def test_seed_summary_means_spreads_and_paired_differences():
    rows = [_row('PVG', 'pre-trained', 10, 60.0, 0.30, 0.20, 50.0),
            _row('PVG', 'random', 10, None, 0.10, 0.10, 40.0),
            _row('PVG', 'pre-trained', 11, 70.0, 0.50, 0.40, 56.0),
            _row('PVG', 'random', 11, None, 0.20, 0.10, 41.0),
            _row('PVG', 'pre-trained', 12, 80.0, 0.40, 0.30, 53.0),
            _row('PVG', 'random', 12, None, 0.30, 0.10, 42.0)]
    pre, random, diff = mini_pipeline.seed_summary(rows)
    assert (pre['method'], pre['init'], pre['seeds']) == ('PVG', 'pre-trained', [10, 11, 12])
    assert pre['mean'] == pytest.approx(dict(top1=70.0, bbox_mAP=0.4, segm_mAP=0.3, mIoU=53.0))
    # sample standard deviation: sqrt(sum of squared deviations / (n - 1))
    assert pre['sd'] == pytest.approx(dict(top1=10.0, bbox_mAP=0.1, segm_mAP=0.1, mIoU=3.0))
    assert 'top1' not in random['mean']
    assert random['sd']['mIoU'] == pytest.approx(1.0)
    # per seed: box +0.2, +0.3, +0.1; mIoU +10, +15, +11
    assert diff['init'] == mini_pipeline.DIFFERENCE and diff['seeds'] == [10, 11, 12]
    assert diff['mean'] == pytest.approx(dict(bbox_mAP=0.2, segm_mAP=0.2, mIoU=12.0))
    assert diff['sd']['bbox_mAP'] == pytest.approx(0.1)
    assert diff['sd']['mIoU'] == pytest.approx((14 / 2) ** 0.5)  # deviations -2, 3, -1
    lines = mini_pipeline.summary_table([pre, random, diff]).splitlines()
    assert lines[2] == ('| PVG | pre-trained | 3 | 70.0 ± 10.0 | 0.400 ± 0.100 | 0.300 ± 0.100 | '
                        '53.00 ± 3.00 |')
    assert lines[3].startswith('| PVG | random | 3 | - | 0.200 ± 0.100 | ')
    assert lines[4] == ('| PVG | pre-trained - random | 3 | - | +0.200 ± 0.100 | '
                        '+0.200 ± 0.100 | +12.00 ± 2.65 |')
    # the sweep over the seeds: 0.5x 40, 46, 43; 1x 50, 56, 53; 2x 60, 67, 65
    assert [(r['scale'], r['n']) for r in pre['sweep']] == [(0.5, 3), (1.0, 3), (2.0, 3)]
    assert [r['mean'] for r in pre['sweep']] == pytest.approx([43.0, 53.0, 64.0])
    assert [r['sd'] for r in pre['sweep']] == pytest.approx([3.0, 3.0, 13 ** 0.5])
    assert 'sweep' not in random and 'sweep' not in diff
    sweep_lines = mini_pipeline.sweep_summary_table([pre, random, diff]).splitlines()
    assert sweep_lines[0] == ('| method | backbone init | seeds | mIoU at 0.5x | mIoU at 1x | '
                              'mIoU at 2x |')
    assert sweep_lines[2:] == ['| PVG | pre-trained | 3 | 43.00 ± 3.00 | 53.00 ± 3.00 | '
                               '64.00 ± 3.61 |']
    assert mini_pipeline.sweep_summary_table([random]) == ''
    # one seed: no spread
    (single, *_) = mini_pipeline.seed_summary(rows[:1])
    assert single['sd']['mIoU'] is None
    assert mini_pipeline.summary_table([single]).splitlines()[2].endswith('| 50.00 |')


def test_several_seeds_run_every_stage_per_seed_with_its_data(monkeypatch, tmp_path):
    """run_pipeline with seeds 3 and 4: the data of each seed is made, every stage gets its seed
    and its folder seed<s>/, and the table and JSON hold the rows of both seeds and the summary
    (stage functions replaced by ones returning known metrics)."""
    made, calls = [], []
    monkeypatch.setattr(mini_pipeline.subprocess, 'run',
                        lambda cmd, **kw: made.append(cmd[cmd.index('--seed') + 1]))

    def pretrain(short, seed, root, iters, done):
        calls.append(('pretrain', short, seed, root))
        return dict(top1=50.0 + seed, top5=None, pretrain_seconds=1.0, pretrain_cpu_seconds=1.0,
                    checkpoint=f'{root}/{short}_pretrain/iter_{iters}.pth')

    def dense(short, kind, seed, root, scales, iters, pretrain, done):
        calls.append((kind, short, seed, root, pretrain))
        if pretrain:
            assert done[pretrain]['checkpoint'].startswith(root)
        bonus = 0.1 if pretrain else 0.0
        if kind == 'det':
            return {'coco/bbox_mAP': 0.1 * seed + bonus, 'coco/segm_mAP': 0.05 * seed,
                    'det_seconds': 1.0}
        return {'mIoU': 10.0 * seed + 100 * bonus, 'seg_seconds': 1.0}

    monkeypatch.setattr(mini_pipeline, 'pretrain_stage', pretrain)
    monkeypatch.setattr(mini_pipeline, 'dense_stage', dense)
    result = mini_pipeline.run_pipeline(['pvg'], pretrain_iters=2, det_iters=2, seg_iters=2,
                                        jobs=1, work_dir=str(tmp_path), sweep_scales=[],
                                        skip_baseline=True, seeds=[3, 4])
    assert made == ['3', '4']
    for seed in (3, 4):
        root = str(tmp_path / f'seed{seed}')
        assert ('pretrain', 'pvg', seed, root) in calls
        for kind in ('det', 'seg'):
            assert (kind, 'pvg', seed, root, None) in calls
            assert (kind, 'pvg', seed, root, f'{seed} pvg pretrain') in calls
    assert len(calls) == 10
    assert [(r['seed'], r['init']) for r in result['rows']] == [
        (3, 'pre-trained'), (3, 'random'), (4, 'pre-trained'), (4, 'random')]
    pre, random, diff = result['summary']
    assert pre['mean']['top1'] == pytest.approx(53.5)
    assert pre['mean']['bbox_mAP'] == pytest.approx(0.45)
    assert diff['mean'] == pytest.approx(dict(bbox_mAP=0.1, segm_mAP=0.0, mIoU=10.0))
    assert diff['sd']['mIoU'] == pytest.approx(0.0)
    text = (tmp_path / 'results.md').read_text()
    assert text.startswith('Mean and sample standard deviation over 2 seeds (3, 4):')
    assert '| PVG | pre-trained - random | 2 | - | +0.100 ± 0.000 |' in text
    assert '| PVG | random | 4 | - | 0.400 | 0.200 | 40.00 |' in text
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['seeds'] == [3, 4] and saved['summary'] == json.loads(json.dumps(
        result['summary']))
    # one seed: its runs straight in the work dir, no summary table
    calls.clear()
    mini_pipeline.run_pipeline(['pvg'], pretrain_iters=2, det_iters=2, seg_iters=2, jobs=1,
                               work_dir=str(tmp_path / 'one'), sweep_scales=[],
                               skip_baseline=True, seeds=[5])
    assert {call[3] for call in calls} == {str(tmp_path / 'one')}
    assert (tmp_path / 'one' / 'results.md').read_text().startswith('| method | backbone init |')


def test_schedule_follows_the_number_of_iterations():
    det = osp.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py')
    seg = osp.join(ROOT, 'configs/mini/upernet_vit-adapter-ti-abs_mini.py')
    cls = osp.join(ROOT, 'configs/mini/deit-ti-abs_mini.py')
    assert Config.fromfile(det).train_cfg.max_iters == 64
    cfg = scheduled(det, 128)  # warm-up 10 -> 20, cosine over all 128
    assert cfg.train_cfg.max_iters == 128 and cfg.train_cfg.val_interval == 128
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 20), (0, 128)]
    assert cfg.param_scheduler[1].T_max == 128
    assert Config.fromfile(seg).train_cfg.max_iters == 40
    cfg = scheduled(seg, 2)  # warm-up 20 of 40 -> 1 of 2, never empty
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 1), (1, 2)]
    cfg = scheduled(det, 2)
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 1), (0, 2)]
    max_iters = Config.fromfile(cls).train_cfg.max_iters
    cfg = scheduled(cls, 2 * max_iters)  # the warm-up is a tenth of the schedule
    assert cfg.default_hooks.checkpoint.interval == 2 * max_iters
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, round(0.2 * max_iters)),
                                                               (0, 2 * max_iters)]


LINE = ('2026/01/01 00:00:00 - mmengine - INFO - loaded /w/abs_pretrain/iter_2.pth into '
        'ViTAdapter (AbsolutePE): 152 tensors read; dropped (3): cls_token; norm.{{bias, weight}}; '
        'missing ({n}): {missing}; unexpected (0): none\n')


@pytest.mark.parametrize('missing, error', [
    ('interactions (12 kinds of tensors); level_embed; spm (9 kinds of tensors)', None),
    ('blocks.{*.gamma1, *.gamma2}; level_embed', None),
    ('none', None),
    ('blocks (24 kinds of tensors); level_embed', 'blocks'),
    ('blocks.{attn.qkv.bias}; interactions (12 kinds of tensors)', 'blocks'),
    ('level_embed; pos_embed.{norms.*.bias, norms.*.weight}', 'pos_embed'),
    ('patch_embed.{proj.weight}', 'patch_embed'),
])
def test_loader_line_check(tmp_path, missing, error):
    log = tmp_path / 'train.log'
    log.write_text('other line\n' + LINE.format(n=3, missing=missing))
    if error is None:
        read = mini_pipeline.loaded_weights(str(log), '/w/abs_pretrain/iter_2.pth')
        assert read == (152, missing)
    else:
        with pytest.raises(SystemExit, match=f'left ViT weights.*{error}'):
            mini_pipeline.loaded_weights(str(log), '/w/abs_pretrain/iter_2.pth')
    with pytest.raises(SystemExit, match='were not loaded'):
        mini_pipeline.loaded_weights(str(log), '/w/other/iter_2.pth')


def test_stages_run_after_what_they_need_and_at_most_jobs_at_a_time():
    lock = threading.Lock()
    state = dict(running=0, most=0, order=[])

    def stage(name, needs, done):
        with lock:
            assert set(needs) <= set(done), (name, needs, sorted(done))
            state['running'] += 1
            state['most'] = max(state['most'], state['running'])
            state['order'].append(name)
        with lock:
            state['running'] -= 1
        return name.upper()

    graph = {'a': (), 'b': ('a',), 'c': (), 'd': ('b', 'c'), 'e': ()}
    stages = {name: (needs, partial(stage, name, needs)) for name, needs in graph.items()}
    results = mini_pipeline.run_stages(stages, jobs=2)
    assert results == {name: name.upper() for name in graph}
    assert state['most'] <= 2 and sorted(state['order']) == sorted(graph)
    assert state['order'].index('d') > max(state['order'].index('b'), state['order'].index('c'))

    def fail(done):
        raise SystemExit('stage x failed')

    with pytest.raises(SystemExit, match='stage x failed'):
        mini_pipeline.run_stages({'x': ((), fail), 'y': (('x',), partial(stage, 'y', ('x',)))}, 1)


def test_main_job_runs_and_writes_the_table(tmp_path):
    """MPVG (the most PE parameters: table, chain norms, Last LN) at 2 iterations per stage."""
    work_dir = tmp_path / 'mini'
    proc = subprocess.run(
        [sys.executable, 'tools/run_mini.py', '--methods', 'mpvg', '--pretrain-iters', '2',
         '--det-iters', '2', '--seg-iters', '2', '--work-dir', str(work_dir), '--skip-baseline'],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((work_dir / 'results.json').read_text())
    assert (results['pretrain_iters'], results['det_iters'], results['seg_iters']) == (2, 2, 2)
    rows = results['rows']
    assert [(r['method'], r['init']) for r in rows] == [('MPVG', 'pre-trained'),
                                                        ('MPVG', 'random')]
    for row in rows:
        assert 0.0 <= row['bbox_mAP'] <= 1.0 and 0.0 <= row['segm_mAP'] <= 1.0
        assert 0.0 <= row['mIoU'] <= 100.0
        assert row['det_seconds'] > 0 and row['seg_seconds'] > 0
    pretrained, random = rows
    assert 0.0 <= pretrained['top1'] <= 100.0 and pretrained['top5'] is None
    assert pretrained['pretrain_seconds'] > 0 and random['top1'] is None
    checkpoint = str(work_dir / 'mpvg_pretrain' / 'iter_2.pth')
    assert pretrained['checkpoint'] == checkpoint
    table = (work_dir / 'results.md').read_text().splitlines()
    assert table[0].startswith('| method | backbone init | seed | top-1 (%) | box AP | mask AP | '
                               'mIoU |')
    assert table[2].startswith(f"| MPVG | pre-trained | 0 | {pretrained['top1']:.1f} | "
                               f"{pretrained['bbox_mAP']:.3f} | {pretrained['segm_mAP']:.3f} | "
                               f"{pretrained['mIoU']:.2f} | ")
    assert table[3].startswith(f"| MPVG | random | 0 | - | {random['bbox_mAP']:.3f} | ")
    # the pre-trained runs started from the classifier's checkpoint, the random ones did not
    for kind, name in (('det', 'mask-rcnn_vit-adapter-ti-mpvg_fpn_mini.py'),
                       ('seg', 'upernet_vit-adapter-ti-mpvg_mini.py')):
        dumped = Config.fromfile(str(work_dir / f'mpvg_{kind}_pretrained' / name))
        assert dumped.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=checkpoint)
        random_cfg = Config.fromfile(str(work_dir / f'mpvg_{kind}' / name))
        assert 'init_cfg' not in random_cfg.model.backbone
        log = (work_dir / f'mpvg_{kind}_pretrained' / 'train.log').read_text()
        assert f'loaded {checkpoint} into ViTAdapter (MPVG)' in log
    # the scheduler of the run was cut to the 2 iterations it trained for
    dumped = Config.fromfile(str(work_dir / 'mpvg_det' /
                                 'mask-rcnn_vit-adapter-ti-mpvg_fpn_mini.py'))
    assert dumped.param_scheduler[1].end == 2 and dumped.param_scheduler[1].T_max == 2
    assert '[mini] MPVG det (pre-trained) [seed 0]: box AP' in proc.stdout
    # the pre-trained segmentor evaluated at 0.5x, 1x and 2x of the test resolution; its 1x row
    # is the end-of-training evaluation of the same checkpoint
    sweep = pretrained['sweep']
    assert [(r['scale'], r['resize']) for r in sweep] == [(0.5, [64, 64]), (1.0, [128, 128]),
                                                          (2.0, [256, 256])]
    assert abs(sweep[1]['metrics']['mIoU'] - pretrained['mIoU']) <= 1e-6
    assert pretrained['sweep_seconds'] > 0 and 'sweep' not in random
    line = (f"| MPVG | pre-trained | 0 | {sweep[0]['metrics']['mIoU']:.2f} | "
            f"{sweep[1]['metrics']['mIoU']:.2f} | {sweep[2]['metrics']['mIoU']:.2f} | ")
    title = '| method | backbone init | seed | mIoU at 0.5x | mIoU at 1x | mIoU at 2x | time |'
    for text in (proc.stdout, (work_dir / 'results.md').read_text()):
        assert 'UperNet (pre-trained) at other test resolutions' in text
        following = text.split(title, 1)[1].splitlines()
        assert following[2].startswith(line), following[:3]
    sweep_dir = work_dir / 'mpvg_seg_pretrained' / 'sweep'
    assert (sweep_dir / 'sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    swept = json.loads((sweep_dir / 'sweep.json').read_text())
    assert swept['rows'] == sweep
    # of the checkpoint that the pre-trained UperNet run saved (its mIoU may be 0 at 2 iterations)
    assert swept['checkpoint'] == str(work_dir / 'mpvg_seg_pretrained' / 'iter_2.pth')
    assert swept['config'] == 'configs/mini/upernet_vit-adapter-ti-mpvg_mini.py'
    assert proc.stdout.count('every ViT and PE weight loaded') == 2
    # library deprecation warnings are filtered out of what the job prints
    assert 'Warning' not in proc.stdout + proc.stderr
