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
    assert 0.0 <= pretrained['top1'] <= pretrained['top5'] <= 100.0
    assert pretrained['pretrain_seconds'] > 0 and random['top1'] is None
    checkpoint = str(work_dir / 'mpvg_pretrain' / 'iter_2.pth')
    assert pretrained['checkpoint'] == checkpoint
    table = (work_dir / 'results.md').read_text().splitlines()
    assert table[0].startswith('| method | backbone init | top-1 (%) | box AP | mask AP | mIoU |')
    assert table[2].startswith(f"| MPVG | pre-trained | {pretrained['top1']:.1f} | "
                               f"{pretrained['bbox_mAP']:.3f} | {pretrained['segm_mAP']:.3f} | "
                               f"{pretrained['mIoU']:.2f} | ")
    assert table[3].startswith(f"| MPVG | random | - | {random['bbox_mAP']:.3f} | ")
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
    assert '[mini] MPVG det (pre-trained): box AP' in proc.stdout
    # the pre-trained segmentor evaluated at 0.5x, 1x and 2x of the test resolution; its 1x row
    # is the end-of-training evaluation of the same checkpoint
    sweep = pretrained['sweep']
    assert [(r['scale'], r['resize']) for r in sweep] == [(0.5, [64, 64]), (1.0, [128, 128]),
                                                          (2.0, [256, 256])]
    assert abs(sweep[1]['metrics']['mIoU'] - pretrained['mIoU']) <= 1e-6
    assert pretrained['sweep_seconds'] > 0 and 'sweep' not in random
    line = (f"| MPVG | pre-trained | {sweep[0]['metrics']['mIoU']:.2f} | "
            f"{sweep[1]['metrics']['mIoU']:.2f} | {sweep[2]['metrics']['mIoU']:.2f} | ")
    title = '| method | backbone init | mIoU at 0.5x | mIoU at 1x | mIoU at 2x | time |'
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
