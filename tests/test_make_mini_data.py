"""pe_dense.datasets.mini and tools/make_mini_data.py: byte-identical reruns, COCO polygons / areas
/ boxes that match the drawn shapes, label maps that match them too, ImageNet-layout images that
show their class, and mmdet's CocoDataset, mmseg's ADE20KDataset and mmpretrain's ImageNet reading
the datasets as they are."""
import hashlib
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))

import make_mini_data as cli  # noqa: E402

from pe_dense.datasets import mini as mmd  # noqa: E402

SEED = 3
NUM_TRAIN, NUM_VAL = 6, 3
CLS_TRAIN, CLS_VAL = 3, 2  # ImageNet layout: images per class
SIZE = (80, 112)
CLASSES = ('circle', 'square', 'triangle')
IMAGENET_CLASSES = CLASSES
K = len(IMAGENET_CLASSES)


def _make_all(out: Path, seed: int = SEED) -> tuple:
    kwargs = dict(seed=seed, num_train=NUM_TRAIN, num_val=NUM_VAL, size=SIZE)
    return (mmd.make_coco(out / 'coco', **kwargs), mmd.make_ade(out / 'ade', **kwargs),
            mmd.make_imagenet(out / 'imagenet', seed=seed, num_train=CLS_TRAIN,
                              num_val=CLS_VAL, size=SIZE))


def _hashes(out: Path) -> dict:
    return {str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(out.rglob('*')) if path.is_file()}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """The three datasets of SEED, written once: (output folder, COCO summary, ADE summary,
    ImageNet summary)."""
    out = tmp_path_factory.mktemp('mini')
    return (out, *_make_all(out))


def _scene(dataset: str, split: str, index: int):
    return mmd.make_scene(mmd.scene_rng(SEED, dataset, split, index), SIZE)


def test_layout_and_summaries(data):
    out, coco, ade, imagenet = data
    assert not coco['skipped'] and not ade['skipped'] and not imagenet['skipped']
    for split, num in (('train2017', NUM_TRAIN), ('val2017', NUM_VAL)):
        assert len(list((out / 'coco' / split).glob('*.jpg'))) == num
        assert (out / 'coco' / 'annotations' / f'instances_{split}.json').is_file()
    ade_root = out / 'ade' / 'ADEChallengeData2016'
    for split, num in (('training', NUM_TRAIN), ('validation', NUM_VAL)):
        images = sorted(p.stem for p in (ade_root / 'images' / split).glob('*.jpg'))
        labels = sorted(p.stem for p in (ade_root / 'annotations' / split).glob('*.png'))
        assert len(images) == num and images == labels
    for summary in (coco, ade):
        assert summary['splits']['train']['images'] == NUM_TRAIN
        assert summary['splits']['val']['images'] == NUM_VAL
        for stats in summary['splits'].values():
            assert stats['images'] <= stats['instances'] <= 4 * stats['images']
            assert sum(stats['per_class'].values()) == stats['instances']
    assert mmd.IMAGENET_CLASSES == IMAGENET_CLASSES
    root = out / 'imagenet'
    assert sorted(p.name for p in (root / 'train').iterdir()) == list(IMAGENET_CLASSES)
    for name in IMAGENET_CLASSES:
        files = sorted(p.name for p in (root / 'train' / name).iterdir())
        assert files == [f'{name}_{i:05d}.JPEG' for i in range(1, CLS_TRAIN + 1)]
    val = sorted(p.name for p in (root / 'val').iterdir())
    assert val == [f'mini_val_{i:08d}.JPEG' for i in range(1, K * CLS_VAL + 1)]
    lines = (root / 'meta' / 'val.txt').read_text().splitlines()
    assert lines == [f'mini_val_{i:08d}.JPEG {(i - 1) % K}' for i in range(1, K * CLS_VAL + 1)]
    for split, num in (('train', CLS_TRAIN), ('val', CLS_VAL)):
        stats = imagenet['splits'][split]
        assert stats['per_class'] == {name: num for name in IMAGENET_CLASSES}
        assert stats['images'] == stats['instances'] == K * num


