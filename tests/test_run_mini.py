"""The main job's script (tools/run_mini.py) end to end at a few iterations: data, untrained
baseline, training and evaluation through the project's tools, the results table and JSON."""
import json
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import run_mini  # noqa: E402


def scheduled(config, iters):
    cfg = Config.fromfile(config)
    for option in run_mini.schedule_options(config, iters):
        key, value = option.split('=')
        cfg.merge_from_dict({key: int(value)})
    return cfg


def test_schedule_follows_the_number_of_iterations():
    det = osp.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py')
    seg = osp.join(ROOT, 'configs/mini/upernet_vit-adapter-ti-abs_mini.py')
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


def test_main_job_runs_and_writes_the_table(tmp_path):
    work_dir = tmp_path / 'mini'
    proc = subprocess.run(
        [sys.executable, 'tools/run_mini.py', '--methods', 'abs', '--det-iters', '2',
         '--seg-iters', '2', '--work-dir', str(work_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((work_dir / 'results.json').read_text())
    assert (results['det_iters'], results['seg_iters']) == (2, 2)
    names = [r['method'] for r in results['rows']]
    assert names == ['untrained (AbsolutePE)', 'AbsolutePE']
    for row in results['rows']:
        assert 0.0 <= row['bbox_mAP'] <= 1.0 and 0.0 <= row['segm_mAP'] <= 1.0
        assert 0.0 <= row['mIoU'] <= 100.0
    trained = results['rows'][1]
    assert trained['det_seconds'] > 0 and trained['seg_seconds'] > 0
    table = (work_dir / 'results.md').read_text().splitlines()
    assert table[0].startswith('| method | box AP | mask AP | mIoU |')
    assert table[3].startswith(f"| AbsolutePE | {trained['bbox_mAP']:.3f} | ")
    # the scheduler of the run was cut to the 2 iterations it trained for
    dumped = Config.fromfile(str(work_dir / 'abs_det' / 'mask-rcnn_vit-adapter-ti-abs_fpn_mini.py'))
    assert dumped.param_scheduler[1].end == 2 and dumped.param_scheduler[1].T_max == 2
    assert '[mini] AbsolutePE: box AP' in proc.stdout
