"""Per-layer analysis of the position encoding (PE) of a ViT backbone of this project: a
:class:`~pe_dense.models.ViTAdapter` or a :class:`~pe_dense.models.PEViT` classifier.

Measures, for every ViT block, how the token embeddings that enter its attention relate to the PE
that enters it, as in the per-layer analyses of the MPVG paper ("Maximizing the Position Embedding
for Vision Transformers with Global Average Pooling"). Nothing in the backbone is changed: forward
hooks read the block inputs and the attention inputs, and the PE comes from the position
encoding's public methods.

Definitions, for block ``l = 0 .. L-1`` on a patch grid ``(H, W)``, ``N = H * W`` tokens in
row-major order, ``C`` channels:

- ``x_l``: the patch tokens entering block l (the block's first positional argument), ``(N, C)``
  per image. They include whatever the adapter's injectors added before the block. A classifier's
  prefix tokens (the class token, ``pos_embed.num_prefix_tokens`` of them, in front) take part in
  the blocks but not in the statistics.
- token embedding ``t_l = LN1_l(x_l)``: block l's ``norm1``, affine weight and bias included.
  Block l's attention receives ``t_l + pos_l`` (``t_l`` alone when it gets no PE).
- ``pos_l``, the PE entering block l, ``(N, C)``, the same for every image of one size:

  * ``pos_embed.block_pos(grid)[l]`` (its patch rows) where that is not None: LaPE at every
    block, PVG and MPVG at blocks 1 .. L-1;
  * at block 0 only, where ``block_pos`` gives None: the learned table ``pos_embed.table(grid)``
    when the method's ``embed`` adds it to the patch tokens (AbsolutePE, PVG, MPVG). That PE is
    part of ``x_0``; it is not counted again at later blocks, where it is mixed into the tokens;
  * none otherwise: NoPE and PEG have no PE tensor at all (PEG's convolution output depends on the
    image), nor have RoPEAxial and RoPEMixed (a rotation of q and k, not a tensor added to the
    tokens; with ``with_ape`` their table counts at block 0), and AbsolutePE has none after
    block 0. Such layers report NaN.

  The attention input actually seen by each block is checked against ``t_l + block_pos[l]``, so a
  backbone wired differently is an error rather than a wrong number.
- correlation at layer l: Pearson's r between ``t_l`` and ``pos_l`` over all ``N * C`` (token,
  channel) entries of one image, averaged over the images;
- ``mean_abs_token``: mean ``|t_l|`` over all entries and images; ``mean_abs_pe``: mean
  ``|pos_l|`` over all entries.

Plotting needs matplotlib, which is imported only by the plotting functions (Agg backend).
"""
from __future__ import annotations

import csv
import io
import math
import os
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

Grid = Tuple[int, int]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
CSV_FIELDS = ('layer', 'has_pe', 'pe_source', 'correlation', 'mean_abs_token', 'mean_abs_pe')
# Output file names inside the --out directory.
CSV_NAME = 'pe_analysis.csv'
CORRELATION_PNG = 'pe_correlation.png'
HEATMAPS_PNG = 'pe_heatmaps.png'
SIMILARITY_PNG = 'pe_similarity.png'