def test_same_seed_same_bytes_other_seed_other_images(data, tmp_path):
    out = data[0]
    _make_all(tmp_path / 'again')
    assert _hashes(tmp_path / 'again') == _hashes(out)
    _make_all(tmp_path / 'other', seed=SEED + 1)
    reference, other = _hashes(out), _hashes(tmp_path / 'other')
    assert reference.keys() == other.keys()
    # images, label maps, annotation files, val.txt (the same labels) and meta.json files
    assert len(reference) == 3 * (NUM_TRAIN + NUM_VAL) + 4 + K * (CLS_TRAIN + CLS_VAL) + 2
    same = [name for name in reference if reference[name] == other[name]]
    assert same == ['imagenet/meta/val.txt']


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations_match_the_drawn_shapes(data, split):
    out, summary = data[0], data[1]
    coco = COCO(str(out / 'coco' / 'annotations' / f'instances_{split}2017.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert sorted(coco.getImgIds()) == list(range(1, summary['splits'][split]['images'] + 1))
    per_class = {name: len(coco.getAnnIds(catIds=[i + 1])) for i, name in enumerate(CLASSES)}
    assert per_class == summary['splits'][split]['per_class']
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert (info['height'], info['width']) == SIZE
        image = cv2.imread(str(out / 'coco' / f'{split}2017' / info['file_name']))[..., ::-1]
        assert image.shape == (*SIZE, 3)
        scene = _scene('coco', split, image_id)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) == len(scene.shapes) <= 4
        for ann, shape in zip(anns, scene.shapes):
            assert ann['iscrowd'] == 0 and ann['category_id'] == shape.label + 1
            assert len(ann['segmentation']) == 1
            assert len(ann['segmentation'][0]) == 2 * (32, 4, 3)[shape.label]
            decoded = coco.annToMask(ann).astype(bool)
            drawn = shape.mask
            # pycocotools rasterises the polygon its own way: the pixel count differs from the
            # area by at most the boundary's pixels, half a pixel per unit of perimeter
            perimeter = np.hypot(*(np.roll(shape.polygon, -1, 0) - shape.polygon).T).sum()
            assert abs(decoded.sum() - ann['area']) <= 0.5 * perimeter
            assert abs(drawn.sum() - ann['area']) <= 0.5 * perimeter
            assert (decoded & drawn).sum() / (decoded | drawn).sum() > 0.9
            rows, cols = np.nonzero(decoded)
            x, y, w, h = ann['bbox']
            assert 0 < ann['area'] <= w * h + 1e-3  # equal for an upright square (area rounded)
            # pixel centres of the decoded mask lie inside the box
            assert x <= cols.min() + 0.5 and cols.max() + 0.5 <= x + w
            assert y <= rows.min() + 0.5 and rows.max() + 0.5 <= y + h
        masks = np.stack([shape.mask for shape in scene.shapes])
        assert masks.sum(0).max() == 1


def test_mmdet_coco_dataset_reads_it(data):
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations

    out = data[0]
    dataset = CocoDataset(
        data_root=str(out / 'coco'), ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'), metainfo=dict(classes=CLASSES),
        pipeline=[dict(type=LoadImageFromFile),
                  dict(type=LoadAnnotations, with_bbox=True, with_mask=True)])
    assert len(dataset) == NUM_TRAIN
    for index in (0, NUM_TRAIN - 1):
        item = dataset[index]
        image_id = int(Path(item['img_path']).stem)
        shapes = _scene('coco', 'train', image_id).shapes
        assert item['img'].shape == (*SIZE, 3)
        assert item['gt_bboxes'].tensor.shape == (len(shapes), 4)
        assert item['gt_masks'].masks.shape == (len(shapes), *SIZE)
        assert item['gt_bboxes_labels'].tolist() == [shape.label for shape in shapes]
        for mask, shape in zip(item['gt_masks'].masks.astype(bool), shapes):
            assert (mask & shape.mask).sum() / (mask | shape.mask).sum() > 0.9


@pytest.mark.parametrize('split', ['training', 'validation'])
def test_mmseg_ade20k_dataset_reads_it(data, split):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import ADE20KDataset
    from mmseg.datasets.transforms import LoadAnnotations

    out = data[0]
    dataset = ADE20KDataset(
        data_root=str(out / 'ade' / 'ADEChallengeData2016'),
        data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'),
        pipeline=[dict(type=LoadImageFromFile), dict(type=LoadAnnotations, reduce_zero_label=True)])
    assert len(dataset) == (NUM_TRAIN if split == 'training' else NUM_VAL)
    seen = set()
    for item in dataset:
        stem = Path(item['img_path']).stem
        assert Path(item['seg_map_path']).stem == stem
        name, index = stem.split('_')[1:]
        scene = _scene('ade', name, int(index))
        expected = np.zeros(SIZE, np.uint8)
        for shape in scene.shapes:
            expected[shape.mask] = shape.label + 1
        assert item['img'].shape == (*SIZE, 3)
        assert item['gt_seg_map'].dtype == np.uint8
        np.testing.assert_array_equal(item['gt_seg_map'], expected)
        values = set(np.unique(item['gt_seg_map']).tolist())
        assert values == {0} | {shape.label + 1 for shape in scene.shapes}
        seen |= values
    assert seen <= {0, 1, 2, 3}


@pytest.mark.parametrize('split', ['train', 'val'])
def test_mmpretrain_imagenet_dataset_reads_it(data, split):
    """mmpretrain's own ImageNet class, ``split`` as its configs use it: class folders for
    'train', ``meta/val.txt`` for 'val'; each image shows its class (shape as drawn, dominant
    circumradius in ``OBJECT_RADIUS``)."""
    from mmcv.transforms import LoadImageFromFile
    from mmpretrain.datasets import ImageNet

    out = data[0]
    dataset = ImageNet(data_root=str(out / 'imagenet'), split=split,
                       metainfo=dict(classes=IMAGENET_CLASSES),
                       pipeline=[dict(type=LoadImageFromFile)])
    per_class = CLS_TRAIN if split == 'train' else CLS_VAL
    assert len(dataset) == K * per_class
    assert dataset.metainfo['classes'] == IMAGENET_CLASSES
    labels = []
    for item in dataset:
        path = Path(item['img_path'])
        label = int(item['gt_label'])
        labels.append(label)
        if split == 'train':
            assert path.parent.name == IMAGENET_CLASSES[label]
            index = int(path.stem.rsplit('_', 1)[1])
            scene = mmd.make_object(mmd.scene_rng(SEED, 'imagenet', split, index, label), SIZE,
                                    label)
        else:
            index = int(path.stem.rsplit('_', 1)[1])
            assert label == (index - 1) % K
            scene = mmd.make_object(mmd.scene_rng(SEED, 'imagenet', split, index), SIZE, label)
        image = item['img'][..., ::-1].astype(np.float64)  # BGR -> RGB
        assert image.shape == (*SIZE, 3)
        assert np.abs(image - scene.image).mean() < 6  # JPEG quality 90 smooths the pixel noise
        (shape,) = scene.shapes
        assert CLASSES[shape.label] == IMAGENET_CLASSES[label]
        # circumradius >= 0.18 of the shorter side; the smallest of the three shapes for a
        # circumradius r, the triangle, covers 1.3 r^2
        assert shape.mask.sum() > 1.25 * (0.18 * min(SIZE)) ** 2
    assert np.bincount(labels, minlength=K).tolist() == [per_class] * K


def test_cli_skips_up_to_date_output_and_rewrites_on_change(tmp_path, capsys):
    out = tmp_path / 'cli'
    argv = ['--out', str(out), '--num-train', '2', '--num-val', '1', '--size', '48', '64',
            '--cls-train', '1', '--cls-val', '1']
    first = cli.main(argv)
    assert [s['skipped'] for s in first] == [False, False, False]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(':')[0] for line in lines] == ['coco', 'ade', 'imagenet']
    assert 'train 3 images in 3 classes (1 each)' in lines[2]
    image = out / 'coco' / 'train2017' / '000000000001.jpg'
    assert cv2.imread(str(image)).shape == (48, 64, 3)
    before = _hashes(out)
    os.utime(image, (0, 0))
    again = cli.main(argv)
    assert [s['skipped'] for s in again] == [True, True, True]
    assert [s['splits'] for s in again] == [s['splits'] for s in first]
    assert image.stat().st_mtime == 0
    cli.main(argv + ['--force'])
    assert image.stat().st_mtime > 0 and _hashes(out) == before
    fewer = cli.main(['--out', str(out), '--num-train', '1', '--num-val', '1', '--size', '48',
                      '--cls-train', '1', '--cls-val', '1'])
    # the ImageNet-layout images stay 32 x 32 (half of 48 x 64 or 48 x 48, at least 32): kept
    assert [s['skipped'] for s in fewer] == [False, False, True]
    assert sorted(p.name for p in (out / 'coco' / 'train2017').iterdir()) == ['000000000001.jpg']
    assert cv2.imread(str(image)).shape == (48, 48, 3)
    ade_train = out / 'ade' / 'ADEChallengeData2016' / 'annotations' / 'training'
    assert [p.name for p in ade_train.iterdir()] == ['ADE_train_00000001.png']
    with pytest.raises(ValueError, match='at least'):
        mmd.make_coco(tmp_path / 'bad', size=(16, 16))


