"""ONNX export of pe-dense models, checked against PyTorch with onnxruntime on the CPU.

What is exported (:func:`export_module`):

- ``part='backbone'``: the ViT-Adapter backbone, image -> its four maps (strides 4, 8, 16, 32);
- ``part='model'``: for an mmseg segmentor (UperNet), image -> the decode head's logits at
  stride 4 (``model(x, mode='tensor')``; mmseg resizes them to the image afterwards); for an mmdet
  detector (Mask R-CNN), image -> backbone + FPN, the five maps the RPN and RoI heads read. The
  RPN, RoI heads and their post-processing (NMS, RoIAlign, mask pasting) stay in PyTorch; for an
  mmpretrain ``ImageClassifier`` (the pre-training configs), image -> class logits.

The graph comes from ``torch.export`` (``torch.onnx.export(..., dynamo=True)``) at opset
:data:`OPSET`. The input is a normalised ``(1, 3, H, W)`` float32 batch, as the data preprocessor
hands it to the backbone. With ``dynamic=True`` the height and width are free (at least 32 pixels,
at most :data:`MAX_SIDE`): the backbone pads to a multiple of 32 inside the graph, as it does in
PyTorch, so the outputs have the sizes PyTorch gives for the same input.

Operators: the deformable attention is traced in mmcv's per-level ``grid_sample`` form and becomes
one ``GridSample`` (bilinear, zeros padding, ``align_corners=0``) per value level, then ``Mul`` and
``ReduceSum`` with the attention weights. The position encodings are plain arithmetic on the
parameters: a learned table resampled to the grid is ``Resize`` (bicubic; not emitted when the
grid equals the table), PEG's depth-wise convolution is ``Conv`` with ``group = C``, and LaPE's and
MPVG's per-block layer norms are ``LayerNormalization``.
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

OPSET = 20
MAX_SIDE = 4096
MIN_BLOCKS = 2
PARTS = ('backbone', 'model')


class _Features(nn.Module):
    """``model.extract_feat``: a detector's backbone + neck (the maps its heads read)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.model.extract_feat(image))


class _Logits(nn.Module):
    """``mode='tensor'`` output: a segmentor's decode-head logits, a classifier's class logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image, None, mode='tensor')


def build_model(config, checkpoint: Optional[str] = None, logger=print) -> nn.Module:
    """The model of an mmdet / mmseg / mmpretrain config (a path or a ``Config``) in eval mode on
    the CPU, SyncBN turned into BN, with the weights of ``checkpoint`` (all of them: a checkpoint
    that leaves a parameter unset or holds other parameters is refused) or, without one, as
    constructed (random; a ``Pretrained`` init_cfg is not loaded)."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner.checkpoint import _load_checkpoint

    import pe_dense  # noqa: F401  (registers the backbones and the safe checkpoint loader)

    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if 'model' not in cfg:
        raise ValueError(f'{getattr(cfg, "filename", config)} has no `model` entry')
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if checkpoint:
        ckpt = _load_checkpoint(checkpoint, map_location='cpu')
        state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
        state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f'{checkpoint} does not fit this config\'s model: {len(result.missing_keys)} '
                f'missing keys (e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} '
                f'unexpected (e.g. {result.unexpected_keys[:3]}). Pass the checkpoint of a model '
                'trained with this config (a work_dirs/.../iter_N.pth or epoch_N.pth).')
        logger(f'loaded {checkpoint}: all {len(state)} tensors')
    else:
        logger('no checkpoint given: exporting randomly initialised weights')
    return model.eval()


def export_module(model: nn.Module, part: str = 'model') -> nn.Module:
    """The module that is exported: ``model.backbone`` (``part='backbone'``) or the model up to
    its dense output (``'model'``, see the module docstring)."""
    if part not in PARTS:
        raise ValueError(f'part must be one of {PARTS}, got {part!r}')
    if part == 'backbone':
        return model.backbone.eval()
    if hasattr(model, 'decode_head') or type(model).__name__ == 'ImageClassifier':
        return _Logits(model).eval()
    if hasattr(model, 'roi_head') or hasattr(model, 'rpn_head'):
        return _Features(model).eval()
    raise ValueError(f'{type(model).__name__} is not an mmseg segmentor, an mmdet detector with '
                     'RPN/RoI heads or an mmpretrain ImageClassifier; export its backbone with '
                     '--part backbone')


class MatmulAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two products with averaging matrices, built from the input size
    with integer arithmetic: the same windows (row ``i`` of ``o`` averages input rows
    ``floor(i * H / o)`` to ``ceil((i + 1) * H / o) - 1``), so traced with symbolic sizes it stays
    right at every size (the exporter's own form fixes its gather indices at the traced size)."""

    def __init__(self, output_size) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
        if any(s is None for s in size):
            raise ValueError('output sizes of None (keep the input size) are not supported')
        self.output_size = tuple(int(s) for s in size)

    @staticmethod
    def _averaging(n: int, out: int, like: Tensor) -> Tensor:
        """``(out, n)``: row i averages positions floor(i n / out) .. ceil((i + 1) n / out) - 1."""
        i = torch.arange(out, device=like.device)
        start = (i * n) // out
        end = ((i + 1) * n + out - 1) // out
        j = torch.arange(n, device=like.device)
        inside = (j[None] >= start[:, None]) & (j[None] < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = self._averaging(x.shape[-2], self.output_size[0], x)
        cols = self._averaging(x.shape[-1], self.output_size[1], x)
        return rows @ x @ cols.t()


def exportable(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.AdaptiveAvgPool2d`` (UperNet's pyramid pooling)
    replaced by :class:`MatmulAdaptiveAvgPool2d`."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.AdaptiveAvgPool2d):
            parent = module.get_submodule(name.rpartition('.')[0]) if '.' in name else module
            setattr(parent, name.rpartition('.')[2], MatmulAdaptiveAvgPool2d(child.output_size))
    return module


def export_onnx(module: nn.Module, image: Tensor, out: str, dynamic: bool = False,
                opset: int = OPSET) -> List[str]:
    """Writes ``module`` applied to ``image`` (``(1, 3, H, W)``) to the ONNX file ``out`` (weights
    inside the file) and returns the output names. ``dynamic``: free height and width.

    Raises:
        ValueError: a dynamic export at a size that is not a multiple of 32, or an ``opset`` the
            exporter could not write (torch's exporter starts at opset 18 and converts down only
            where the ONNX converter can; the file is removed).
    """
    with torch.no_grad():
        outputs = module(image)
    n_out = 1 if isinstance(outputs, Tensor) else len(outputs)
    names = ['output'] if n_out == 1 else [f'output{i}' for i in range(n_out)]
    dynamic_shapes = None
    if dynamic:
        if image.shape[-2] % 32 or image.shape[-1] % 32:
            raise ValueError(f'a dynamic export takes multiples of 32; got '
                             f'{tuple(image.shape[-2:])}')
        # Sides of 32 * k pixels, k from MIN_BLOCKS: below that, level sizes of 1 would be
        # specialised into the graph.
        dynamic_shapes = ({2: 32 * torch.export.Dim('height_32', min=MIN_BLOCKS,
                                                    max=MAX_SIDE // 32),
                           3: 32 * torch.export.Dim('width_32', min=MIN_BLOCKS,
                                                    max=MAX_SIDE // 32)},)
    with torch.no_grad():
        # torch.export first, so that a size it cannot keep free is an error here, not a silent
        # fall-back of the ONNX exporter to a static graph.
        exported = torch.export.export(exportable(module), (image,),
                                       dynamic_shapes=dynamic_shapes, strict=False)
        if dynamic:
            _check_sizes_stay_free(exported, image)
        program = torch.onnx.export(exported, (image,), dynamo=True, opset_version=opset,
                                    input_names=['image'], output_names=names,
                                    external_data=False, verbose=False)
    program.save(out, external_data=False)
    written = file_opset(out)
    if written != opset:
        os.remove(out)
        raise ValueError(f'opset {opset} was asked for, but torch\'s exporter could only write '
                         f'opset {written} for this model (it converts below opset 18 where it '
                         f'can, and keeps 18 otherwise); nothing was written. Use an opset of at '
                         f'least 18 (default {OPSET})')
    if dynamic and not all(d.dim_param for d in _input_dims(out)[2:]):
        raise RuntimeError(f'{out}: the exported input has a fixed size; the export was not '
                           'dynamic')
    return names


def file_opset(path: str) -> int:
    """The version of the default (``ai.onnx``) operator set an ONNX file imports."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx'))


def _check_sizes_stay_free(exported, image: Tensor) -> None:
    """Runs the exported program at another size (64 pixels taller and wider). A comparison with
    the traced size somewhere in the model can fix that size into the graph as a run-time
    assertion, which ONNX drops: the file would then fail or be wrong at other sizes."""
    other = image.new_zeros(*image.shape[:2], image.shape[2] + 64, image.shape[3] + 64)
    try:
        exported.module()(other)
    except Exception as e:  # the assertion's own error type varies across torch versions
        raise RuntimeError(
            f'the traced graph only takes {tuple(image.shape[2:])} inputs, not '
            f'{tuple(other.shape[2:])}: {str(e)[:300]}. Export at a larger size: sizes of 1 (a '
            'feature level or a row of attention windows) are fixed into the graph when traced.'
        ) from e


def _input_dims(path: str):
    import onnx
    return onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim


def onnx_operators(path: str) -> Dict[str, int]:
    """Operator type -> count in the graph of the ONNX file ``path`` (functions inlined by the
    exporter's optimiser)."""
    import onnx
    counts: Dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def onnx_session(path: str, threads: Optional[int] = None):
    """An onnxruntime CPU session of ``path`` using ``threads`` threads (default: PyTorch's)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


# The export check's bound (tools/export_onnx.py --rtol / --atol): an output passes when its
# largest |difference| is at most RTOL x its largest |value| plus the floor ATOL. The bound is
# relative because fp32 rounding differences grow with the magnitude of the values: onnxruntime
# and PyTorch run other kernels (other summation orders), and how those round depends on the CPU
# (AVX2 or AVX-512) and the thread count. Measured on the mini Mask R-CNN backbone + FPN (maps up
# to about 20 in magnitude): relative differences 6e-7 to 2e-6 with AVX-512 and with AVX2 kernels,
# 1 and 2 threads, where an absolute 1e-4 had failed on one CPU; a 1 % change of one attention
# projection of the backbone gives relative differences above 1e-3 (tests/test_export_onnx.py).
RTOL = 1e-4
ATOL = 1e-5


class Difference(NamedTuple):
    """PyTorch vs onnxruntime on one output: its shape, the largest absolute difference, the
    largest absolute PyTorch value (the output's scale) and their ratio."""

    shape: Tuple[int, ...]
    max_abs_diff: float
    max_abs_ref: float

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_ref, 1e-30)

    def within(self, rtol: float = RTOL, atol: float = ATOL) -> bool:
        """``max|diff| <= rtol * max|ref| + atol``."""
        return self.max_abs_diff <= rtol * self.max_abs_ref + atol


def compare(module: nn.Module, session, image: Tensor) -> List[Difference]:
    """A :class:`Difference` per output, PyTorch vs onnxruntime on ``image``.
    Raises ``RuntimeError`` if the two disagree on the number or the shapes of the outputs."""
    with torch.no_grad():
        ref = module(image)
    ref = [ref] if isinstance(ref, Tensor) else list(ref)
    got = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    if len(got) != len(ref):
        raise RuntimeError(f'onnxruntime gave {len(got)} outputs, PyTorch {len(ref)}')
    result = []
    for r, g in zip(ref, got):
        if tuple(g.shape) != tuple(r.shape):
            raise RuntimeError(f'output shape {tuple(g.shape)} from onnxruntime, '
                               f'{tuple(r.shape)} from PyTorch')
        result.append(Difference(tuple(r.shape), float((torch.from_numpy(g) - r).abs().max()),
                                 float(r.abs().max())))
    return result


def latency(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def latencies(module: nn.Module, session, image: Tensor, repeats: int = 5) -> Tuple[float, float]:
    """(PyTorch, onnxruntime) median milliseconds per forward on ``image``, PyTorch in
    inference mode with the thread count onnxruntime was given."""
    feed = {session.get_inputs()[0].name: image.numpy()}

    def torch_forward():
        with torch.inference_mode():
            module(image)

    return (latency(torch_forward, repeats), latency(lambda: session.run(None, feed), repeats))


def check_shapes(shapes: Sequence[Sequence[int]]) -> List[Tuple[int, int]]:
    """Validates ``(H, W)`` pairs for export: each side at least 32 and at most
    :data:`MAX_SIDE` pixels."""
    out = []
    for hw in shapes:
        h, w = (int(v) for v in hw)
        if min(h, w) < 32 or max(h, w) > MAX_SIDE:
            raise ValueError(f'image size {h}x{w}: each side must be between 32 and {MAX_SIDE} '
                             'pixels')
        out.append((h, w))
    return out
