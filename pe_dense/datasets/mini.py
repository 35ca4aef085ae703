"""Three small synthetic datasets in the real COCO 2017, ADE20K and ImageNet on-disk layouts.

Every image shows a dark textured background (smooth noise mixed with stripes, in two muted random
colours) and bright, upright filled shapes: circles, squares and triangles, each in a colour drawn
on its own (any hue; :func:`random_colour`), so that in no dataset does colour tell the class: a
model has to tell the shapes apart by their outline. Why bright on dark and upright: see the
comment above ``SATURATION`` (and docs/mini_pipeline.md). In the COCO and ADE20K sets, 1-4
non-overlapping shapes per image. The ImageNet set is object-centric: one shape per image, its
class the shape, on an image half the side of a dense image (64 x 64 for 128 x 128), so that the
shape has the size of the dense sets' shapes in pixels and in 16-pixel patches (``DENSE_RADIUS``,
``OBJECT_RADIUS``): what the classifier learns to recognise is what the detector and the
segmenter have to find.
mmdet's ``CocoDataset``, mmseg's ``ADE20KDataset`` and mmpretrain's ``ImageNet`` read the output
unchanged.

``make_all('data/mini', seed=0, num_train=128, num_val=64, size=(128, 128), cls_train=256,
cls_val=64)`` (the command line ``python tools/make_mini_data.py --out data/mini``) writes::

    data/mini/coco/{train2017,val2017}/000000000001.jpg ...
    data/mini/coco/annotations/instances_{train,val}2017.json
    data/mini/ade/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_00000001.jpg
    data/mini/ade/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png
    data/mini/imagenet/train/<class>/<class>_00001.JPEG ...    (cls_train per class, 64 x 64)
    data/mini/imagenet/val/mini_val_00000001.JPEG ...           (cls_val per class)
    data/mini/imagenet/meta/val.txt                             ("mini_val_00000001.JPEG 2" lines)

The COCO files hold one polygon per shape (category ids 1 circle, 2 square, 3 triangle), its
``bbox`` [x, y, w, h] and its polygon ``area``. The ADE20K label maps are uint8 with 1 for the
background and 2, 3, 4 for circle, square, triangle; mmseg's ``reduce_zero_label`` turns them into
0 (background) .. 3. The ImageNet classes are the folder names (``IMAGENET_CLASSES``, sorted as
mmpretrain sorts the folders: label k is the k-th name); ``meta/val.txt`` gives each validation
image its label as in ILSVRC2012. Each dataset gets a ``meta.json`` recording the arguments; a
dataset whose ``meta.json`` matches them is left as it is unless ``force``. The same arguments
give byte-identical files.
"""
from __future__ import annotations

import colorsys
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import cv2
import numpy as np

CLASSES = ('circle', 'square', 'triangle')
# The ImageNet-layout classes are the shapes themselves (sorted, as mmpretrain sorts the folders).
IMAGENET_CLASSES = tuple(sorted(CLASSES))
VERTICES = (32, 4, 3)
# Circumradius of a shape, as a fraction of the shorter side of a COCO / ADE20K image (128 px by
# default: 11.5-25.6 px, 1.4-3.2 patches of 16 px across).
DENSE_RADIUS = (0.09, 0.2)
# The same, of an ImageNet-layout image, which is half the side of a dense image by default
# (tools/make_mini_data.py: 64 px): the shapes then have the dense shapes' size in pixels and in
# patches, one per image, and the classifier at 64 x 64 sees them at that scale.
OBJECT_RADIUS = (0.18, 0.4)
# Shapes are upright (no rotation): told apart by outline at 1.4-3.2 patches across, rotated
# squares and triangles took a ViT-Ti more than 1000 iterations of batch 32 to learn (top-1 41 %
# after 1000, 3 classes), upright ones 300 (87 %).
# Figure on ground: shapes are bright (HSV value 0.8-1), backgrounds dark (grey level 25-65 of
# 255), so a shape stands out from its background by brightness, a feature linear in the pixels
# that a patch embedding picks up in a few steps, whatever its hue. Hue (all of it) and saturation
# are drawn for every shape on its own: the outline, not the colour, tells the class.
SATURATION = (0.3, 0.8)
VALUE = (0.8, 1.0)
BACKGROUND_GREY = (25, 65)
ADE_BACKGROUND = 1
JPEG_QUALITY = 90
FORMAT_VERSION = 2
GRID = 16
MIN_SIDE = 32