# ------------------------------------------------------------------------------------ numbers
def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation coefficient of two tensors of the same number of entries (any shape;
    all entries are paired in flattened order), computed in float64. NaN when either is
    constant."""
    a = a.detach().reshape(-1).double()
    b = b.detach().reshape(-1).double()
    if a.numel() != b.numel():
        raise ValueError(f'pearson needs the same number of entries, got {a.numel()} and '
                         f'{b.numel()}')
    a = a - a.mean()
    b = b - b.mean()
    denom = torch.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0:
        return math.nan
    return float((a * b).sum() / denom)


def cosine_similarity_grid(pos: Tensor, grid: Grid) -> Tensor:
    """Cosine similarity between the PE of every pair of positions.

    ``pos``: ``(N, C)`` or ``(1, N, C)``, ``N = H * W`` in row-major order; ``grid``: ``(H, W)``.
    Returns ``(H, W, H, W)``: entry ``[i, j, k, m]`` is the cosine similarity of position
    ``(i, j)`` with position ``(k, m)``. A zero vector has similarity 0 with everything.
    """
    h, w = grid
    pos = pos.detach().reshape(-1, pos.shape[-1]).double()
    if pos.shape[0] != h * w:
        raise ValueError(f'PE has {pos.shape[0]} positions, grid {h}x{w} needs {h * w}')
    unit = nn.functional.normalize(pos, dim=1)
    return (unit @ unit.T).float().reshape(h, w, h, w)


def layer_pos_embeds(pos_embed: nn.Module, grid: Grid) -> List[Tuple[Optional[Tensor], str]]:
    """The PE entering each block as defined in the module docstring: one ``(pos, source)`` per
    block, ``pos`` ``(N, C)`` (patch positions only) or None, ``source`` ``'block'``
    (``block_pos``), ``'input'`` (the table added to the patch tokens, block 0 only) or
    ``'none'``."""
    prefix = getattr(pos_embed, 'num_prefix_tokens', 0)
    out = []
    for pos in pos_embed.block_pos(grid):
        out.append((pos[0, prefix:].detach(), 'block') if pos is not None else (None, 'none'))
    # A learned table: AbsolutePE, PVG, MPVG, LaPE; the rotary methods hold one only with
    # with_ape (their rotation of q and k is no additive tensor and is not analysed).
    if out[0][0] is None and isinstance(getattr(pos_embed, 'weight', None), torch.Tensor):
        table = pos_embed.table(grid)
        if torch.equal(pos_embed.embed(torch.zeros_like(table), grid), table):
            out[0] = (table[0, prefix:].detach(), 'input')
    return out


def collect_layer_stats(backbone: nn.Module, images: Tensor,
                        batch_size: int = 4) -> List[Dict[str, Any]]:
    """Runs ``backbone`` (a ViTAdapter or PEViT, put in eval mode for the call) on the images,
    ``batch_size`` at a time, and collects per block l the quantities defined in the module
    docstring (patch tokens only).

    ``images``: ``(B, 3, H, W)``, normalised as the model expects. Returns one dict per block:
    ``layer`` (int), ``has_pe`` (bool), ``pe_source`` (``'block'``, ``'input'`` or ``'none'``),
    ``correlation``, ``mean_abs_token``, ``mean_abs_pe`` (floats, NaN without a PE),
    ``token_mean`` (``(N, C)`` CPU tensor: ``t_l`` averaged over the images), ``pe`` (``(N, C)``
    CPU tensor or None) and ``grid`` (``(H', W')``, the patch grid of the padded input).
    """
    captured: Dict[Any, Tensor] = {}

    def keep_output(key: Any, module: nn.Module, args: tuple, output: Tensor) -> None:
        captured[key] = output

    def keep_first_arg(key: Any, module: nn.Module, args: tuple, output: Tensor) -> None:
        captured[key] = args[0]

    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f'images must be a non-empty (B, 3, H, W) batch, got shape '
                         f'{tuple(images.shape)}')
    blocks = backbone.blocks
    prefix = getattr(backbone.pos_embed, 'num_prefix_tokens', 0)
    handles = [backbone.patch_embed.register_forward_hook(partial(keep_output, 'patches'))]
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(partial(keep_first_arg, ('x', i))))
        handles.append(block.attn.register_forward_hook(partial(keep_first_arg, ('attn', i))))
    was_training = backbone.training
    backbone.eval()
    n_img = images.shape[0]
    corr: List[List[float]] = [[] for _ in blocks]
    abs_token = [0.0] * len(blocks)
    token_sum: List[Tensor] = [torch.zeros(()) for _ in blocks]
    try:
        with torch.no_grad():
            for batch in images.split(batch_size):
                captured.clear()
                backbone(batch)
                grid = tuple(captured['patches'].shape[1:3])
                expected = backbone.pos_embed.block_pos(grid)
                pes = layer_pos_embeds(backbone.pos_embed, grid)
                for i, block in enumerate(blocks):
                    tokens = block.norm1(captured[('x', i)])
                    _check_attention_input(i, captured[('attn', i)] - tokens, expected[i])
                    tokens = tokens[:, prefix:]
                    pos = pes[i][0]
                    corr[i] += [pearson(t, pos) if pos is not None else math.nan for t in tokens]
                    abs_token[i] += float(tokens.abs().mean(dim=(1, 2)).sum()) / n_img
                    token_sum[i] = token_sum[i] + tokens.float().sum(0).cpu() / n_img
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    stats = []
    for i, (pos, source) in enumerate(pes):
        stats.append(dict(
            layer=i, has_pe=pos is not None, pe_source=source,
            correlation=float(np.mean(corr[i])), mean_abs_token=abs_token[i],
            mean_abs_pe=float(pos.abs().mean()) if pos is not None else math.nan,
            token_mean=token_sum[i], pe=pos.float().cpu() if pos is not None else None,
            grid=grid))
    return stats


def _check_attention_input(layer: int, added: Tensor, pos: Optional[Tensor]) -> None:
    """``added`` (attention input minus ``LN1(x_l)``, ``(B, P + N, C)``) must be the block's PE
    (``(1, P + N, C)`` or None)."""
    target = torch.zeros_like(added) if pos is None else pos.to(added).expand_as(added)
    tol = 1e-4 * (1.0 + float(target.abs().max()))
    if not torch.allclose(added, target, rtol=0, atol=tol):
        raise RuntimeError(
            f'block {layer}: its attention input is not LN1(x) + block_pos()[{layer}] '
            f'(max difference {float((added - target).abs().max()):.3g}); the analysis assumes '
            'the ViTAdapter wiring x + Attn(LN1(x) + pos_l)')


def first_layer_with_pe(stats: Sequence[Dict[str, Any]]) -> Optional[int]:
    """Index of the first layer whose ``has_pe`` is true, or None."""
    return next((s['layer'] for s in stats if s['has_pe']), None)


def write_csv(stats: Sequence[Dict[str, Any]], path: str) -> None:
    """One row per layer with the columns :data:`CSV_FIELDS` (NaN written as ``nan``)."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction='ignore')
        writer.writeheader()
        for s in stats:
            row = dict(s)
            for key in ('correlation', 'mean_abs_token', 'mean_abs_pe'):
                row[key] = f'{s[key]:.6g}'
            writer.writerow(row)