def test_cli_refuses_bad_arguments_before_writing(tmp_path, capsys):
    """Sizes under 32 pixels, empty splits, a negative seed or a file as --out: argparse's error
    (exit 2) before anything is written."""
    afile = tmp_path / 'afile'
    afile.write_text('x')
    out = tmp_path / 'out'
    for extra, message in ((['--size', '0'], 'at least 32 pixels'),
                           (['--size', '64', '16'], 'at least 32 pixels'),
                           (['--num-train', '0'], '--num-val, --cls-train, --cls-val >= 1'),
                           (['--cls-val', '0'], '--cls-val >= 1'),
                           (['--seed', '-1'], '--seed must be >= 0')):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_args(['--out', str(out)] + extra)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, extra
    with pytest.raises(SystemExit):
        cli.parse_args(['--out', str(afile)])
    assert 'is a file, not a folder' in capsys.readouterr().err
    assert not out.exists()


def _shapes(dataset: str, split: str, count: int) -> list:
    """(class index into CLASSES, mean RGB of the painted pixels, circumradius in pixels) of the
    shapes of the first ``count`` images of a split, at the main job's default sizes (dense
    128 x 128, ImageNet-layout 64 x 64)."""
    out = []
    for index in range(1, count + 1):
        rng = mmd.scene_rng(SEED, dataset, split, index)
        if dataset == 'imagenet':
            scene = mmd.make_object(rng, (64, 64), (index - 1) % K)
        else:
            scene = mmd.make_scene(rng, (128, 128))
        for shape in scene.shapes:
            centre = shape.polygon.mean(0)
            radius = np.hypot(*(shape.polygon - centre).T).mean()
            out.append((shape.label, scene.image[shape.mask].mean(0), radius))
    return out