_DATASETS = ('coco', 'ade', 'imagenet')
_SPLITS = ('train', 'val')
_COCO_DIRS = {'train': 'train2017', 'val': 'val2017'}
_ADE_DIRS = {'train': 'training', 'val': 'validation'}
_ADE_ROOT = 'ADEChallengeData2016'

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Shape:
    """One filled shape of a scene.

    ``label`` indexes ``CLASSES``. ``polygon`` is a float (N, 2) array of x, y vertices in COCO
    pixel coordinates (pixel row r, column c covers [c, c + 1) x [r, r + 1)), multiples of
    1 / ``GRID`` (exact in JSON). ``mask`` is the (H, W) bool array of the pixels whose centres
    the polygon covers: the pixels painted in the image.
    """

    label: int
    polygon: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Scene:
    """A rendered image, (H, W, 3) uint8 RGB, and its shapes in drawing order (disjoint masks)."""

    image: np.ndarray
    shapes: tuple


def scene_rng(seed: int, dataset: str, split: str, index: int,
              label: Optional[int] = None) -> np.random.Generator:
    """The random generator of image ``index`` (1-based) of ``split`` ('train' / 'val') of
    ``dataset`` ('coco' / 'ade' / 'imagenet'), within class ``label`` where the images are
    numbered per class (ImageNet training folders): every image has its own stream, so it does
    not depend on the number of images asked for."""
    key = [seed, _DATASETS.index(dataset), _SPLITS.index(split), index]
    return np.random.default_rng(key if label is None else key + [label])


def rasterise(polygon: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask, ``size`` being (H, W), of the pixels whose centres lie inside (or on)
    a convex polygon given as (N, 2) x, y vertices in COCO pixel coordinates."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    orientation = np.sign(np.sum(polygon[:, 0] * edges[:, 1] - polygon[:, 1] * edges[:, 0]))
    rows, cols = np.mgrid[0:size[0], 0:size[1]] + 0.5
    mask = np.ones(size, bool)
    for (x, y), (dx, dy) in zip(polygon, edges):
        mask &= orientation * (dx * (rows - y) - dy * (cols - x)) >= 0
    return mask


def polygon_area(polygon: np.ndarray) -> float:
    """The area of a simple polygon given as (N, 2) x, y vertices (shoelace formula)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (H, W, 3) float RGB texture: smooth noise and stripes blending two dark, muted colours
    (grey level ``BACKGROUND_GREY``, each channel within 15 of it)."""
    grey = rng.uniform(*BACKGROUND_GREY)
    colours = grey + 0.12 * (rng.uniform(0, 255, (2, 3)) - 127.5)
    cells = rng.integers(3, 7)
    noise = rng.random((cells, cells)).astype(np.float32)
    smooth = np.clip(cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(0.06, 0.25) * max(height, width)
    rows, cols = np.mgrid[0:height, 0:width]
    phase = 2 * np.pi * (cols * np.cos(theta) + rows * np.sin(theta)) / period
    stripes = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))
    mix = rng.uniform(0.2, 0.6)
    weight = ((1 - mix) * smooth + mix * stripes)[..., None]
    return colours[0] * (1 - weight) + colours[1] * weight


def _regular_polygon(centre: np.ndarray, radius: float, vertices: int) -> np.ndarray:
    """(vertices, 2) corners of an upright regular polygon (one corner straight up, in image
    coordinates: a triangle points up, a square has horizontal and vertical sides), rounded to
    1 / ``GRID``."""
    start = -np.pi / 2 + (np.pi / 4 if vertices == 4 else 0.0)
    angles = start + 2 * np.pi * np.arange(vertices) / vertices
    corners = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.round(corners * GRID) / GRID


