"""End to end on mini data, a few iterations each: mmdet's and mmseg's own tools with the project's
configs, the project's tools (single process and torchrun with 2 gloo processes), evaluation of a
saved checkpoint matching the evaluation at the end of training, and resume after a kill."""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys

import mmdet
import mmseg
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-mpvg_fpn_mini.py')
SEG = osp.join(ROOT, 'configs/mini/upernet_vit-adapter-ti-pvg_mini.py')
MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')
MMSEG_TOOLS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp('mini')
    subprocess.run([sys.executable, osp.join(ROOT, 'tools/make_mini_data.py'), '--out', str(out),
                    '--num-train', '8', '--num-val', '4', '--cls-train', '1', '--cls-val', '1'],
                   check=True, capture_output=True)
    return out


def det_options(data, iters):
    root = f'{data}/coco/'
    ann = f'{root}annotations/instances_val2017.json'
    return ['--cfg-options', f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}', f'test_dataloader.dataset.data_root={root}',
            f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
            f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={iters}', 'train_dataloader.batch_size=2']


def seg_options(data, iters, val=True, ckpt_interval=None):
    root = f'{data}/ade/ADEChallengeData2016'
    return ['--cfg-options', f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}', f'test_dataloader.dataset.data_root={root}',
            f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters if val else iters + 1}',
            f'default_hooks.checkpoint.interval={ckpt_interval or iters}',
            'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2']


def eval_options(options):
    """The data-root part of the options, for test scripts (no schedule keys)."""
    return [o for o in options
            if not o.startswith(('train_cfg', 'default_hooks', 'train_', 'param_scheduler'))]


def call(cmd, timeout=900):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def validation_metrics(work_dir, key):
    """The metrics logged by the evaluation at the end of training (mmengine's scalars.json)."""
    files = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    rows = [json.loads(line) for f in files for line in open(f)]
    vals = [r for r in rows if key in r]
    assert vals, f'{key} was not logged in {files}'
    return vals[-1]


# The end-of-training evaluation and the evaluations of the saved checkpoint by mmdet's and the
# project's test tools must agree, and the comparison must be of real numbers whatever the CPU. A
# few-iteration detector's COCO AP is 0 or close to it, and whether it is 0 depends on the CPU's
# float kernels (seen: box AP50 0.002 and 0.004 after 20 iterations with AVX-512 and with AVX2
# kernels, segm AP 0 on both; 0.0 everywhere on another CPU). So the predictions themselves are
# compared: with the test score threshold at 0 every image keeps its 50 top-scored boxes (the mini
# config's max_per_img), dumped by mmdet's DumpDetResults during training and by mmdet's
# tools/test.py --out, and the boxes, scores, labels and RLE masks must be equal. The COCO metrics
# must be equal too, whatever their value.
DET_ITERS = 4
AP_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'coco/segm_mAP',
           'coco/segm_mAP_50', 'coco/segm_mAP_75')
MAX_PER_IMG = 50


def det_on_train_options(data):
    root = f'{data}/coco/'
    return det_options(data, DET_ITERS) + [
        f'val_evaluator.ann_file={root}annotations/instances_train2017.json',
        f'test_evaluator.ann_file={root}annotations/instances_train2017.json',
        'val_dataloader.dataset.ann_file=annotations/instances_train2017.json',
        'test_dataloader.dataset.ann_file=annotations/instances_train2017.json',
        'val_dataloader.dataset.data_prefix.img=train2017/',
        'test_dataloader.dataset.data_prefix.img=train2017/',
        f'param_scheduler.1.T_max={DET_ITERS}', f'param_scheduler.1.end={DET_ITERS}',
        'model.test_cfg.rcnn.score_thr=0.0', f'model.test_cfg.rcnn.max_per_img={MAX_PER_IMG}']


def dumped_predictions(path):
    """mmdet's DumpDetResults file as {image path: (boxes, scores, labels, RLE masks)}."""
    import pickle
    with open(path, 'rb') as f:
        samples = pickle.load(f)
    return {s['img_path']: (s['pred_instances']['bboxes'], s['pred_instances']['scores'],
                            s['pred_instances']['labels'], s['pred_instances']['masks'])
            for s in samples}


