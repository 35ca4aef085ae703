"""Pictures of what a trained detector or segmenter predicts, beside the ground truth.

The model runs through mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer`` (the config's test
pipeline, on the CPU by default) and the pictures come from the inferencer's own visualiser
(``DetLocalVisualizer`` / ``SegLocalVisualizer``). Without images of one's own, the first N images
of the config's validation dataset are used and their ground truth (the dataset's own annotation
loading through its test pipeline: ``gt_instances`` for det, ``gt_sem_seg`` for seg) is drawn on
the left of each row, the prediction on the right; with images of one's own, only the predictions
are drawn. The rows are stacked top to bottom. :func:`predict_and_draw` does it all;
``tools/infer_demo.py`` is its command line.

The model always sees the images at the resolution it was evaluated on. ``scale`` only resizes
the image and the drawn results that are handed to the visualiser (boxes multiplied, masks and
label maps resized nearest-neighbour), so that its labels, whose size follows the image size, can
be read on the small mini images.
"""
import os
import os.path as osp
import tempfile
from typing import Any, List, Optional, Sequence, Tuple

import cv2
import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

import pe_dense  # noqa: F401  (registers modules, safe checkpoint loading)

TASKS = {'det': 'mmdet', 'seg': 'mmseg'}


class InputError(ValueError):
    """A task, config, image count or option that :func:`predict_and_draw` cannot work with."""


def load_config(task: str, config: str, cfg_options: Optional[dict] = None) -> Config:
    """Reads CONFIG (with overrides) and checks that it is a config of the task: its
    ``default_scope`` must be mmdet for det and mmseg for seg, so that a segmentation config
    given to ``det`` fails here with a message, not deep inside an inferencer."""
    if task not in TASKS:
        raise InputError(f'task must be one of {sorted(TASKS)}, got {task!r}')
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config} does not exist')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope != TASKS[task]:
        other = [t for t, s in TASKS.items() if s == scope]
        hint = f' (use "{other[0]}")' if other else ''
        raise InputError(f'{config} is not a {task} config: its default_scope is {scope!r}, '
                         f'{task} needs {TASKS[task]!r}{hint}')
    return cfg


def build_inferencer(task: str, cfg: Config, checkpoint: str, device: str = 'cpu') -> Any:
    """mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer`` for the config and checkpoint."""
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    if task == 'det':
        from mmdet.apis import DetInferencer
        return DetInferencer(model=cfg, weights=checkpoint, device=device, show_progress=False)
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=device)
    inferencer.show_progress = False  # no progress bar (DetInferencer's show_progress=False)
    return inferencer


def validation_samples(task: str, cfg: Config, num: int) -> list:
    """The first ``num`` items of the config's validation dataset, each its packed data sample
    (``img_path`` and the ground truth the dataset's test pipeline loads)."""
    init_default_scope(TASKS[task])
    if task == 'det':
        from mmdet.registry import DATASETS
    else:
        from mmseg.registry import DATASETS
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    if num < 1 or num > len(dataset):
        raise InputError(f'--images must be between 1 and {len(dataset)} (the size of the '
                         f'validation dataset), got {num}')
    return [dataset[i]['data_samples'] for i in range(num)]


def predict(task: str, inferencer: Any, paths: Sequence[str]) -> list:
    """The inferencer's data samples (``pred_instances`` / ``pred_sem_seg``), one per path."""
    result = inferencer(list(paths), batch_size=len(paths), return_datasamples=True)
    if task == 'det':
        return list(result['predictions'])
    # MMSegInferencer returns the data sample itself (not a list) for a single image.
    return list(result) if isinstance(result, (list, tuple)) else [result]


