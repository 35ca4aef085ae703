"""Predictions line up with the image at any size. The backbone's maps cover the image padded to a
multiple of 32, so the data preprocessors pad test images the same way: a 100x150 image's
prediction through the model's own test path (data preprocessor, whole or slide inference,
mmseg's/mmdet's post-processing) equals the prediction for that image padded by hand to 128x160
and cropped back. Every pe-dense detection and segmentation config pads its test images to 32."""
import glob
import os

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG_MINI = os.path.join(ROOT, 'configs/mini/upernet_vit-adapter-ti-abs_mini.py')
DET_MINI = os.path.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py')
H, W = 100, 150


def image(seed=0):
    """A 100x150 BGR image (as mmcv loads it) with structure at every scale."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    img = 127 + 60 * np.sin(xx[..., None] / 7.0 + np.arange(3)) * np.cos(yy[..., None] / 5.0)
    return np.clip(img + g.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def normalised_and_padded(img, preprocessor_cfg):
    """The image as the data preprocessor would hand it over, padded by hand to 128x160 with
    zeros (the preprocessors' pad value, applied after normalisation)."""
    mean = torch.tensor(preprocessor_cfg['mean']).view(3, 1, 1)
    std = torch.tensor(preprocessor_cfg['std']).view(3, 1, 1)
    x = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1).float()  # BGR -> RGB
    x = (x - mean) / std
    return torch.nn.functional.pad(x, (0, 160 - W, 0, 128 - H))[None]


# A narrower, shallower backbone and decoder keep the test fast; the alignment does not depend on
# the widths.
SMALL = dict(embed_dim=48, depth=4, num_heads=2, interaction_indexes=[[0, 0], [1, 1], [2, 2],
                                                                      [3, 3]])


def build(config, scope, test_cfg=None):
    cfg = Config.fromfile(config)
    cfg.model.backbone.update(SMALL, window_attn=False)
    if scope == 'mmseg':
        cfg.model.decode_head.update(in_channels=[48] * 4, channels=32)
        cfg.model.auxiliary_head.update(in_channels=48, channels=16)
    else:
        cfg.model.neck.in_channels = [48] * 4
    if test_cfg is not None:
        cfg.model.test_cfg = test_cfg
    init_default_scope(scope)
    from mmengine.registry import MODELS
    torch.manual_seed(0)
    return MODELS.build(cfg.model).eval(), cfg


@pytest.mark.parametrize('test_cfg', [dict(mode='whole'),
                                      dict(mode='slide', crop_size=(64, 64), stride=(48, 48))])
def test_segmentation_prediction_equals_the_padded_image_cropped_back(test_cfg):
    from mmseg.structures import SegDataSample
    model, cfg = build(SEG_MINI, 'mmseg', test_cfg)
    img = image()
    sample = SegDataSample(metainfo=dict(ori_shape=(H, W), img_shape=(H, W)))
    with torch.no_grad():
        got = model.test_step(dict(inputs=[torch.from_numpy(img).permute(2, 0, 1)],
                                   data_samples=[sample]))[0].seg_logits.data
        padded = normalised_and_padded(img, cfg.model.data_preprocessor)
        meta = dict(ori_shape=(128, 160), img_shape=(128, 160), pad_shape=(128, 160))
        want = model.inference(padded, [meta])[0, :, :H, :W]
    assert got.shape == want.shape == (150, H, W)
    scale = want.abs().max()
    assert (want[:, :, 1:] - want[:, :, :-1]).abs().max() > 0.01 * scale  # not flat
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)


def test_detection_prediction_equals_the_padded_image():
    from mmdet.structures import DetDataSample
    model, cfg = build(DET_MINI, 'mmdet')
    img = image(1)
    meta = dict(ori_shape=(H, W), img_shape=(H, W), scale_factor=(1.0, 1.0))
    with torch.no_grad():
        got = model.test_step(dict(inputs=[torch.from_numpy(img).permute(2, 0, 1)],
                                   data_samples=[DetDataSample(metainfo=meta)]))[0]
        padded = normalised_and_padded(img, cfg.model.data_preprocessor)
        sample = DetDataSample(metainfo=dict(meta, pad_shape=(128, 160),
                                             batch_input_shape=(128, 160)))
        want = model.predict(padded, [sample])[0]
    assert len(want.pred_instances) > 0
    torch.testing.assert_close(got.pred_instances.bboxes, want.pred_instances.bboxes,
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(got.pred_instances.scores, want.pred_instances.scores,
                               rtol=0, atol=1e-6)
    assert got.pred_instances.masks.shape[-2:] == (H, W)
    assert torch.equal(got.pred_instances.masks, want.pred_instances.masks)


DENSE_CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, 'configs/mask_rcnn/*.py'))
    + glob.glob(os.path.join(ROOT, 'configs/upernet/*.py'))
    + glob.glob(os.path.join(ROOT, 'configs/mini/mask-rcnn_*.py'))
    + glob.glob(os.path.join(ROOT, 'configs/mini/upernet_*.py')))


def test_every_dense_config_pads_test_images_to_32():
    # 7 methods x (Mask R-CNN 3x, 1x, UperNet 160k) + 8 mini methods x (Mask R-CNN, UperNet).
    assert len(DENSE_CONFIGS) == 7 * 3 + 8 * 2
    for path in DENSE_CONFIGS:
        pre = Config.fromfile(path).model.data_preprocessor
        if os.path.basename(path).startswith('upernet'):
            assert pre.type == 'SegDataPreProcessor'
            assert pre.test_cfg['size_divisor'] % 32 == 0, path
        else:
            assert pre.type == 'DetDataPreprocessor'
            assert pre.pad_size_divisor % 32 == 0, path