def test_mmdet_own_tools_train_and_test(data, tmp_path):
    work = str(tmp_path / 'det')
    opts = det_on_train_options(data)
    at_train_pkl, tested_pkl = tmp_path / 'at_train.pkl', tmp_path / 'tested.pkl'
    config = tmp_path / 'det_dump.py'
    config.write_text(f"_base_ = [{DET!r}]\n"
                      f"val_evaluator = [{{{{_base_.val_evaluator}}}}, "
                      f"dict(type='DumpDetResults', out_file_path={str(at_train_pkl)!r})]\n")
    # val_evaluator is a list there: its COCO metric is entry 0.
    train_opts = [o.replace('val_evaluator.', 'val_evaluator.0.') for o in opts]
    call([sys.executable, osp.join(MMDET_TOOLS, 'train.py'), str(config), '--work-dir', work]
         + train_opts)
    ckpt = osp.join(work, f'iter_{DET_ITERS}.pth')
    assert osp.isfile(ckpt)
    at_train = validation_metrics(work, 'coco/bbox_mAP')
    out = call([sys.executable, osp.join(MMDET_TOOLS, 'test.py'), DET, ckpt, '--work-dir',
                str(tmp_path / 'det_test'), '--out', str(tested_pkl)] + eval_options(opts))
    assert f"coco/bbox_mAP: {at_train['coco/bbox_mAP']:.4f}" in out
    # The same predictions, box by box, from the weights evaluated at the end of training and
    # from the checkpoint: 8 images x 50 boxes.
    before, after = dumped_predictions(at_train_pkl), dumped_predictions(tested_pkl)
    assert sorted(before) == sorted(after) and len(before) == 8
    for img, (boxes, scores, labels, masks) in before.items():
        boxes2, scores2, labels2, masks2 = after[img]
        assert boxes.shape == boxes2.shape == (MAX_PER_IMG, 4), img
        assert torch.equal(labels, labels2), img
        assert torch.allclose(boxes, boxes2, rtol=1e-5, atol=1e-3), img
        assert torch.allclose(scores, scores2, rtol=1e-5, atol=1e-7), img
        assert [m['counts'] for m in masks] == [m['counts'] for m in masks2], img
        assert float(boxes[:, 2:].sub(boxes[:, :2]).min()) > 0  # real boxes, not placeholders
    # The project's test tool on the same checkpoint: the same metrics as the end of training.
    metrics_file = tmp_path / 'det_metrics.json'
    call([sys.executable, 'tools/test.py', DET, ckpt, '--work-dir', str(tmp_path / 'det_test2'),
          '--out', str(metrics_file)] + eval_options(opts))
    metrics = json.loads(metrics_file.read_text())
    for key in AP_KEYS:
        assert metrics[key] == pytest.approx(at_train[key], abs=1e-6), key


def test_project_tools_and_mmseg_own_test(data, tmp_path):
    work = str(tmp_path / 'seg')
    opts = seg_options(data, 2)
    call([sys.executable, 'tools/train.py', SEG, '--work-dir', work] + opts)
    ckpt = osp.join(work, 'iter_2.pth')
    at_train = validation_metrics(work, 'mIoU')
    metrics_file = tmp_path / 'seg_metrics.json'
    call([sys.executable, 'tools/test.py', SEG, ckpt, '--work-dir', str(tmp_path / 't1'),
          '--out', str(metrics_file)] + eval_options(opts))
    metrics = json.loads(metrics_file.read_text())
    assert metrics['mIoU'] == pytest.approx(at_train['mIoU'], abs=1e-6)
    assert metrics['aAcc'] == pytest.approx(at_train['aAcc'], abs=1e-6)
    out = call([sys.executable, osp.join(MMSEG_TOOLS, 'test.py'), SEG, ckpt, '--work-dir',
                str(tmp_path / 't2')] + eval_options(opts))
    assert f"mIoU: {at_train['mIoU']:.4f}" in out