# ------------------------------------------------------------------------------------- inputs
def normalization_from_config(cfg: Any) -> Tuple[Sequence[float], Sequence[float], bool]:
    """``(mean, std, to_rgb)`` from ``cfg.model.data_preprocessor`` (``bgr_to_rgb``,
    ``rgb_to_bgr`` or mmpretrain's ``to_rgb`` set means channels in RGB order); ImageNet's RGB
    mean/std without one."""
    pre = (cfg.get('model') or {}).get('data_preprocessor') or {}
    if pre.get('mean') is None or pre.get('std') is None:
        return IMAGENET_MEAN, IMAGENET_STD, True
    to_rgb = any(bool(pre.get(key, False)) for key in ('bgr_to_rgb', 'rgb_to_bgr', 'to_rgb'))
    return tuple(pre['mean']), tuple(pre['std']), to_rgb


def load_images(paths: Sequence[str], size: Grid, mean: Sequence[float], std: Sequence[float],
                to_rgb: bool = True) -> Tensor:
    """Reads images (any format OpenCV reads; grey images become 3 channels), resizes each to
    ``size`` = ``(H, W)`` (bilinear) and normalises ``(pixel - mean) / std`` per channel, in RGB
    order when ``to_rgb`` else BGR. Returns ``(B, 3, H, W)`` float32."""
    import cv2

    out = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f'cannot read image {path}')
        if to_rgb:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out.append(torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1))
    batch = torch.stack(out)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def build_backbone(cfg: Any, method: Optional[str] = None) -> nn.Module:
    """The backbone of ``cfg.model.backbone``: a ``ViTAdapter`` (mmdet/mmseg configs) or a
    ``PEViT`` (mmpretrain classifier configs), its ``init_cfg`` dropped; ``method`` replaces
    ``pos_embed.type`` (and keeps no option of another method)."""
    from pe_dense.models import PEViT, ViTAdapter

    kwargs = dict(cfg['model']['backbone'])
    kinds = {'ViTAdapter': ViTAdapter, 'PEViT': PEViT}
    kind = kwargs.pop('type', 'ViTAdapter')
    if kind not in kinds:
        raise ValueError(f'the PE analysis reads ViTAdapter and PEViT backbones; this config\'s '
                         f'model.backbone is {kind!r}')
    kwargs.pop('init_cfg', None)
    if method is not None:
        old = kwargs.get('pos_embed') or {}
        kwargs['pos_embed'] = dict(old) if old.get('type') == method else dict(type=method)
    return kinds[kind](**kwargs)


