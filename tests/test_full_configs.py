"""The published configs through tools/train.py on a CPU: two iterations each of the UperNet 160k
and the Mask R-CNN 3x configs as they are (real pipelines: multi-scale resize, crops of 512 and
1024, photometric distortion; the published optimizers and schedules), on mini data laid out as
the real ``data/`` folder; UperNet then validates on one image (sliding window), Mask R-CNN does
not validate. The only other changes: no pre-trained checkpoint (``model.backbone.init_cfg=None``:
the ImageNet files are not part of the test data), the mini data's class names for COCO, batch
size 1 (2 for UperNet), no data-loading worker processes, a log line per iteration, and
checkpoints without the optimizer state.

Also: the precision handling of tools/train.py (an fp16 config trains in fp32 without CUDA,
``--amp`` is refused there) and the ``--cfg-options`` that make mmseg's own tools/train.py train
the UperNet configs in fp32."""
import argparse
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from pe_dense.datasets import mini

ROOT = Path(__file__).resolve().parents[1]
UPERNET = ROOT / 'configs/upernet/upernet_vit-adapter-ti-abs_4xb2-160k_ade20k-512x512.py'
MASK_RCNN = ROOT / 'configs/mask_rcnn/mask-rcnn_vit-adapter-ti-abs_fpn_4xb2-ms-3x_coco.py'

# What mmseg's own tools/train.py needs to train the UperNet configs without CUDA
# (docs/configs.md, "Running").
MMSEG_FP32_OPTIONS = [
    'optim_wrapper._delete_=True', 'optim_wrapper.type=OptimWrapper',
    'optim_wrapper.optimizer.type=AdamW', 'optim_wrapper.optimizer.lr=12e-5',
    'optim_wrapper.optimizer.weight_decay=0.01',
    'optim_wrapper.constructor=ViTAdapterLayerDecayOptimizerConstructor',
    'optim_wrapper.paramwise_cfg.num_layers=12',
    'optim_wrapper.paramwise_cfg.layer_decay_rate=0.95',
]


