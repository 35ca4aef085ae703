"""Evaluation of a trained detector (mmdet) or segmentor (mmseg) at several test resolutions.

For each factor ``f`` of a list, the ``Resize`` step of ``test_dataloader.dataset.pipeline`` gets
its ``scale`` (or, without one, its ``scale_factor``) multiplied by ``f``, ``keep_ratio`` as
configured, and the checkpoint is evaluated through the library's own test loop
(``mmengine.runner.Runner.test()`` with the config's evaluator: mmdet's COCO metric, box and mask
AP; mmseg's IoU metric, mIoU and aAcc). Nothing else of the config changes: mmdet rescales the
predicted boxes and masks back to the original image and mmseg resizes the logits back to it, so
every factor is scored against the same ground truth. For mmseg slide inference
(``model.test_cfg.mode='slide'``) the crop size and stride stay as configured, so a larger factor
means more windows of the same size, not larger windows.

This is the measurement of CPVT (Chu et al., "Conditional Positional Encodings for Vision
Transformers", ICLR 2023) and rope-vit (Heo et al., ECCV 2024): accuracy against test resolution,
here for dense tasks. :func:`resolution_sweep` runs it; :func:`metric_columns`,
:func:`format_table` and :func:`write_results` give the table, its CSV / JSON and a plot.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import os.path as osp
import time
from typing import Sequence

# The columns of the table per task: (metric key of the evaluator, column title, format).
COLUMNS = {
    'det': (('coco/bbox_mAP', 'box AP', '.3f'), ('coco/segm_mAP', 'mask AP', '.3f')),
    'seg': (('mIoU', 'mIoU', '.2f'), ('aAcc', 'aAcc', '.2f')),
}


class SweepError(ValueError):
    """A resolution sweep that cannot run: the message says what to change."""


def check_scales(scales: Sequence[float]) -> list[float]:
    """The factors as floats; raises :class:`SweepError` for an empty list or a factor that is
    not a finite number > 0."""
    if isinstance(scales, (str, bytes)):
        raise SweepError(f'give the test-resolution factors as a list of numbers, not {scales!r}')
    try:
        scales = [float(s) for s in scales]
    except (TypeError, ValueError):
        raise SweepError(f'test-resolution factors must be numbers, got {scales!r}') from None
    if not scales:
        raise SweepError('give at least one test-resolution factor, e.g. --scales 0.5 1.0 2.0')
    bad = [s for s in scales if not (s > 0 and math.isfinite(s))]
    if bad:
        raise SweepError(f'test-resolution factors must be finite and > 0 (got {bad}); 1.0 is '
                         'the configured resolution, 0.5 half of it')
    return scales


def task_of(cfg) -> str:
    """'det' for an mmdet config, 'seg' for an mmseg one (its ``default_scope``); raises
    :class:`SweepError` otherwise (e.g. an mmpretrain classifier, which has no dense test
    pipeline)."""
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        return 'det'
    if scope == 'mmseg':
        return 'seg'
    raise SweepError(f'the config is neither an mmdet detector nor an mmseg segmentor '
                     f"(default_scope={scope!r}); give a configs/mask_rcnn, configs/upernet or "
                     'configs/mini dense config')


def find_resize(pipeline: Sequence[dict]) -> int:
    """The index of the ``Resize`` step (type ``Resize``, with or without a registry scope such
    as ``mmdet.Resize``) in a test pipeline; raises :class:`SweepError` when there is none or more
    than one."""
    found = [i for i, step in enumerate(pipeline)
             if str(step.get('type', '')).split('.')[-1] == 'Resize']
    types = [step.get('type') for step in pipeline]
    if not found:
        raise SweepError(f'the test pipeline {types} has no Resize step, so its resolution '
                         "cannot be changed; add dict(type='Resize', scale=(W, H), "
                         'keep_ratio=True) after LoadImageFromFile')
    if len(found) > 1:
        raise SweepError(f'the test pipeline {types} has {len(found)} Resize steps; the sweep '
                         'scales exactly one')
    return found[0]


def _times(value, factor: float):
    if isinstance(value, (int, float)):
        return value * factor
    return tuple(v * factor for v in value)


def scaled_resize(step: dict, factor: float) -> dict:
    """A copy of the Resize step ``step`` at ``factor`` times its resolution: ``scale`` (an int
    or a (w, h) pair, pixels) times ``factor``, rounded to whole pixels; without a ``scale``,
    ``scale_factor`` times ``factor``. ``keep_ratio`` and every other key are kept."""
    step = copy.deepcopy(dict(step))
    if step.get('scale') is not None:
        scaled = _times(step['scale'], factor)
        step['scale'] = (int(round(scaled)) if isinstance(scaled, float)
                         else tuple(int(round(v)) for v in scaled))
        if min([step['scale']] if isinstance(step['scale'], int) else step['scale']) < 1:
            raise SweepError(f'factor {factor} makes the test scale {step["scale"]} smaller than '
                             'one pixel; use a larger factor')
    elif step.get('scale_factor') is not None:
        step['scale_factor'] = _times(step['scale_factor'], factor)
    else:
        raise SweepError('the Resize step of the test pipeline has neither scale nor '
                         'scale_factor')
    return step


def config_at(cfg, factor: float):
    """A copy of ``cfg`` whose test pipeline resizes at ``factor`` times the configured
    resolution (:func:`scaled_resize`); the rest of the config is unchanged."""
    cfg = copy.deepcopy(cfg)
    pipeline = cfg.test_dataloader.dataset.pipeline
    index = find_resize(pipeline)
    pipeline[index] = scaled_resize(pipeline[index], factor)
    return cfg


def resolution_sweep(config: str, checkpoint: str, scales: Sequence[float], *,
                     cfg_options: dict | None = None, work_dir: str | None = None) -> dict:
    """Evaluates ``checkpoint`` with ``config`` at each factor of ``scales`` (module docstring).

    Args:
        config: an mmdet or mmseg config file.
        checkpoint: a checkpoint of that model (``load_from``).
        scales: test-resolution factors, > 0; 1.0 is the configured resolution.
        cfg_options: config overrides, applied before the scaling (e.g. the data root).
        work_dir: where the runners' logs go (default ``work_dirs/sweep_<config name>``).

    Returns:
        ``dict(task='det' | 'seg', config, checkpoint, rows=[dict(scale, resize=<the Resize
        step's scale or scale_factor at that factor>, metrics={key: float})])``, one row per
        factor in the given order.

    Raises:
        SweepError: a factor <= 0, a config of neither task, a test pipeline without a (single)
            Resize step.
        FileNotFoundError: ``checkpoint`` or ``config`` does not exist.
    """
    from mmengine.config import Config
    from mmengine.runner import Runner

    scales = check_scales(scales)
    for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} {path} does not exist')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    task = task_of(cfg)
    find_resize(cfg.test_dataloader.dataset.pipeline)
    name = osp.splitext(osp.basename(config))[0]
    work_dir = work_dir or osp.join('work_dirs', f'sweep_{name}')
    stamp = time.strftime('%Y%m%d_%H%M%S')
    rows = []
    for factor in scales:
        run_cfg = config_at(cfg, factor)
        run_cfg.load_from = checkpoint
        run_cfg.launcher = 'none'
        run_cfg.work_dir = osp.join(work_dir, f'scale_{factor:g}')
        # one experiment (log dir, logger, visualizer instance) per factor
        run_cfg.experiment_name = f'{name}_x{factor:g}_{stamp}'
        metrics = Runner.from_cfg(run_cfg).test()
        step = run_cfg.test_dataloader.dataset.pipeline[
            find_resize(run_cfg.test_dataloader.dataset.pipeline)]
        resize = step.get('scale') if step.get('scale') is not None else step['scale_factor']
        rows.append(dict(scale=factor, resize=list(resize) if isinstance(resize, tuple)
                         else resize, metrics={k: float(v) for k, v in metrics.items()}))
    return dict(task=task, config=config, checkpoint=checkpoint, rows=rows)


def metric_columns(result: dict) -> list[tuple[str, str, str]]:
    """The (metric key, title, format) columns of the table of ``result``: box and mask AP for a
    detector (those its evaluator reports), mIoU and aAcc for a segmentor."""
    keys = set().union(*(row['metrics'] for row in result['rows']))
    return [c for c in COLUMNS[result['task']] if c[0] in keys]


def table_cells(result: dict) -> tuple[list[str], list[list[str]]]:
    """The table of ``result`` as (header, rows of cells): the factor, the Resize scale, and the
    columns of :func:`metric_columns`, formatted as printed."""
    columns = metric_columns(result)
    header = ['scale', 'test resize'] + [title for _, title, _ in columns]
    rows = []
    for row in result['rows']:
        resize = row['resize']
        resize = 'x'.join(str(v) for v in resize) if isinstance(resize, list) else str(resize)
        rows.append([f"{row['scale']:g}", resize]
                    + [format(row['metrics'][key], fmt) for key, _, fmt in columns])
    return header, rows


def format_table(result: dict) -> str:
    """The Markdown table of ``result`` (:func:`table_cells`)."""
    header, rows = table_cells(result)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in rows]
    return '\n'.join(lines)


def write_results(result: dict, out_dir: str, title: str | None = None) -> dict:
    """Writes ``sweep.csv`` (the table's cells, as printed), ``sweep.json`` (``result`` with every
    metric at full precision) and ``sweep.png`` (each table metric against the factor, matplotlib
    with the Agg backend) into ``out_dir``; returns {'csv', 'json', 'png'} -> path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: osp.join(out_dir, f'sweep.{ext}') for ext in ('csv', 'json', 'png')}
    header, rows = table_cells(result)
    with open(paths['csv'], 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    with open(paths['json'], 'w') as f:
        json.dump(result, f, indent=1)
    columns = metric_columns(result)
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(4 * max(1, len(columns)), 3.2),
                             squeeze=False)
    factors = [row['scale'] for row in result['rows']]
    for ax, (key, label, _) in zip(axes[0], columns):
        ax.plot(factors, [row['metrics'][key] for row in result['rows']], marker='o')
        ax.axvline(1.0, color='gray', linewidth=0.8, linestyle='--')
        ax.set_xlabel('test resolution / configured resolution')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title or osp.splitext(osp.basename(result['config']))[0], fontsize=9)
    fig.tight_layout()
    fig.savefig(paths['png'], dpi=100)
    plt.close(fig)
    return paths
