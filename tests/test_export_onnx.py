"""ONNX export (pe_dense.deploy, tools/export_onnx.py) checked by onnxruntime against PyTorch.

Every method's backbone is exported with free height and width at a non-square size and run at
that size and at a second one; the UperNet segmentor's logits and the Mask R-CNN backbone + FPN go
through the command-line tool. Weights are randomised (every parameter and BN statistic), so a
wrong operator cannot hide behind zero-initialised gates.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import randomize
from torch import nn

from pe_dense import deploy

onnxruntime = pytest.importorskip('onnxruntime')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'export_onnx.py')
METHODS = ['abs', 'none', 'peg', 'lape', 'pvg', 'mpvg', 'rope-axial', 'rope-mixed']


def within_bound(check):
    """The tool's decision, recomputed from its JSON: every output's largest |difference| is at
    most rtol x its largest |value| + atol."""
    return all(d <= deploy.RTOL * v + deploy.ATOL
               for d, v in zip(check['max_abs_diff'], check['max_abs_value']))



def mini_config(kind, method):
    name = (f'mask-rcnn_vit-adapter-ti-{method}_fpn_mini.py' if kind == 'det'
            else f'upernet_vit-adapter-ti-{method}_mini.py')
    return os.path.join(ROOT, 'configs', 'mini', name)


@pytest.mark.parametrize('method', METHODS)
def test_backbone_export_dynamic(method, tmp_path):
    """The detection backbone (windowed attention, the PE of ``method``) exported at 96x128 with
    free sizes matches PyTorch at 96x128 and at 160x64 (other orientation, other level sizes)."""
    torch.manual_seed(0)
    model = deploy.build_model(mini_config('det', method), logger=lambda msg: None)
    backbone = deploy.export_module(model, 'backbone')
    randomize(backbone, seed=3)
    path = str(tmp_path / 'backbone.onnx')
    names = deploy.export_onnx(backbone, torch.randn(1, 3, 96, 128), path, dynamic=True)
    assert names == ['output0', 'output1', 'output2', 'output3']
    session = deploy.onnx_session(path)
    for h, w in [(96, 128), (160, 64)]:
        result = deploy.compare(backbone, session, torch.randn(1, 3, h, w))
        assert [d.shape for d in result] == [(1, 192, h // s, w // s) for s in (4, 8, 16, 32)]
        assert all(d.within() for d in result), result
    ops = deploy.onnx_operators(path)
    # One GridSample per value level: 3 per injector (4), 1 per extractor (4 + 2 extra).
    assert ops['GridSample'] == 4 * 3 + 6
    # Resize: the ViT maps to strides 4, 8 and 32, and the learned table (4x4 for pretrain_size
    # 64) resampled to the 6x8 grid by the methods that have one, once per place that reads it
    # (a traced graph has no cache): PVG at the input and in its LayerNorm chain, MPVG also in
    # its Last LN after the last block. The rotary methods rotate q and k by a table computed from
    # the grid's coordinates (no Resize).
    table_reads = {'abs': 1, 'none': 0, 'peg': 0, 'lape': 1, 'pvg': 2, 'mpvg': 3, 'rope-axial': 0,
                   'rope-mixed': 0}[method]
    assert ops['Resize'] == 3 + table_reads
    # Conv: patch embedding 1, spatial prior module 10, ConvFFN depth-wise 3 levels x 6
    # extractors; PEG adds its depth-wise 3x3.
    assert ops['Conv'] == 29 + (method == 'peg')


def test_dynamic_export_at_the_pretraining_size(tmp_path):
    """Exported at 64x64, where the 4x4 patch grid equals the learned table (pretrain_size 64):
    the table must still be resampled in the graph (MPVG reads it in three places), so that the
    file is right at 96x128. Without that, the size comparison fixes 64x64 into the graph. The
    parity check fails once the PyTorch weights differ from the exported ones."""
    torch.manual_seed(0)
    backbone = deploy.export_module(
        deploy.build_model(mini_config('seg', 'mpvg'), logger=lambda msg: None), 'backbone')
    randomize(backbone, seed=4)
    path = str(tmp_path / 'backbone.onnx')
    deploy.export_onnx(backbone, torch.randn(1, 3, 64, 64), path, dynamic=True)
    session = deploy.onnx_session(path)
    for h, w in [(64, 64), (96, 128)]:
        result = deploy.compare(backbone, session, torch.randn(1, 3, h, w))
        assert all(d.within() for d in result), result
    # The relative bound still tells a wrong graph from rounding: the same file against the
    # backbone with one block's attention projection 1 % larger fails it on every output.
    with torch.no_grad():
        backbone.blocks[5].attn.proj.weight.mul_(1.01)
    changed = deploy.compare(backbone, session, torch.randn(1, 3, 96, 128))
    assert not any(d.within() for d in changed), changed
    assert min(d.rel_diff for d in changed) > 10 * deploy.RTOL


def test_opset_written_is_the_opset_asked_for(tmp_path):
    """The file imports the opset asked for; one the exporter cannot write is an error and leaves
    no file (torch's exporter writes 18 when it cannot convert down)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(1, 4)).eval()
    image = torch.randn(1, 3, 8, 8)
    out = str(tmp_path / 'm.onnx')
    deploy.export_onnx(model, image, out, opset=deploy.OPSET)
    assert deploy.file_opset(out) == deploy.OPSET
    os.remove(out)
    with pytest.raises(ValueError, match='opset 5 was asked for'):
        deploy.export_onnx(model, image, out, opset=5)
    assert not os.path.exists(out)


def test_difference_bound():
    """A Difference's bound is rtol x the output's largest |value| + atol."""
    d = deploy.Difference((1,), max_abs_diff=3e-4, max_abs_ref=2.0)
    assert d.rel_diff == pytest.approx(1.5e-4)
    assert d.within(rtol=1e-4, atol=1e-4) and not d.within(rtol=1e-4, atol=0.0)
    assert deploy.Difference((1,), 0.0, 0.0).within(rtol=0.0, atol=0.0)


def test_export_where_a_window_row_is_one_is_refused(tmp_path):
    """At 64 pixels the mini detection backbone's 4x4 patch grid is one row of 4x4 windows:
    tracing fixes that count of 1 into the graph (torch.export treats sizes of 1 as constants),
    so the dynamic export is refused with a hint to export at a larger size."""
    torch.manual_seed(0)
    backbone = deploy.export_module(
        deploy.build_model(mini_config('det', 'abs'), logger=lambda msg: None), 'backbone')
    with pytest.raises(RuntimeError, match='Export at a larger size'):
        deploy.export_onnx(backbone, torch.randn(1, 3, 64, 96), str(tmp_path / 'x.onnx'),
                           dynamic=True)


def test_size_fixed_by_tracing_is_an_error(tmp_path):
    """A model that compares a size derived from its input (the patch grid, W // 16) with the
    traced one cannot be exported with free sizes. torch.export does not refuse it (it only
    refuses comparisons of the input size itself): it records a run-time assertion, which ONNX
    drops. The export says so instead of writing a file that fails at other sizes."""
    class SizeDependent(nn.Module):
        def forward(self, x):
            if x.shape[-1] // 16 == 6:
                return x * 2
            return x

    with pytest.raises(RuntimeError, match=r'only takes \(64, 96\) inputs'):
        deploy.export_onnx(SizeDependent(), torch.randn(1, 3, 64, 96),
                           str(tmp_path / 'x.onnx'), dynamic=True)


def test_dynamic_graph_needs_multiples_of_32(tmp_path):
    """What the docs say of other sizes: the dynamic graph refuses them in onnxruntime (an
    element-wise op cannot broadcast), and a dynamic export at such a size is refused up front."""
    torch.manual_seed(0)
    backbone = deploy.export_module(
        deploy.build_model(mini_config('det', 'abs'), logger=lambda msg: None), 'backbone')
    path = str(tmp_path / 'backbone.onnx')
    with pytest.raises(ValueError, match='multiples of 32'):
        deploy.export_onnx(backbone, torch.randn(1, 3, 100, 128), path, dynamic=True)
    deploy.export_onnx(backbone, torch.randn(1, 3, 96, 128), path, dynamic=True)
    session = deploy.onnx_session(path)
    image = torch.randn(1, 3, 100, 130).numpy()
    with pytest.raises(Exception, match='broadcast'):
        session.run(None, {'image': image})


def run_tool(*args):
    proc = subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def test_tool_upernet_logits_dynamic(tmp_path):
    """tools/export_onnx.py on the UperNet mini config: the logits (150 classes, stride 4) match at
    the export size and at the second size, and the JSON records both checks."""
    out, report = tmp_path / 'upernet.onnx', tmp_path / 'report.json'
    code, log = run_tool(mini_config('seg', 'mpvg'), '--out', str(out), '--shape', '96', '160',
                         '--dynamic', '--second-shape', '128', '64', '--repeats', '1',
                         '--json', str(report))
    assert code == 0, log
    data = json.loads(report.read_text())
    assert [c['shape'] for c in data['checks']] == [[96, 160], [128, 64]]
    assert [c['output_shapes'] for c in data['checks']] == [[[1, 150, 24, 40]],
                                                             [[1, 150, 32, 16]]]
    assert all(within_bound(c) for c in data['checks'])
    assert data['rtol'] == deploy.RTOL and data['atol'] == deploy.ATOL
    assert all(c['torch_ms'] > 0 and c['onnxruntime_ms'] > 0 for c in data['checks'])
    assert data['opset'] == deploy.OPSET and data['ok'] is True
    assert 'parity: largest relative difference' in log and ': ok' in log


def test_tool_mask_rcnn_features_from_checkpoint(tmp_path):
    """The Mask R-CNN backbone + FPN (five maps) from a saved checkpoint: the file's weights are
    the ones exported (a checkpoint of other weights would fail the parity check). Static graph at
    80x100, not multiples of 32: the backbone pads to 96x128 inside the graph, as in PyTorch."""
    torch.manual_seed(0)
    model = deploy.build_model(mini_config('det', 'lape'), logger=lambda msg: None)
    randomize(model.backbone, seed=5)
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    out, report = tmp_path / 'det.onnx', tmp_path / 'report.json'
    code, log = run_tool(mini_config('det', 'lape'), str(ckpt), '--out', str(out), '--shape',
                         '80', '100', '--repeats', '1', '--json', str(report))
    assert code == 0, log
    assert f'loaded {ckpt}' in log
    check, = json.loads(report.read_text())['checks']
    assert check['output_shapes'] == [[1, 256, 96 // s, 128 // s] for s in (4, 8, 16, 32)] + [
        [1, 256, 2, 2]]
    assert within_bound(check)
    rebuilt = deploy.build_model(mini_config('det', 'lape'), str(ckpt), logger=lambda msg: None)
    assert torch.equal(rebuilt.backbone.blocks[0].attn.qkv.weight,
                       model.backbone.blocks[0].attn.qkv.weight)


def test_tool_classifier_logits_dynamic(tmp_path):
    """The pre-training classifier (PEG, class token, 64x64 training size) exported with free
    sizes: its logits match at 64x96 and at 96x64."""
    report = tmp_path / 'report.json'
    code, log = run_tool(os.path.join(ROOT, 'configs', 'mini', 'deit-ti-peg_mini.py'), '--out',
                         str(tmp_path / 'cls.onnx'), '--shape', '64', '96', '--dynamic',
                         '--second-shape', '96', '64', '--repeats', '1', '--json', str(report))
    assert code == 0, log
    checks = json.loads(report.read_text())['checks']
    assert [c['output_shapes'] for c in checks] == [[[1, 3]], [[1, 3]]]  # the 3 mini shape classes
    assert all(within_bound(c) for c in checks)


def test_checkpoint_that_does_not_fit(tmp_path):
    """A checkpoint of another model is refused with the keys that do not fit, not half-loaded."""
    ckpt = tmp_path / 'other.pth'
    torch.save({'state_dict': {'head.weight': torch.zeros(3, 3)}}, ckpt)
    # Nothing in it for the backbone: the backbone's loader stops it first (CheckpointLayoutError,
    # a ValueError).
    with pytest.raises(ValueError, match=r"ViTAdapter at 'backbone\.' gets no weights"):
        deploy.build_model(mini_config('seg', 'abs'), str(ckpt), logger=lambda msg: None)


def test_tool_argument_errors(tmp_path):
    code, log = run_tool(mini_config('seg', 'abs'), '--out', str(tmp_path / 'x.onnx'),
                         '--second-shape', '64', '64')
    assert code == 2 and '--second-shape needs --dynamic' in log
    code, log = run_tool(mini_config('seg', 'abs'), str(tmp_path / 'missing.pth'), '--out',
                         str(tmp_path / 'x.onnx'))
    assert code != 0 and 'missing.pth does not exist' in log
    code, log = run_tool(mini_config('seg', 'abs'), '--out', str(tmp_path / 'x.onnx'),
                         '--shape', '16', '64')
    assert code != 0 and 'between 32 and' in log
    code, log = run_tool(mini_config('seg', 'abs'), '--out', str(tmp_path / 'x.onnx'),
                         '--shape', '64', '96', '--dynamic', '--second-shape', '100', '150')
    assert code == 2 and '--second-shape 100 150: a dynamic export takes' in log
    code, log = run_tool(mini_config('seg', 'abs'), '--out', str(tmp_path / 'x.onnx'),
                         '--shape', '64', '64', '--part', 'backbone', '--opset', '5')
    assert code != 0 and 'opset 5 was asked for' in log
    assert not (tmp_path / 'x.onnx').exists()


@pytest.mark.parametrize('size', [(6, 6), (7, 13), (13, 7), (24, 40), (1, 9)])
@pytest.mark.parametrize('out', [1, 2, 3, 6])
def test_matmul_adaptive_pool_equals_torch(size, out):
    """The export form of adaptive average pooling gives nn.AdaptiveAvgPool2d's values, windows
    that do not divide the input included."""
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    ref = nn.AdaptiveAvgPool2d(out)(x)
    got = deploy.MatmulAdaptiveAvgPool2d(out)(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-12)


def test_exportable_replaces_only_adaptive_pools():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.ReLU()))
    copy = deploy.exportable(model)
    assert isinstance(copy[1][0], deploy.MatmulAdaptiveAvgPool2d)
    assert copy[1][0].output_size == (3, 3)
    assert isinstance(model[1][0], nn.AdaptiveAvgPool2d)  # the original is untouched
    x = torch.randn(1, 3, 10, 7)
    assert torch.allclose(copy(x), model(x), atol=1e-6)