def _place(rng: np.random.Generator, height: int, width: int) -> list:
    """Up to 4 (label, centre, circumradius) triples whose circumcircles lie inside the image,
    1 pixel from its border, and at least 3 pixels apart from each other; radii in
    ``DENSE_RADIUS`` of the shorter side (at least 4 pixels)."""
    side = min(height, width)
    r_min, r_max = max(4.0, DENSE_RADIUS[0] * side), DENSE_RADIUS[1] * side
    placed = []
    for _ in range(rng.integers(1, 5)):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(50):
            radius = rng.uniform(r_min, r_max)
            centre = rng.uniform(radius + 1, [width - radius - 1, height - radius - 1])
            if all(np.hypot(*(centre - c)) > radius + r + 3 for _, c, r in placed):
                placed.append((label, centre, radius))
                break
    return placed


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A shape's RGB colour (3 floats in 0..255): hue uniform over the colour wheel, saturation
    and value uniform in ``SATURATION`` and ``VALUE``. Drawn for every shape on its own, so that
    colour says nothing about the class in any of the three datasets."""
    hue = rng.uniform(0, 1)
    saturation, value = rng.uniform(*SATURATION), rng.uniform(*VALUE)
    return 255 * np.asarray(colorsys.hsv_to_rgb(hue, saturation, value))


def _paint(rng: np.random.Generator, image: np.ndarray, label: int, centre: np.ndarray,
           radius: float) -> Shape:
    """Paints shape ``label`` (circumradius ``radius``, ``centre`` x, y) into the (H, W, 3) float
    ``image`` in a random colour (:func:`random_colour`) with a soft linear shading."""
    size = image.shape[:2]
    rows, cols = np.mgrid[0:size[0], 0:size[1]] + 0.5
    polygon = _regular_polygon(centre, radius, VERTICES[label])
    mask = rasterise(polygon, size)
    colour = random_colour(rng)
    direction = rng.uniform(0, 2 * np.pi)
    offset = (cols - centre[0]) * np.cos(direction) + (rows - centre[1]) * np.sin(direction)
    shade = 1 + 0.12 * offset[mask] / radius
    image[mask] = colour * shade[:, None]
    return Shape(label, polygon, mask)


def _finish(rng: np.random.Generator, image: np.ndarray, shapes: list) -> Scene:
    """Adds mild pixel noise and rounds to uint8."""
    image = image + rng.normal(0, 3, image.shape)
    return Scene(np.clip(np.round(image), 0, 255).astype(np.uint8), tuple(shapes))


def make_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """Renders one scene of ``size`` (H, W): a background and 1-4 shapes of random classes, each
    in a random colour (:func:`random_colour`) with a soft linear shading, plus mild pixel
    noise."""
    height, width = size
    image = _background(rng, height, width)
    shapes = [_paint(rng, image, label, centre, radius)
              for label, centre, radius in _place(rng, height, width)]
    return _finish(rng, image, shapes)


def make_object(rng: np.random.Generator, size: tuple[int, int], label: int) -> Scene:
    """Renders one object-centric image of ``size`` (H, W) of ImageNet class ``label`` (an index
    into ``IMAGENET_CLASSES``, which are the shapes): a background and one shape of circumradius
    ``OBJECT_RADIUS`` of the shorter side, anywhere inside the image, in a random colour, plus
    mild pixel noise. The scene's one shape has the shape index (into ``CLASSES``) as its
    label."""
    height, width = size
    image = _background(rng, height, width)
    radius = rng.uniform(*OBJECT_RADIUS) * min(height, width)
    centre = rng.uniform(radius + 1, [width - radius - 1, height - radius - 1])
    shape = _paint(rng, image, CLASSES.index(IMAGENET_CLASSES[label]), centre, radius)
    return _finish(rng, image, [shape])


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f'could not write {path}')


def _check_args(num_train: int, num_val: int, size: tuple[int, int], seed: int) -> None:
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one image per split, got {num_train} / {num_val}')
    if min(size) < MIN_SIDE:
        raise ValueError(f'image sides must be at least {MIN_SIDE}, got {size}')
    if seed < 0:
        raise ValueError(f'the seed must be non-negative, got {seed}')


def _meta(dataset: str, seed: int, num_train: int, num_val: int,
          size: tuple[int, int]) -> dict:
    args = dict(seed=seed, num_train=num_train, num_val=num_val, size=list(size))
    return dict(format=FORMAT_VERSION, dataset=dataset, args=args)


def _recorded(out_dir: Path, meta: dict) -> Optional[dict]:
    """The summary in ``out_dir/meta.json`` if that file records the same arguments, else None."""
    try:
        old = json.loads((out_dir / 'meta.json').read_text())
    except (OSError, ValueError):
        return None
    same = all(old.get(key) == value for key, value in meta.items())
    return old.get('summary') if same else None


def _clear(out_dir: Path, outputs: list) -> None:
    """Removes ``meta.json`` first (so an interrupted run never looks complete), then the
    given outputs of an earlier run."""
    (out_dir / 'meta.json').unlink(missing_ok=True)
    for path in outputs:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _split_summary(images: int, counts: list) -> dict:
    per_class = {name: count for name, count in zip(CLASSES, counts)}
    return dict(images=images, instances=sum(counts), per_class=per_class)


def _coco_split(root: Path, split: str, seed: int, num_images: int,
                size: tuple[int, int]) -> dict:
    """Writes the images and the annotation file of one split; returns its summary."""
    image_dir = root / _COCO_DIRS[split]
    image_dir.mkdir(parents=True)
    height, width = size
    images, annotations, counts = [], [], [0] * len(CLASSES)
    for index in range(1, num_images + 1):
        scene = make_scene(scene_rng(seed, 'coco', split, index), size)
        file_name = f'{index:012d}.jpg'
        _write_jpeg(image_dir / file_name, scene.image)
        images.append(dict(id=index, file_name=file_name, height=height, width=width))
        for shape in scene.shapes:
            (x0, y0), (x1, y1) = shape.polygon.min(0), shape.polygon.max(0)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=index, category_id=shape.label + 1,
                segmentation=[shape.polygon.ravel().tolist()],
                area=round(polygon_area(shape.polygon), 4),
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)], iscrowd=0))
            counts[shape.label] += 1
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CLASSES)]
    content = dict(info=dict(description='pe_dense synthetic shapes', version=str(FORMAT_VERSION)),
                   licenses=[], images=images, annotations=annotations, categories=categories)
    ann_file = root / 'annotations' / f'instances_{_COCO_DIRS[split]}.json'
    ann_file.write_text(json.dumps(content, separators=(',', ':')))
    return _split_summary(num_images, counts)


def _ade_split(root: Path, split: str, seed: int, num_images: int,
               size: tuple[int, int]) -> dict:
    """Writes the images and label maps of one split; returns its summary."""
    image_dir = root / 'images' / _ADE_DIRS[split]
    label_dir = root / 'annotations' / _ADE_DIRS[split]
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    counts = [0] * len(CLASSES)
    for index in range(1, num_images + 1):
        scene = make_scene(scene_rng(seed, 'ade', split, index), size)
        stem = f'ADE_{split}_{index:08d}'
        _write_jpeg(image_dir / f'{stem}.jpg', scene.image)
        label_map = np.full(size, ADE_BACKGROUND, np.uint8)
        for shape in scene.shapes:
            label_map[shape.mask] = ADE_BACKGROUND + 1 + shape.label
            counts[shape.label] += 1
        if not cv2.imwrite(str(label_dir / f'{stem}.png'), label_map):
            raise OSError(f'could not write {label_dir / stem}.png')
    return _split_summary(num_images, counts)


def _imagenet_split(root: Path, split: str, seed: int, num_per_class: int,
                    size: tuple[int, int]) -> dict:
    """Writes one split of the ImageNet layout, ``num_per_class`` images of each class: training
    images in class folders, validation images in one folder with ``meta/val.txt``; returns its
    summary."""
    counts = [0] * len(IMAGENET_CLASSES)
    if split == 'train':
        for label, name in enumerate(IMAGENET_CLASSES):
            folder = root / 'train' / name
            folder.mkdir(parents=True)
            for index in range(1, num_per_class + 1):
                scene = make_object(scene_rng(seed, 'imagenet', split, index, label), size, label)
                _write_jpeg(folder / f'{name}_{index:05d}.JPEG', scene.image)
                counts[label] += 1
    else:
        folder = root / 'val'
        folder.mkdir(parents=True)
        lines = []
        # Validation images cycle through the classes: image i has label (i - 1) mod K.
        for index in range(1, num_per_class * len(IMAGENET_CLASSES) + 1):
            label = (index - 1) % len(IMAGENET_CLASSES)
            scene = make_object(scene_rng(seed, 'imagenet', split, index), size, label)
            file_name = f'mini_val_{index:08d}.JPEG'
            _write_jpeg(folder / file_name, scene.image)
            lines.append(f'{file_name} {label}\n')
            counts[label] += 1
        (root / 'meta' / 'val.txt').write_text(''.join(lines))
    per_class = dict(zip(IMAGENET_CLASSES, counts))
    return dict(images=sum(counts), instances=sum(counts), per_class=per_class)


def _make(dataset: str, out_dir: PathLike, seed: int, num_train: int, num_val: int,
          size: tuple[int, int], force: bool) -> dict:
    _check_args(num_train, num_val, size, seed)
    out_dir = Path(out_dir)
    meta = _meta(dataset, seed, num_train, num_val, size)
    recorded = None if force else _recorded(out_dir, meta)
    if recorded is not None:
        return dict(dataset=dataset, root=str(out_dir), skipped=True, splits=recorded)
    if dataset == 'coco':
        root, write, meta_dir = out_dir, _coco_split, 'annotations'
        outputs = [root / name for name in _COCO_DIRS.values()]
        outputs += [root / 'annotations' / f'instances_{name}.json' for name in _COCO_DIRS.values()]
    elif dataset == 'ade':
        root, write, meta_dir = out_dir / _ADE_ROOT, _ade_split, 'annotations'
        outputs = [root / kind / name for kind in ('images', 'annotations')
                   for name in _ADE_DIRS.values()]
    else:
        root, write, meta_dir = out_dir, _imagenet_split, 'meta'
        outputs = [root / name for name in ('train', 'val', 'meta')]
    _clear(out_dir, outputs)
    (root / meta_dir).mkdir(parents=True, exist_ok=True)
    splits = {split: write(root, split, seed, num, size)
              for split, num in (('train', num_train), ('val', num_val))}
    (out_dir / 'meta.json').write_text(json.dumps(dict(meta, summary=splits), indent=2) + '\n')
    return dict(dataset=dataset, root=str(out_dir), skipped=False, splits=splits)


def make_coco(out_dir: PathLike, seed: int = 0, num_train: int = 128, num_val: int = 64,
              size: tuple[int, int] = (128, 128), force: bool = False) -> dict:
    """Writes the COCO 2017 instance segmentation layout under ``out_dir`` (the ``data_root``):
    ``train2017/`` and ``val2017/`` with ``{image_id:012d}.jpg`` (image ids from 1) of ``size``
    (H, W), and ``annotations/instances_{train,val}2017.json``. Skipped when ``out_dir/meta.json``
    records the same arguments, unless ``force``.

    Returns ``{'dataset': 'coco', 'root': str, 'skipped': bool, 'splits': {'train': S, 'val': S}}``
    with S = ``{'images': int, 'instances': int, 'per_class': {class name: int}}``.
    """
    return _make('coco', out_dir, seed, num_train, num_val, tuple(size), force)


def make_ade(out_dir: PathLike, seed: int = 0, num_train: int = 128, num_val: int = 64,
             size: tuple[int, int] = (128, 128), force: bool = False) -> dict:
    """Writes the ADE20K layout under ``out_dir/ADEChallengeData2016`` (the ``data_root``):
    ``images/{training,validation}/ADE_{train,val}_{index:08d}.jpg`` of ``size`` (H, W) and
    ``annotations/...`` single-channel uint8 PNG label maps with the same stems (1 background,
    2 circle, 3 square, 4 triangle). Skipped when ``out_dir/meta.json`` records the same
    arguments, unless ``force``. Returns a summary shaped as ``make_coco``'s, with
    ``'dataset': 'ade'``."""
    return _make('ade', out_dir, seed, num_train, num_val, tuple(size), force)


def make_imagenet(out_dir: PathLike, seed: int = 0, num_train: int = 256, num_val: int = 64,
                  size: tuple[int, int] = (64, 64), force: bool = False) -> dict:
    """Writes the ImageNet (ILSVRC2012) layout that mmpretrain's ``ImageNet`` reads with
    ``data_root=out_dir`` and ``split='train'`` / ``'val'``: ``train/<class>/<class>_{i:05d}.JPEG``
    (``num_train`` per class, i from 1), ``val/mini_val_{i:08d}.JPEG`` (``num_val`` per class,
    label ``(i - 1) mod 3``) and ``meta/val.txt`` (``file label`` per line), images of ``size``
    (H, W), classes ``IMAGENET_CLASSES``. Skipped when ``out_dir/meta.json`` records the same
    arguments, unless ``force``. Returns a summary shaped as ``make_coco``'s, with
    ``'dataset': 'imagenet'``, the counts per class of ``IMAGENET_CLASSES`` and one instance per
    image."""
    return _make('imagenet', out_dir, seed, num_train, num_val, tuple(size), force)


def describe(summary: dict) -> str:
    """One line on a dataset: image and instance counts per split, where, and whether skipped."""
    parts = []
    for split, stats in summary['splits'].items():
        if summary['dataset'] == 'imagenet':
            counts = set(stats['per_class'].values())
            each = f'{counts.pop()} each' if len(counts) == 1 else 'unequal'
            parts.append(f"{split} {stats['images']} images in {len(stats['per_class'])} "
                         f'classes ({each})')
            continue
        per_class = ', '.join(f'{name} {count}' for name, count in stats['per_class'].items())
        parts.append(f"{split} {stats['images']} images / {stats['instances']} shapes "
                     f'({per_class})')
    state = 'up to date, kept' if summary['skipped'] else 'written'
    return f"{summary['dataset']}: {'; '.join(parts)} -> {summary['root']} [{state}]"


def make_all(out: PathLike, seed: int = 0, num_train: int = 128, num_val: int = 64,
             size: tuple[int, int] | int = (128, 128), cls_train: int = 256,
             cls_val: int = 64, force: bool = False,
             cls_size: tuple[int, int] | int | None = None) -> Iterator[tuple[dict, float]]:
    """Writes the three datasets under ``out``: ``coco/`` and ``ade/`` with ``num_train`` /
    ``num_val`` images of ``size`` (H, W; one int: square), ``imagenet/`` with ``cls_train`` /
    ``cls_val`` images per class of ``cls_size`` (default: half of ``size``, at least
    ``MIN_SIDE``, so that its shapes have the dense shapes' size in pixels). A generator: nothing
    is written until it is iterated (``list(make_all(...))`` writes all three). Yields, as each
    one is done, its summary (see :func:`make_coco`) and the seconds it took (wall clock), in the
    order COCO, ADE20K, ImageNet.

    Raises:
        ValueError: a split without images, a side under ``MIN_SIDE``, a negative seed or a
            size of another length.
    """
    out = Path(out)
    size = _pair(size, 'size')
    cls_size = (tuple(max(MIN_SIDE, side // 2) for side in size) if cls_size is None
                else _pair(cls_size, 'cls_size'))
    for name, make, train, val, side in (('coco', make_coco, num_train, num_val, size),
                                         ('ade', make_ade, num_train, num_val, size),
                                         ('imagenet', make_imagenet, cls_train, cls_val,
                                          cls_size)):
        start = time.perf_counter()
        summary = make(out / name, seed=seed, num_train=train, num_val=val, size=side,
                       force=force)
        yield summary, time.perf_counter() - start


def _pair(size: tuple[int, int] | int, name: str) -> tuple[int, int]:
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2:
        raise ValueError(f'{name} is (H, W) or one side for square images, got {size!r}')
    return size
