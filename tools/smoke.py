"""Smoke job: builds Mask R-CNN (mmdet) and UperNet (mmseg) on ViT-Adapter-Ti from the project's
configs, once per position encoding, and runs each on a CPU image.

    python tools/smoke.py [--size 256 320] [--methods AbsolutePE PVG]

Prints, per method, the backbone's parameter count, the forward time and what came out (number of
detections and the mask shape; the segmentation map's shape and classes). Weights are random:
this proves the stack and the wiring, not accuracy.
"""
import argparse
import os
import time
import warnings

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('AbsolutePE', 'NoPE', 'PEG', 'LaPE', 'PVG', 'MPVG')
DET_CFG = os.path.join(ROOT, 'configs/_base_/models/mask-rcnn_vit-adapter-ti_fpn.py')
SEG_CFG = os.path.join(ROOT, 'configs/_base_/models/upernet_vit-adapter-ti.py')


def test_image(h, w, seed=0):
    """A uint8 RGB image with a few filled shapes on a gradient, (3, h, w)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 96)]).astype(np.uint8)
    for _ in range(4):
        cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), rng.integers(8, 20)
        img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)[:, None]
    return torch.from_numpy(img)


def build(cfg_path, method, scope):
    cfg = Config.fromfile(cfg_path)
    cfg.model.backbone.pos_embed = dict(type=method)
    init_default_scope(scope)
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def run_detector(method, img):
    from mmdet.structures import DetDataSample
    model = build(DET_CFG, method, 'mmdet')
    h, w = img.shape[1:]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
    start = time.perf_counter()
    with torch.no_grad():
        result = model(**data, mode='predict')[0]
    elapsed = time.perf_counter() - start
    inst = result.pred_instances
    return model, elapsed, f'{len(inst)} detections, masks {tuple(inst.masks.shape)}'


def run_segmentor(method, img):
    from mmseg.structures import SegDataSample
    model = build(SEG_CFG, method, 'mmseg')
    h, w = img.shape[1:]
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
    start = time.perf_counter()
    with torch.no_grad():
        result = model(**data, mode='predict')[0]
    elapsed = time.perf_counter() - start
    seg = result.pred_sem_seg.data
    return model, elapsed, f'map {tuple(seg.shape)}, {seg.unique().numel()} classes present'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=int, nargs=2, default=(256, 320), metavar=('H', 'W'))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    MMLogger.get_instance('mmengine', log_level='WARNING')  # no per-tensor init report
    for message in ('pkg_resources is deprecated', '.*build_loss.. would be deprecated',
                    'Default ..avg_non_ignore'):
        warnings.filterwarnings('ignore', message=message)
    torch.manual_seed(0)
    img = test_image(*args.size)
    print(f'CPU image {tuple(img.shape)}, torch threads {torch.get_num_threads()}')
    for method in args.methods:
        for task, fn in (('Mask R-CNN', run_detector), ('UperNet', run_segmentor)):
            model, elapsed, what = fn(method, img)
            n = sum(p.numel() for p in model.backbone.parameters())
            print(f'{method:<10} {task:<10} backbone {n / 1e6:.3f}M params  '
                  f'forward {elapsed:.2f}s  {what}', flush=True)


if __name__ == '__main__':
    main()