def _colour_cell(rgb: np.ndarray) -> int:
    """One of 24 colour cells: 6 hue sectors x 2 saturation x 2 value halves."""
    import colorsys
    h, s, v = colorsys.rgb_to_hsv(*(np.clip(rgb, 0, 255) / 255))
    return int(h * 6) % 6 * 4 + (s > 0.7) * 2 + (v > 0.7)


@pytest.mark.parametrize('dataset', ['coco', 'ade', 'imagenet'])
def test_colour_does_not_tell_the_class(dataset):
    """In every dataset the colour of a shape says nothing about its class: a classifier that
    predicts, per colour cell (hue sector, saturation, value), the class most frequent there in
    the training shapes scores at chance level (1/3) on the validation shapes. (With a colour per
    class, as the classes of an earlier format had, it scores 1.)"""
    train, val = _shapes(dataset, 'train', 150), _shapes(dataset, 'val', 100)
    counts = np.zeros((24, K))
    for label, rgb, _ in train:
        counts[_colour_cell(rgb), label] += 1
    predicted = counts.argmax(1)
    accuracy = np.mean([predicted[_colour_cell(rgb)] == label for label, rgb, _ in val])
    assert len(val) >= 100
    assert accuracy < 0.45
    hues = {label: {_colour_cell(rgb) // 4 for label_, rgb, _ in train if label_ == label}
            for label in range(K)}
    assert all(len(sectors) == 6 for sectors in hues.values())  # every class in every hue


def test_objects_have_the_dense_shapes_size():
    """The ImageNet-layout shapes (64 x 64 images) have the size of the COCO / ADE20K shapes
    (128 x 128 images) in pixels, so also in 16-pixel patches: circumradius 0.09-0.2 x 128 =
    0.18-0.4 x 64 = 11.52-25.6 px in both."""
    for dataset in ('coco', 'imagenet'):
        radii = np.array([r for _, _, r in _shapes(dataset, 'train', 150)])
        assert radii.min() >= 11.52 - 0.1 and radii.max() <= 25.6 + 0.1, dataset
        assert radii.min() < 13 and radii.max() > 24, dataset
    assert 0.09 * 128 == 0.18 * 64 and 0.2 * 128 == 0.4 * 64
    assert mmd.DENSE_RADIUS == (0.09, 0.2) and mmd.OBJECT_RADIUS == (0.18, 0.4)