def _resize_nearest(t: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, H, W) masks or label maps, each pixel repeated scale x scale times."""
    dtype = t.dtype
    out = F.interpolate(t[None].float(), scale_factor=scale, mode='nearest')[0]
    return out.to(dtype)


def scale_for_display(task: str, sample: Any, scale: int) -> Any:
    """A copy of the sample whose drawn fields fit an image ``scale`` times larger: boxes
    multiplied, masks and label maps resized nearest-neighbour (the predictions themselves are
    unchanged, only where they are drawn)."""
    if scale == 1:
        return sample
    sample = sample.clone()
    if task == 'det':
        for key in ('gt_instances', 'pred_instances'):
            if key not in sample:
                continue
            inst = sample.get(key).clone()
            if 'bboxes' in inst:
                inst.bboxes = inst.bboxes * scale
            if 'masks' in inst:
                masks = inst.masks
                # BitmapMasks (ground truth) rescale nearest-neighbour; predictions are tensors.
                inst.masks = masks.rescale(scale) if hasattr(masks, 'rescale') \
                    else _resize_nearest(masks, scale)
            setattr(sample, key, inst)
    else:
        for key in ('gt_sem_seg', 'pred_sem_seg'):
            if key in sample:
                field = sample.get(key)
                setattr(sample, key, PixelData(data=_resize_nearest(field.data, scale),
                                               metainfo=field.metainfo))
    return sample


def draw(task: str, inferencer: Any, samples: Sequence, images: Sequence[np.ndarray],
         score_thr: float = 0.5, scale: int = 1) -> List[np.ndarray]:
    """One RGB picture per sample from the inferencer's visualiser: ground truth | prediction
    when the sample has ground truth, the prediction alone otherwise."""
    vis = inferencer.visualizer
    kwargs = dict(pred_score_thr=score_thr) if task == 'det' else dict(with_labels=True)
    pictures = []
    # Both visualisers write their joined picture to out_file (SegLocalVisualizer keeps only its
    # last panel as the current image, so get_image() would lose the ground truth).
    with tempfile.TemporaryDirectory() as tmp:
        for i, (sample, image) in enumerate(zip(samples, images)):
            if scale != 1:
                image = mmcv.imrescale(image, scale, interpolation='nearest')
            out_file = osp.join(tmp, f'{i}.png')
            vis.add_datasample(f'image_{i}', image, scale_for_display(task, sample, scale),
                               draw_gt=True, draw_pred=True, show=False, out_file=out_file,
                               **kwargs)
            pictures.append(mmcv.imread(out_file, channel_order='rgb'))
    return pictures


def stack(pictures: Sequence[np.ndarray]) -> np.ndarray:
    """The pictures one below the other (right-padded with white to the widest one)."""
    width = max(p.shape[1] for p in pictures)
    rows = [mmcv.impad(p, shape=(p.shape[0], width), pad_val=255) for p in pictures]
    return np.concatenate(rows, axis=0)


def set_class_names(inferencer: Any, names: Sequence[str]) -> None:
    """Replaces the first len(names) class names the visualiser writes (the palette is kept), e.g.
    ADE20K's 'wall', 'building', ... for the mini data's background, circle, ..."""
    meta = dict(inferencer.visualizer.dataset_meta)
    classes = list(meta['classes'])
    if len(names) > len(classes):
        raise InputError(f'{len(names)} class names given, the model has {len(classes)} classes')
    classes[:len(names)] = names
    meta['classes'] = tuple(classes)
    inferencer.visualizer.dataset_meta = meta


def predict_and_draw(task: str, config: str, checkpoint: str, out: str, num_images: int = 4,
                     img: Optional[Sequence[str]] = None, score_thr: float = 0.5, scale: int = 1,
                     classes: Optional[Sequence[str]] = None, device: str = 'cpu',
                     cfg_options: Optional[dict] = None) -> Tuple[np.ndarray, list, List[str]]:
    """Predicts, draws and writes ``out`` (a PNG, its folder made if needed).

    Args:
        task: 'det' (an mmdet config) or 'seg' (an mmseg config).
        config, checkpoint: the model's config file and a whole-model checkpoint file.
        num_images: without ``img``, the first N images of the validation dataset, each drawn
            with its ground truth.
        img: one's own image files instead (predictions only).
        score_thr: det: draw and count predictions above this score.
        scale: integer factor of the drawing (not of the model's input).
        classes: names drawn for the first classes instead of the checkpoint's.
        device: e.g. 'cpu', 'cuda:0'.
        cfg_options: overrides merged into the config.

    Returns:
        The stacked (H, W, 3) uint8 RGB picture, the inferencer's data samples (with the ground
        truth attached when it was drawn), and the lines that report what was written and
        predicted (a first line on the file, then one per image).

    Raises:
        InputError: an unknown task, a config of the other task, an image count outside the
            validation dataset, ``scale`` < 1, more class names than classes.
        FileNotFoundError: a missing config, checkpoint or image.
    """
    if scale < 1:
        raise InputError(f'--scale must be a positive integer, got {scale}')
    cfg = load_config(task, config, cfg_options)
    for path in img or ():
        if not osp.isfile(path):
            raise FileNotFoundError(f'image {path} does not exist')
    if not osp.isfile(checkpoint):  # before the dataset is read: say what is missing first
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    gts = None if img else validation_samples(task, cfg, num_images)
    inferencer = build_inferencer(task, cfg, checkpoint, device)
    if task == 'seg':
        # MMSegInferencer sets the checkpoint's classes only when it draws itself.
        inferencer.visualizer.set_dataset_meta(**inferencer.model.dataset_meta)
    if classes:
        set_class_names(inferencer, classes)

    paths = list(img) if img else [gt.img_path for gt in gts]
    preds = predict(task, inferencer, paths)
    for pred, gt in zip(preds, gts or ()):
        if task == 'det':
            gt_instances = gt.gt_instances.clone()
            # The dataset packs HorizontalBoxes; DetLocalVisualizer draws (N, 4) tensors.
            gt_instances.bboxes = gt_instances.bboxes.tensor
            pred.gt_instances = gt_instances
        else:
            pred.gt_sem_seg = gt.gt_sem_seg
    images = [mmcv.imread(p, channel_order='rgb') for p in paths]
    picture = stack(draw(task, inferencer, preds, images, score_thr, scale))

    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    # Lossless; the strongest PNG compression keeps the pictures in docs/ small.
    mmcv.imwrite(mmcv.rgb2bgr(picture), out, params=[cv2.IMWRITE_PNG_COMPRESSION, 9])
    what = 'ground truth | prediction' if gts else 'prediction'
    lines = [f'wrote {out}: {picture.shape[1]} x {picture.shape[0]} pixels (W x H), '
             f'{len(paths)} image(s), {what} per row']
    for path, pred in zip(paths, preds):
        if task == 'det':
            kept = int((pred.pred_instances.scores > score_thr).sum())
            lines.append(f'  {osp.basename(path)}: {kept} prediction(s) with score > {score_thr}')
        else:
            names = inferencer.visualizer.dataset_meta['classes']
            labels = ', '.join(f'{i} {names[i]}'
                               for i in torch.unique(pred.pred_sem_seg.data).tolist())
            lines.append(f'  {osp.basename(path)}: predicted labels {labels}')
    return picture, preds, lines
