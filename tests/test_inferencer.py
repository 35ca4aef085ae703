"""pe_dense.inference and tools/infer_demo.py: mmdet's DetInferencer and mmseg's MMSegInferencer on
mini data of non-square 64 x 96 images (the detector's test pipeline resizes them to 85 x 128, the
segmenter sees them as they are), with models of random weights saved as checkpoints: the size of
the stacked ground truth | prediction picture, the structure of the predictions, the ground truth
the dataset attaches, and clear errors for bad input."""
import json
import os.path as osp
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import infer_demo  # noqa: E402

from pe_dense.inference import scale_for_display  # noqa: E402

DET = osp.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py')
SEG = osp.join(ROOT, 'configs/mini/upernet_vit-adapter-ti-peg_mini.py')
H, W = 64, 96  # the images' height and width
NUM_VAL = 2


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp('mini')
    subprocess.run([sys.executable, osp.join(ROOT, 'tools/make_mini_data.py'), '--out', str(out),
                    '--num-train', '1', '--num-val', str(NUM_VAL), '--cls-train', '1',
                    '--cls-val', '1', '--size', str(H), str(W)],
                   check=True, capture_output=True)
    return out


def det_options(data):
    root = f'{data}/coco/'
    return {'val_dataloader.dataset.data_root': root, 'test_dataloader.dataset.data_root': root}


def seg_options(data):
    root = f'{data}/ade/ADEChallengeData2016'
    return {'val_dataloader.dataset.data_root': root, 'test_dataloader.dataset.data_root': root}


def random_checkpoint(config, path, dataset_meta):
    """The config's model with its initial (random) weights, saved as a checkpoint with the
    dataset's classes and palette in its meta, as mmengine's runner saves them."""
    cfg = Config.fromfile(config)
    scope = cfg.default_scope
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': dataset_meta}}, path)
    return str(path)


@pytest.fixture(scope='module')
def det_ckpt(tmp_path_factory):
    meta = Config.fromfile(DET).metainfo.to_dict()
    return random_checkpoint(DET, tmp_path_factory.mktemp('det') / 'random.pth', meta)


@pytest.fixture(scope='module')
def seg_ckpt(tmp_path_factory):
    from mmseg.datasets import ADE20KDataset
    meta = {k: list(v) for k, v in ADE20KDataset.METAINFO.items()}
    return random_checkpoint(SEG, tmp_path_factory.mktemp('seg') / 'random.pth', meta)


def cfg_args(options):
    return ['--cfg-options'] + [f'{k}={v}' for k, v in options.items()]


def test_det_picture_predictions_and_ground_truth(data, det_ckpt, tmp_path, capsys):
    out = tmp_path / 'det.png'
    scale = 2
    picture, preds = infer_demo.main(
        ['det', DET, det_ckpt, '--images', str(NUM_VAL), '--scale', str(scale),
         '--score-thr', '0.05', '--out', str(out)] + cfg_args(det_options(data)))
    # N rows of ground truth | prediction, each panel the image drawn `scale` times larger.
    assert picture.shape == (NUM_VAL * scale * H, 2 * scale * W, 3)
    written = mmcv.imread(str(out), channel_order='rgb')
    np.testing.assert_array_equal(written, picture)
    printed = capsys.readouterr().out
    assert f'{2 * scale * W} x {NUM_VAL * scale * H} pixels' in printed

    anns = json.load(open(f'{data}/coco/annotations/instances_val2017.json'))
    for i, pred in enumerate(preds):
        assert pred.ori_shape == (H, W)
        p = pred.pred_instances
        k = len(p)
        assert k > 0  # random heads still score some boxes above the test score_thr (0.05)
        assert p.bboxes.shape == (k, 4) and p.masks.shape == (k, H, W)
        assert p.masks.dtype == torch.bool
        # Predictions are in the original image's coordinates (rescaled back from 85 x 128).
        b = p.bboxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert ((p.labels >= 0) & (p.labels < 3)).all()
        assert ((p.scores > 0.05) & (p.scores <= 1)).all()
        kept = int((p.scores > 0.05).sum())
        assert f'{osp.basename(pred.img_path)}: {kept} prediction(s) with score > 0.05' in printed
        # The ground truth is the dataset's: the COCO boxes (x, y, w, h -> x1, y1, x2, y2).
        image_id = i + 1
        boxes = [a['bbox'] for a in anns['annotations'] if a['image_id'] == image_id]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes])
        gt = pred.gt_instances
        torch.testing.assert_close(gt.bboxes, expected.to(gt.bboxes.dtype))
        assert gt.masks.masks.shape == (len(boxes), H, W)


