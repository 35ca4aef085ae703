"""Draws what a trained detector or segmenter predicts, beside the ground truth, into one PNG.

    python tools/infer_demo.py det CONFIG CHECKPOINT [--images N] [--out FILE.png]
        [--score-thr 0.5] [--scale 2] [--cfg-options KEY=VALUE ...]
    python tools/infer_demo.py seg CONFIG CHECKPOINT [--images N] [--out FILE.png]
        [--classes NAME ...] [--scale 2] [--cfg-options KEY=VALUE ...]
    python tools/infer_demo.py det|seg CONFIG CHECKPOINT --img A.jpg B.jpg ... [--out FILE.png]

Without ``--img``, the first N images of the config's validation dataset are drawn with their
ground truth on the left of each row and the prediction on the right; with ``--img``, only the
predictions. ``--scale`` enlarges the drawing, not the model's input. The work is done by
:mod:`pe_dense.inference` (mmdet's ``DetInferencer`` / mmseg's ``MMSegInferencer`` and their
visualisers).
"""
import argparse
import os.path as osp
import sys
import warnings
from typing import Optional, Sequence, Tuple

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from pe_dense.inference import TASKS, InputError, predict_and_draw  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('task', choices=sorted(TASKS), help='det (mmdet) or seg (mmseg)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', default='predictions.png', help='PNG to write')
    parser.add_argument('--images', type=int, default=4,
                        help='first N validation images, with ground truth (default: 4)')
    parser.add_argument('--img', nargs='+', help="one's own images (no ground truth is drawn)")
    parser.add_argument('--score-thr', type=float, default=0.5,
                        help='det: draw and count predictions above this score (default: 0.5)')
    parser.add_argument('--scale', type=int, default=1,
                        help='draw N times larger, for readable labels (default: 1)')
    parser.add_argument('--classes', nargs='+',
                        help='names drawn for the first classes instead of the checkpoint\'s')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0 (default: cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, KEY=VALUE')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, list]:
    """The command line; returns the picture and the data samples (see ``predict_and_draw``)."""
    args = parse_args(argv)
    try:
        picture, preds, lines = predict_and_draw(
            args.task, args.config, args.checkpoint, args.out, args.images, args.img,
            args.score_thr, args.scale, args.classes, args.device, args.cfg_options)
    except (InputError, FileNotFoundError) as e:
        raise SystemExit(f'error: {e}') from None
    print('\n'.join(lines))
    return picture, preds


if __name__ == '__main__':
    main()