# ----------------------------------------------------------------------------------- plotting
def _figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` outside pyplot: no global backend or figure state is touched, and
    ``savefig`` renders with Agg."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Any, path: str) -> None:
    """Saves at 100 dpi as a 256-colour PNG, which keeps the files small."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100, bbox_inches='tight')
    buf.seek(0)
    img = Image.open(buf).convert('RGB')
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                 dither=Image.Dither.NONE).save(path, optimize=True)


def plot_correlation(correlations: Sequence[float], mean_abs_token: Sequence[float],
                     mean_abs_pe: Sequence[float], path: str, title: str = '') -> None:
    """Two panels over the layers (index = layer): Pearson's r between ``LN1(x_l)`` and
    ``pos_l``, and the mean absolute values of both. Arrays of length L; NaN (no PE) points are
    left out."""
    layers = np.arange(len(correlations))
    fig = _figure(figsize=(10, 3.8))
    ax_r, ax_m = fig.subplots(1, 2)
    ax_r.axhline(0, color='0.6', lw=0.8)
    ax_r.plot(layers, correlations, 'o-', color='tab:blue')
    ax_r.set(xlabel='layer l (ViT block)', ylabel='Pearson r', ylim=(-1.05, 1.05),
             title='corr(LN1(x_l), pos_l), mean over images')
    ax_m.plot(layers, mean_abs_token, 'o-', label='mean |LN1(x_l)|', color='tab:green')
    ax_m.plot(layers, mean_abs_pe, 's-', label='mean |pos_l|', color='tab:orange')
    ax_m.set(xlabel='layer l (ViT block)', ylabel='mean absolute value', title='magnitudes')
    ax_m.set_ylim(bottom=0)
    ax_m.legend()
    for ax in (ax_r, ax_m):
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _heatmap(fig: Any, ax: Any, data: np.ndarray, title: str) -> None:
    vmax = float(np.percentile(np.abs(data), 99)) or 1.0
    im = ax.imshow(data, aspect='auto', cmap='RdBu_r', vmin=-vmax, vmax=vmax,
                   interpolation='nearest')
    ax.set(title=title, xlabel='channel', ylabel='token (row-major)')
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)


def plot_heatmaps(layers: Sequence[int], tokens: Sequence[np.ndarray],
                  pes: Sequence[Optional[np.ndarray]], path: str, title: str = '') -> None:
    """For each layer in ``layers`` a column of two heatmaps (tokens x channels, ``(N, C)``
    arrays): the mean token embedding ``LN1(x_l)`` (top) and the PE ``pos_l`` (bottom; a note
    where it is None). Colour scales are symmetric, clipped at the 99th percentile of |value|."""
    fig = _figure(figsize=(3.4 * len(layers), 6.0))
    axes = fig.subplots(2, len(layers), squeeze=False)
    for col, (layer, tok, pe) in enumerate(zip(layers, tokens, pes)):
        _heatmap(fig, axes[0, col], np.asarray(tok), f'layer {layer}: mean LN1(x_l)')
        if pe is None:
            ax = axes[1, col]
            ax.text(0.5, 0.5, 'no PE enters\nthis layer', ha='center', va='center',
                    transform=ax.transAxes)
            ax.set(title=f'layer {layer}: pos_l', xticks=[], yticks=[])
        else:
            _heatmap(fig, axes[1, col], np.asarray(pe), f'layer {layer}: pos_l')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def similarity_mosaic(sim: np.ndarray) -> np.ndarray:
    """``(h, w, H, W)`` similarities of ``h x w`` query positions to all ``H x W`` positions ->
    one ``(h*(H+1)-1, w*(W+1)-1)`` image: tile ``(i, j)`` (the ``H x W`` map of query (i, j)) at
    rows ``i*(H+1) ..``, columns ``j*(W+1) ..``, tiles separated by one NaN row/column."""
    h, w, hh, ww = sim.shape
    out = np.full((h, hh + 1, w, ww + 1), np.nan, dtype=np.float32)
    out[:, :hh, :, :ww] = np.asarray(sim).transpose(0, 2, 1, 3)
    return out.reshape(h * (hh + 1), w * (ww + 1))[:-1, :-1]


def plot_similarity(sim: np.ndarray, path: str, title: str = '', max_tiles: int = 16) -> None:
    """The ViT paper's PE similarity figure: a grid of ``H x W`` tiles, tile (i, j) showing the
    cosine similarity of position (i, j)'s PE with every position (``sim``: ``(H, W, H, W)``,
    see :func:`cosine_similarity_grid`). Grids with more than ``max_tiles`` rows (columns) show
    every k-th query row (column), so the tiles stay at least one screen pixel per position."""
    from matplotlib import colormaps

    h, w = sim.shape[:2]
    rows = list(range(0, h, math.ceil(h / max_tiles)))
    cols = list(range(0, w, math.ceil(w / max_tiles)))
    mosaic = similarity_mosaic(np.asarray(sim)[rows][:, cols])
    # Draw the mosaic at an integer number of screen pixels per position (100 dpi).
    scale = max(1, 560 // max(mosaic.shape))
    ax_w, ax_h = mosaic.shape[1] * scale / 100, mosaic.shape[0] * scale / 100
    fig_w, fig_h = ax_w + 2.2, ax_h + 1.3
    fig = _figure(figsize=(fig_w, fig_h), dpi=100)
    ax = fig.add_axes((0.8 / fig_w, 0.7 / fig_h, ax_w / fig_w, ax_h / fig_h))
    cax = fig.add_axes(((ax_w + 1.0) / fig_w, 0.7 / fig_h, 0.18 / fig_w, ax_h / fig_h))
    im = ax.imshow(mosaic, cmap=colormaps['viridis'].with_extremes(bad='white'), vmin=-1,
                   vmax=1, interpolation='nearest')
    label_r, label_c = math.ceil(len(rows) / 8), math.ceil(len(cols) / 8)
    ax.set_xticks([t * (w + 1) + (w - 1) / 2 for t in range(0, len(cols), label_c)],
                  [str(cols[t]) for t in range(0, len(cols), label_c)])
    ax.set_yticks([t * (h + 1) + (h - 1) / 2 for t in range(0, len(rows), label_r)],
                  [str(rows[t]) for t in range(0, len(rows), label_r)])
    ax.set(xlabel='query patch column j', ylabel='query patch row i')
    fig.colorbar(im, cax=cax, label='cosine similarity')
    ax.set_title(title or 'PE cosine similarity', fontsize=10)
    fig.text(0.8 / fig_w, 0.1 / fig_h, f'tile (i, j): similarity of position (i, j) to all '
             f'{h}x{w} positions', fontsize=8)
    _save(fig, path)


# ------------------------------------------------------------------------------------- driver
def analyze(backbone: nn.Module, images: Tensor, out_dir: str, sim_layer: Optional[int] = None,
            heatmap_layers: Sequence[int] = (0, 5, 11), label: str = '',
            batch_size: int = 4, suffix: Optional[str] = None) -> Dict[str, Any]:
    """Collects the statistics (:func:`collect_layer_stats`, ``batch_size`` images per
    forward) and writes into ``out_dir``:
    :data:`CSV_NAME`, and the figures :data:`CORRELATION_PNG`, :data:`HEATMAPS_PNG` and
    :data:`SIMILARITY_PNG`, each name with ``_<suffix>`` before its extension when ``suffix`` is
    given. Without any PE tensor (NoPE, PEG) the correlation and similarity figures are skipped.
    ``sim_layer`` (default: the first layer with a PE) must have a PE.

    Returns ``dict(stats=..., files=[written paths], notes=[what was skipped and why])``.
    """
    def output(name: str) -> str:
        stem, ext = os.path.splitext(name)
        return os.path.join(out_dir, f'{stem}_{suffix}{ext}' if suffix else name)

    os.makedirs(out_dir, exist_ok=True)
    stats = collect_layer_stats(backbone, images, batch_size)
    depth = len(stats)
    files, notes = [output(CSV_NAME)], []
    write_csv(stats, files[0])
    grid = stats[0]['grid']
    in_title = f' ({label})' if label else ''
    first = first_layer_with_pe(stats)
    sim_layer = first if sim_layer is None else sim_layer
    if first is not None and not (0 <= sim_layer < depth and stats[sim_layer]['has_pe']):
        with_pe = [s['layer'] for s in stats if s['has_pe']]
        raise ValueError(f'no PE enters layer {sim_layer}; layers with a PE: {with_pe}')
    prefix = getattr(backbone.pos_embed, 'num_prefix_tokens', 0)
    if prefix:
        notes.append(f'{prefix} prefix token(s) (class token) take part in the blocks but not in '
                     'the statistics, which cover the patch tokens')
    if first is None:
        notes.append(f'{type(backbone.pos_embed).__name__} has no PE tensor: correlations are '
                     'NaN; the correlation and similarity figures are skipped')
    else:
        path = output(CORRELATION_PNG)
        plot_correlation([s['correlation'] for s in stats], [s['mean_abs_token'] for s in stats],
                         [s['mean_abs_pe'] for s in stats], path,
                         f'Token embedding vs PE per layer{in_title}')
        files.append(path)
    layers = [i for i in heatmap_layers if -depth <= i < depth]
    if len(layers) < len(heatmap_layers):
        notes.append(f'heatmap layers outside 0..{depth - 1} ignored: '
                     f'{sorted(set(heatmap_layers) - set(layers))}')
    if layers:
        path = output(HEATMAPS_PNG)
        plot_heatmaps([stats[i]['layer'] for i in layers],
                      [stats[i]['token_mean'].numpy() for i in layers],
                      [None if stats[i]['pe'] is None else stats[i]['pe'].numpy()
                       for i in layers], path,
                      f'Tokens x channels, grid {grid[0]}x{grid[1]}{in_title}')
        files.append(path)
    if first is not None:
        path = output(SIMILARITY_PNG)
        sim = cosine_similarity_grid(stats[sim_layer]['pe'], grid).numpy()
        plot_similarity(sim, path, f'Cosine similarity of pos_{sim_layer} '
                        f'({stats[sim_layer]["pe_source"]} PE){in_title}')
        files.append(path)
    return dict(stats=stats, files=files, notes=notes)