def load_train_tool():
    spec = importlib.util.spec_from_file_location('pe_dense_train_tool', ROOT / 'tools/train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A folder holding ``data/coco/`` and ``data/ade/ADEChallengeData2016/`` as the configs
    expect them: 4 training images and 1 validation image of 128 x 128 each."""
    root = tmp_path_factory.mktemp('full')
    for make, name in ((mini.make_coco, 'coco'), (mini.make_ade, 'ade')):
        make(root / 'data' / name, num_train=4, num_val=1)
    return root


def common_options(loader_keys, batch_size):
    options = ['model.backbone.init_cfg=None', 'default_hooks.logger.interval=1',
               'default_hooks.checkpoint.save_optimizer=False', 'randomness.seed=0',
               f'train_dataloader.batch_size={batch_size}']
    for loader in loader_keys:
        options += [f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    return options


def train(config, workspace, work_dir, options):
    """Runs tools/train.py from ``workspace`` (so the configs' relative ``data/`` roots resolve
    there); returns its output."""
    cmd = [sys.executable, str(ROOT / 'tools/train.py'), str(config), '--work-dir', str(work_dir),
           '--cfg-options', *options]
    proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def logged(work_dir):
    """The rows mmengine's LocalVisBackend wrote (``scalars.json``): training rows, then the
    validation metrics."""
    files = list(Path(work_dir).glob('*/vis_data/scalars.json'))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def check_two_finite_iterations(work_dir, checkpoint, loss_keys):
    rows = logged(work_dir)
    train_rows = [r for r in rows if 'loss' in r]
    assert [r['iter'] for r in train_rows] == [1, 2]
    for row in train_rows:
        assert math.isfinite(row['loss']) and row['loss'] > 0, row
        for key in loss_keys:
            assert math.isfinite(row[key]) and row[key] >= 0, (key, row)
    saved = torch.load(Path(work_dir) / checkpoint, map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == 2
    return rows


def test_upernet_160k_config_two_iterations(workspace, tmp_path):
    work_dir = tmp_path / 'upernet'
    # Batch 2 as published per GPU: UperNet's 1 x 1 pooling branch has a BatchNorm, which needs
    # more than one value per channel in training.
    options = common_options(['train_dataloader', 'val_dataloader'], batch_size=2) + [
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2']
    out = train(UPERNET, workspace, work_dir, options)
    rows = check_two_finite_iterations(work_dir, 'iter_2.pth', ('decode.loss_ce', 'aux.loss_ce'))
    # The published warm-up: linear from 1e-6 x over 1500 iterations (mmengine's LinearLR
    # reaches the full rate after end - begin - 1 = 1499 steps).
    lr = [r['lr'] for r in rows if 'loss' in r]
    assert lr[1] / lr[0] == pytest.approx(1 + (1 - 1e-6) / (1e-6 * 1499), rel=1e-6)
    assert 0 <= [r for r in rows if 'mIoU' in r][-1]['mIoU'] <= 100
    if not torch.cuda.is_available():
        assert ('[pe-dense] no CUDA: AmpOptimWrapper (float16) replaced by OptimWrapper '
                '(float32)') in out


def test_mask_rcnn_3x_config_two_iterations(workspace, tmp_path):
    work_dir = tmp_path / 'mask_rcnn'
    # 2 of the 4 training images, one epoch of the 36: 2 iterations. The mini data's class names
    # (CocoDataset keeps only the annotations of its classes). No validation: the heads keep
    # COCO's 80 classes, which CocoMetric cannot map to the mini data's 3.
    classes = '(' + ','.join(mini.CLASSES) + ')'
    options = common_options(['train_dataloader'], batch_size=1) + [
        'train_dataloader.dataset.indices=2', 'train_cfg.max_epochs=1',
        f'train_dataloader.dataset.metainfo.classes={classes}',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']
    train(MASK_RCNN, workspace, work_dir, options)
    rows = check_two_finite_iterations(
        work_dir, 'epoch_1.pth', ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox',
                                  'loss_mask'))
    assert not any('coco/bbox_mAP' in r for r in rows)


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_precision_follows_the_device(device, monkeypatch, capsys):
    tool = load_train_tool()
    monkeypatch.setattr(tool, 'get_device', lambda: device)
    cfg = Config.fromfile(UPERNET)
    published = cfg.optim_wrapper.to_dict()
    tool.fit_precision(cfg, amp=False)
    line = capsys.readouterr().out
    if device == 'cpu':
        expected = dict(published, type='OptimWrapper')
        del expected['loss_scale']
        assert line.startswith('[pe-dense] no CUDA') and line.count('\n') == 1
    else:
        expected = published
        assert line == ''
    assert cfg.optim_wrapper.to_dict() == expected
    # A config already in fp32 is left as it is; --amp asks for fp16 with a dynamic loss scale.
    det = Config.fromfile(MASK_RCNN)
    fp32 = det.optim_wrapper.to_dict()
    tool.fit_precision(det, amp=False)
    assert det.optim_wrapper.to_dict() == fp32
    if device == 'cpu':
        with pytest.raises(SystemExit, match='--amp needs a GPU'):
            tool.fit_precision(det, amp=True)
    else:
        tool.fit_precision(det, amp=True)
        assert det.optim_wrapper.to_dict() == dict(fp32, type='AmpOptimWrapper',
                                                   loss_scale='dynamic')


def test_mmseg_fp32_options_give_the_same_optimizer():
    """The documented options for mmseg's own tools/train.py (which merges ``--cfg-options`` into
    the config as below): an OptimWrapper whose parameter groups (layer-wise lr decay, no-decay
    sets) equal those of the published config's optimizer."""
    from mmengine.config import DictAction
    from mmengine.optim import OptimWrapper, build_optim_wrapper
    from mmengine.registry import MODELS, DefaultScope

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(['--cfg-options', *MMSEG_FP32_OPTIONS]).cfg_options
    published, cli = Config.fromfile(UPERNET), Config.fromfile(UPERNET)
    cli.merge_from_dict(options)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(published.model)
    groups = []
    for wrapper_cfg in (load_train_tool().fp32_wrapper(published.optim_wrapper), cli.optim_wrapper):
        wrapper = build_optim_wrapper(model, wrapper_cfg)
        assert type(wrapper) is OptimWrapper
        groups.append([(g['lr'], g['weight_decay'], g['betas'], len(g['params']))
                       for g in wrapper.optimizer.param_groups])
    assert groups[1] == groups[0] and len(groups[0]) > 20
    assert len({lr for lr, *_ in groups[0]}) == 14  # 0.95^13 .. 0.95^0