def test_seg_picture_predictions_and_ground_truth(data, seg_ckpt, tmp_path, capsys):
    out = tmp_path / 'seg.png'
    scale = 3
    picture, preds = infer_demo.main(
        ['seg', SEG, seg_ckpt, '--images', str(NUM_VAL), '--scale', str(scale), '--classes',
         'background', 'circle', 'square', 'triangle', '--out', str(out)]
        + cfg_args(seg_options(data)))
    assert picture.shape == (NUM_VAL * scale * H, 2 * scale * W, 3)
    np.testing.assert_array_equal(mmcv.imread(str(out), channel_order='rgb'), picture)
    assert f'{2 * scale * W} x {NUM_VAL * scale * H} pixels' in capsys.readouterr().out
    ann_dir = f'{data}/ade/ADEChallengeData2016/annotations/validation'
    for i, pred in enumerate(preds):
        seg = pred.pred_sem_seg.data
        assert seg.shape == (1, H, W)
        assert seg.min() >= 0 and seg.max() < 150  # ADE20K's 150 classes
        # Ground truth: the label map with reduce_zero_label (0 -> 255 ignore, k -> k - 1).
        raw = mmcv.imread(f'{ann_dir}/ADE_val_{i + 1:08d}.png', flag='unchanged').astype(np.int64)
        expected = np.where(raw == 0, 255, raw - 1)
        np.testing.assert_array_equal(pred.gt_sem_seg.data[0].numpy(), expected)


def test_own_images_draw_prediction_only(data, seg_ckpt, tmp_path):
    images = [f'{data}/ade/ADEChallengeData2016/images/validation/ADE_val_{i:08d}.jpg'
              for i in (1, 2, 1)]
    picture, preds = infer_demo.main(
        ['seg', SEG, seg_ckpt, '--img', *images, '--out', str(tmp_path / 'own.png')]
        + cfg_args(seg_options(data)))
    assert picture.shape == (3 * H, W, 3)  # no ground-truth panel, scale 1
    assert len(preds) == 3 and 'gt_sem_seg' not in preds[0]
    torch.testing.assert_close(preds[0].pred_sem_seg.data, preds[2].pred_sem_seg.data)


@pytest.mark.parametrize('argv, message', [
    (['det', SEG, 'x.pth'], "is not a det config: its default_scope is 'mmseg'"),
    (['seg', DET, 'x.pth'], "is not a seg config: its default_scope is 'mmdet'"),
    (['det', DET, 'missing.pth'], 'checkpoint missing.pth does not exist'),
    (['det', 'configs/mini/nothing.py', 'x.pth'], 'config file configs/mini/nothing.py does'),
    (['seg', SEG, 'x.pth', '--img', 'no_such.jpg'], 'image no_such.jpg does not exist'),
    (['seg', SEG, 'x.pth', '--scale', '0'], '--scale must be a positive integer, got 0'),
])
def test_bad_input_is_a_clear_error(argv, message):
    with pytest.raises(SystemExit) as e:
        infer_demo.main(argv)
    assert message in str(e.value)


def test_too_many_images_names_the_dataset_size(data, det_ckpt):
    with pytest.raises(SystemExit, match=f'--images must be between 1 and {NUM_VAL}'):
        infer_demo.main(['det', DET, det_ckpt, '--images', '5'] + cfg_args(det_options(data)))


def test_display_scaling_moves_only_where_things_are_drawn():
    """--scale: boxes times s, masks and label maps each pixel repeated s x s; the sample the
    model returned is left as it was."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    masks = torch.rand((2, 5, 7), generator=g) > 0.5
    boxes = torch.tensor([[1.0, 2.0, 3.5, 4.0], [0.0, 0.0, 7.0, 5.0]])
    det = DetDataSample(metainfo=dict(img_shape=(5, 7)))
    det.gt_instances = InstanceData(bboxes=boxes.clone(), labels=torch.tensor([0, 2]),
                                    masks=BitmapMasks(masks.numpy().astype(np.uint8), 5, 7))
    det.pred_instances = InstanceData(bboxes=boxes.clone(), labels=torch.tensor([1, 0]),
                                      scores=torch.tensor([0.9, 0.4]), masks=masks.clone())
    shown = scale_for_display('det', det, 3)
    for key in ('gt_instances', 'pred_instances'):
        torch.testing.assert_close(shown.get(key).bboxes, boxes * 3)
        torch.testing.assert_close(det.get(key).bboxes, boxes)  # unchanged
    big = shown.pred_instances.masks
    assert big.shape == (2, 15, 21) and big.dtype == torch.bool
    torch.testing.assert_close(big, masks.repeat_interleave(3, 1).repeat_interleave(3, 2))
    np.testing.assert_array_equal(shown.gt_instances.masks.masks, big.numpy().astype(np.uint8))
    assert det.pred_instances.masks.shape == (2, 5, 7)

    labels = torch.randint(0, 150, (1, 5, 7), generator=g)
    seg = SegDataSample(pred_sem_seg=PixelData(data=labels.clone()),
                        gt_sem_seg=PixelData(data=labels.clone()))
    shown = scale_for_display('seg', seg, 2)
    expected = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(shown.pred_sem_seg.data, expected)
    torch.testing.assert_close(shown.gt_sem_seg.data, expected)
    torch.testing.assert_close(seg.pred_sem_seg.data, labels)
