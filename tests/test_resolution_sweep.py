"""tools/resolution_sweep.py and pe_dense.sweep: the test pipeline's Resize at each factor, the
size of the images the backbone receives, parity of the 1.0 row with tools/test.py, the table /
CSV / JSON / PNG, and the errors. Mini data (4 validation images of 128 x 128) and randomly
initialised mini models."""
import copy
import csv
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import pe_dense  # noqa: F401
from pe_dense.models import ViTAdapter
from pe_dense.sweep import SweepError, check_scales, config_at, find_resize, resolution_sweep

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG = osp.join(ROOT, 'configs/mini/upernet_vit-adapter-ti-abs_mini.py')
DET = osp.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py')
CLS = osp.join(ROOT, 'configs/mini/deit-ti-abs_mini.py')
NUM_VAL = 4
SIZE = 128  # tools/make_mini_data.py's image side
# the subprocesses import this checkout's pe_dense
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp('mini')
    subprocess.run([sys.executable, osp.join(ROOT, 'tools/make_mini_data.py'), '--out', str(out),
                    '--num-train', '2', '--num-val', str(NUM_VAL), '--cls-train', '1',
                    '--cls-val', '1'], check=True, capture_output=True, env=ENV)
    return out


def seg_options(data):
    return {'test_dataloader.dataset.data_root': f'{data}/ade/ADEChallengeData2016'}


def det_options(data):
    root = f'{data}/coco/'
    return {'test_dataloader.dataset.data_root': root,
            'test_evaluator.ann_file': f'{root}annotations/instances_val2017.json'}


def random_checkpoint(config, path, seg_bias=False):
    """The freshly initialised model of ``config``. With ``seg_bias``, the decoder's classifier
    bias keeps only the 4 classes of the mini data in play (so that mIoU and aAcc are not 0 and
    the argmax among them follows the features)."""
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if seg_bias:
        with torch.no_grad():
            model.decode_head.conv_seg.bias[4:] = -100.0
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def seg_ckpt(tmp_path_factory):
    return random_checkpoint(SEG, tmp_path_factory.mktemp('ckpt') / 'seg.pth', seg_bias=True)


def spy_backbone(monkeypatch):
    """Records the (H, W) of every batch that reaches ViTAdapter.forward."""
    seen = []
    forward = ViTAdapter.forward

    def spy(self, x, *args, **kwargs):
        seen.append(tuple(x.shape[-2:]))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(ViTAdapter, 'forward', spy)
    return seen


def test_check_scales():
    assert check_scales([1, '0.5', 2.0]) == [1.0, 0.5, 2.0]
    for bad in ([0.5, float('inf')], [float('nan')], [0], [-1.0]):
        with pytest.raises(SweepError, match='must be finite and > 0'):
            check_scales(bad)
    with pytest.raises(SweepError, match='at least one'):
        check_scales([])
    with pytest.raises(SweepError, match='list of numbers'):
        check_scales('1.0')
    with pytest.raises(SweepError, match='must be numbers'):
        check_scales(['x'])


def test_pipeline_scale_is_the_configured_scale_times_the_factor(data):
    from mmengine.dataset import Compose  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    cfg = Config.fromfile(SEG)
    cfg.merge_from_dict(seg_options(data))
    init_default_scope('mmseg')
    configured = cfg.test_dataloader.dataset.pipeline[1]
    assert configured['type'] == 'Resize' and tuple(configured['scale']) == (128, 128)
    for factor, expected in ((0.5, (64, 64)), (0.75, (96, 96)), (1.0, (128, 128)),
                             (1.5, (192, 192)), (2.0, (256, 256))):
        scaled = config_at(cfg, factor)
        dataset = DATASETS.build(scaled.test_dataloader.dataset)
        resize = [t for t in dataset.pipeline.transforms if type(t).__name__ == 'Resize']
        assert len(resize) == 1 and resize[0].scale == expected, (factor, resize)
        assert resize[0].keep_ratio is True
        sample = dataset[0]['data_samples']
        assert sample.img_shape == expected[::-1] and sample.ori_shape == (SIZE, SIZE)
        # the ground truth is not resized
        assert tuple(sample.gt_sem_seg.data.shape[-2:]) == (SIZE, SIZE)
        if factor == 1.0:  # the configured Resize leaves the 128 x 128 images as they are
            import mmcv
            image = mmcv.imread(sample.img_path)
            assert torch.equal(dataset[0]['inputs'], torch.from_numpy(image).permute(2, 0, 1))
    # the configuration itself is left as it was
    assert tuple(cfg.test_dataloader.dataset.pipeline[1]['scale']) == (128, 128)
    # an mmdet Resize with a (w, h) scale of another aspect, and a scale_factor-only Resize
    step = config_at(Config(dict(test_dataloader=dict(dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'), dict(type='mmdet.Resize', scale=(1333, 800),
                                             keep_ratio=True)])))), 1.5)
    assert step.test_dataloader.dataset.pipeline[1] == dict(type='mmdet.Resize',
                                                            scale=(2000, 1200), keep_ratio=True)
    step = config_at(Config(dict(test_dataloader=dict(dataset=dict(pipeline=[
        dict(type='Resize', scale_factor=0.5)])))), 0.5)
    assert step.test_dataloader.dataset.pipeline[0]['scale_factor'] == 0.25