def test_torchrun_two_gloo_processes(data, tmp_path):
    work = str(tmp_path / 'dist')
    opts = seg_options(data, 2, val=False)
    env = dict(os.environ, PORT='29517')
    proc = subprocess.run(['bash', 'tools/dist_train.sh', SEG, '2', '--work-dir', work] + opts,
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'world_size: 2' in proc.stdout + proc.stderr or 'Distributed launcher: pytorch' in (
        proc.stdout + proc.stderr)
    ckpt = osp.join(work, 'iter_2.pth')
    saved = torch.load(ckpt, map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == 2
    single, dist = tmp_path / 'single.json', tmp_path / 'dist.json'
    call([sys.executable, 'tools/test.py', SEG, ckpt, '--work-dir', str(tmp_path / 's'),
          '--out', str(single)] + eval_options(opts))
    proc = subprocess.run(['bash', 'tools/dist_test.sh', SEG, ckpt, '2', '--work-dir',
                           str(tmp_path / 'd'), '--out', str(dist)] + eval_options(opts),
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Two processes evaluate two halves of the validation set; the metric gathers them all.
    assert json.loads(dist.read_text())['mIoU'] == pytest.approx(
        json.loads(single.read_text())['mIoU'], abs=1e-6)


# Resume: the training process is killed by a hook of the test's own (tests/kill_hooks.py) at an
# iteration the test chooses, so nothing depends on timing. Stochastic layers are off in these runs
# (decode-head dropout; drop path is 0 in the mini config): mmengine checkpoints no RNG state, so
# dropout masks after a resume could not match an uninterrupted run's. Data order and augmentation
# do match: the sampler is seeded, and mmengine replays the skipped batches on resume.
RESUME_ITERS = 6
DETERMINISTIC = ['model.decode_head.dropout_ratio=0', 'model.auxiliary_head.dropout_ratio=0']


def resume_options(data):
    opts = seg_options(data, RESUME_ITERS, val=False, ckpt_interval=2)
    return opts + DETERMINISTIC


def killed_run(data, work, hook):
    """Trains with ``hook`` added (it kills the process); returns the process's exit code."""
    config = work.parent / f'{work.name}_config.py'
    config.write_text(f"_base_ = [{SEG!r}]\n"
                      "custom_imports = dict(imports=['pe_dense', 'kill_hooks'], "
                      "allow_failed_imports=False)\n"
                      f"custom_hooks = [{hook!r}]\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [osp.join(ROOT, 'tests'), os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable, 'tools/train.py', str(config), '--work-dir', str(work)]
                          + resume_options(data), cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=900)
    return proc.returncode


def weights(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


@pytest.fixture(scope='module')
def uninterrupted(data, tmp_path_factory):
    """The final checkpoint of a seeded run of RESUME_ITERS iterations that nobody interrupts."""
    work = tmp_path_factory.mktemp('uninterrupted')
    call([sys.executable, 'tools/train.py', SEG, '--work-dir', str(work)] + resume_options(data))
    return work / f'iter_{RESUME_ITERS}.pth'


def resume_and_check(data, work, resumed_from, uninterrupted):
    out = call([sys.executable, 'tools/train.py', SEG, '--work-dir', str(work), '--resume']
               + resume_options(data))
    assert f'resumed epoch: 0, iter: {resumed_from}' in out
    # The resumed run trains only the iterations after the checkpoint.
    assert f'Iter(train) [{resumed_from + 1}/{RESUME_ITERS}]' in out
    assert f'Iter(train) [{RESUME_ITERS}/{RESUME_ITERS}]' in out
    assert f'Iter(train) [{resumed_from}/{RESUME_ITERS}]' not in out
    final = torch.load(work / f'iter_{RESUME_ITERS}.pth', map_location='cpu', weights_only=False)
    assert final['meta']['iter'] == RESUME_ITERS
    # AdamW's step count: every iteration updated the weights exactly once.
    assert {int(s['step']) for s in final['optimizer']['state'].values()} == {RESUME_ITERS}
    # Nothing was lost: the weights equal those of the uninterrupted run.
    reference = weights(uninterrupted)
    assert final['state_dict'].keys() == reference.keys()
    worst = max((final['state_dict'][k].float() - v.float()).abs().max().item()
                for k, v in reference.items())
    assert worst <= 1e-6, worst


def test_resume_after_kill_equals_uninterrupted_run(data, tmp_path, uninterrupted):
    work = tmp_path / 'resume'
    rc = killed_run(data, work, dict(type='KillAfterCheckpoint', at_iter=4))
    assert rc == -signal.SIGKILL
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_2.pth', 'iter_4.pth']
    assert (work / 'last_checkpoint').read_text().endswith('iter_4.pth')
    resume_and_check(data, work, 4, uninterrupted)


def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(data, tmp_path,
                                                                       uninterrupted):
    work = tmp_path / 'resume_torn'
    rc = killed_run(data, work, dict(type='KillWhileSaving', at_iter=4))
    assert rc == -signal.SIGKILL
    torn = work / 'iter_4.pth'
    assert torn.stat().st_size < (work / 'iter_2.pth').stat().st_size
    with pytest.raises(Exception):
        torch.load(torn, map_location='cpu', weights_only=False)
    assert (work / 'last_checkpoint').read_text().endswith('iter_2.pth')
    resume_and_check(data, work, 2, uninterrupted)