def test_segmentor_sees_the_scaled_images(data, seg_ckpt, tmp_path, monkeypatch):
    seen = spy_backbone(monkeypatch)
    factors = [0.5, 0.75, 2.0]
    result = resolution_sweep(SEG, seg_ckpt, factors, cfg_options=seg_options(data),
                              work_dir=str(tmp_path))
    # one batch of 4 per factor; 64, 96, 256 are multiples of the preprocessor's size_divisor 32
    assert seen == [(int(SIZE * f + 0.5),) * 2 for f in factors]
    assert result['task'] == 'seg'
    assert [(r['scale'], r['resize']) for r in result['rows']] == [
        (0.5, [64, 64]), (0.75, [96, 96]), (2.0, [256, 256])]
    for row in result['rows']:
        assert 0.0 <= row['metrics']['mIoU'] <= 100.0 and 0.0 < row['metrics']['aAcc'] <= 100.0


def test_detector_sees_the_scaled_images(data, tmp_path, monkeypatch):
    ckpt = random_checkpoint(DET, tmp_path / 'det.pth')
    seen = spy_backbone(monkeypatch)
    result = resolution_sweep(DET, ckpt, [0.5], cfg_options=det_options(data),
                              work_dir=str(tmp_path))
    # keep_ratio on square images: 64 pixels, a multiple of the pad divisor 32
    assert seen == [(64, 64)]
    assert result['task'] == 'det'
    for row in result['rows']:
        assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(row['metrics'])


def table_lines(stdout):
    """The sweep's table: the '|' lines after its title (mmseg prints per-class tables too)."""
    after = stdout.split('\nresolution sweep of ', 1)[1]
    return [line for line in after.splitlines() if line.startswith('|')]


def test_tool_table_files_and_parity_with_test_tool(data, seg_ckpt, tmp_path):
    opts = ['--cfg-options', f'test_dataloader.dataset.data_root={data}/ade/ADEChallengeData2016']
    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, 'tools/resolution_sweep.py', SEG, seg_ckpt, '--scales', '0.5', '1.0',
         '2.0', '--out', str(out), '--work-dir', str(tmp_path / 'wd'), *opts],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tested = tmp_path / 'test.json'
    proc2 = subprocess.run(
        [sys.executable, 'tools/test.py', SEG, seg_ckpt, '--work-dir', str(tmp_path / 'wt'),
         '--out', str(tested), *opts], cwd=ROOT, capture_output=True, text=True, env=ENV,
        timeout=600)
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-3000:]
    result = json.loads((out / 'sweep.json').read_text())
    reference = json.loads(tested.read_text())
    row = [r for r in result['rows'] if r['scale'] == 1.0]
    assert len(row) == 1 and set(row[0]['metrics']) == set(reference)
    for key, value in reference.items():
        assert abs(row[0]['metrics'][key] - value) <= 1e-6, (key, row[0]['metrics'][key], value)
    assert reference['aAcc'] > 0  # a real comparison, not of zeros
    # printed table == CSV == JSON (formatted as printed)
    printed = [[c.strip() for c in line.strip('|').split('|')] for line in
               table_lines(proc.stdout)]
    assert printed[0] == ['scale', 'test resize', 'mIoU', 'aAcc'] and len(printed) == 2 + 3
    with open(out / 'sweep.csv', newline='') as f:
        assert list(csv.reader(f)) == [printed[0]] + printed[2:]
    expected = [[f"{r['scale']:g}", 'x'.join(map(str, r['resize'])),
                 f"{r['metrics']['mIoU']:.2f}", f"{r['metrics']['aAcc']:.2f}"]
                for r in result['rows']]
    assert printed[2:] == expected
    assert [r[:2] for r in expected] == [['0.5', '64x64'], ['1', '128x128'], ['2', '256x256']]
    png = (out / 'sweep.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    from PIL import Image
    with Image.open(out / 'sweep.png') as image:
        image.verify()
    with Image.open(out / 'sweep.png') as image:
        assert image.format == 'PNG' and min(image.size) > 100


def test_errors(data, seg_ckpt, tmp_path):
    opts = seg_options(data)
    for bad in ([0.5, 0.0], [-1.0], []):
        with pytest.raises(SweepError, match='factor'):
            resolution_sweep(SEG, seg_ckpt, bad, cfg_options=opts, work_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='checkpoint .*missing.pth does not exist'):
        resolution_sweep(SEG, str(tmp_path / 'missing.pth'), [1.0], cfg_options=opts)
    with pytest.raises(SweepError, match='neither an mmdet detector nor an mmseg segmentor'):
        resolution_sweep(CLS, seg_ckpt, [1.0])
    cfg = Config.fromfile(SEG)
    no_resize = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    del no_resize[find_resize(no_resize)]
    with pytest.raises(SweepError, match='no Resize step'):
        resolution_sweep(SEG, seg_ckpt, [1.0], work_dir=str(tmp_path),
                         cfg_options=dict(opts, **{'test_dataloader.dataset.pipeline': no_resize}))
    # the tool turns them into one-line errors
    proc = subprocess.run([sys.executable, 'tools/resolution_sweep.py', SEG, seg_ckpt,
                           '--scales', '1.0', '-0.5'], cwd=ROOT, capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode == 1 and (
        '[pe-dense] test-resolution factors must be finite and > 0' in proc.stderr)
    proc = subprocess.run([sys.executable, 'tools/resolution_sweep.py', SEG, 'nowhere.pth'],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 1 and 'checkpoint nowhere.pth does not exist' in proc.stderr
