"""RoPE-Axial and RoPE-Mixed (Heo et al., ECCV 2024; naver-ai/rope-vit) against their formulas
written out here with complex numbers: channel pairs (2i, 2i + 1) of q and k times
exp(j * angle_i(x, y)), x = t mod W, y = t div W; Axial: angle_i = x f_i (i < d/4) or
y f_{i - d/4}, f_k = 1 / theta^(4k / d); Mixed: angle_i = x f_x[i] + y f_y[i]. Non-square grids
throughout."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_scale, randomize

from pe_dense.checkpoint import guess_pos_embed, load_backbone_checkpoint
from pe_dense.models import PEViT, ViTAdapter
from pe_dense.models.backbones.vit import Block
from pe_dense.models.pos_embed import build_pos_encoding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('RoPEAxial', 'RoPEMixed')


def rope_pe(method, dim=48, heads=3, depth=2, **opts):
    torch.manual_seed(0)
    return build_pos_encoding(dict(type=method, **opts), embed_dim=dim, depth=depth,
                              pretrain_grid=(4, 4), num_heads=heads)


def written_angles(pe, index, grid, scale=(1.0, 1.0)):
    """``(M or 1, N, d/2)`` angles from the formulas; ``scale`` multiplies (x, y)."""
    h, w = grid
    d = pe.head_dim
    t = torch.arange(h * w, dtype=torch.float64)
    x, y = (t % w) * scale[0], torch.floor(t / w) * scale[1]
    if type(pe).__name__ == 'RoPEAxial':
        f = torch.tensor([1.0 / pe.theta ** (4 * k / d) for k in range(d // 4)],
                         dtype=torch.float64)
        return torch.cat([x[:, None] * f, y[:, None] * f], dim=1)[None]
    fx, fy = pe.freqs[index].detach().double()  # (M, d/2) each
    return x[None, :, None] * fx[:, None] + y[None, :, None] * fy[:, None]


def written_rotate(v, angles):
    """``v`` ``(B, M, N, d)`` times exp(j angle) on pairs (2i, 2i+1); angles ``(M|1, N, d/2)``."""
    z = torch.view_as_complex(v.double().reshape(*v.shape[:-1], -1, 2).contiguous())
    z = z * torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(z).reshape(v.shape)


def written_block_qk(block, x, angles, prefix=0):
    """Rotated q, k ``(B, M, P + N, d)`` of ``block`` for input tokens ``x`` (after LN1)."""
    b, n, c = x.shape
    m = block.attn.num_heads
    qkv = F.linear(block.norm1(x).double(), block.attn.qkv.weight.double(),
                   block.attn.qkv.bias.double())
    q, k, _ = qkv.view(b, n, 3, m, c // m).permute(2, 0, 3, 1, 4)
    q = torch.cat([q[:, :, :prefix], written_rotate(q[:, :, prefix:], angles)], dim=2)
    k = torch.cat([k[:, :, :prefix], written_rotate(k[:, :, prefix:], angles)], dim=2)
    return q, k, qkv.view(b, n, 3, m, c // m)[:, :, 2].transpose(1, 2)


def small_block(seed=0, **kwargs):
    torch.manual_seed(seed)
    block = Block(48, 3, **kwargs).eval()
    return randomize(block, seed=seed + 1)


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('prefix', [0, 1])
def test_rotated_q_and_k_of_a_block(method, prefix):
    """The rotation the block applies (its _rotate on the qkv projection) equals the complex
    product written out, on a 3x5 grid; prefix tokens pass unrotated; v is untouched."""
    pe, block = rope_pe(method), small_block()
    grid = (3, 5)
    x = torch.randn(2, prefix + 15, 48)
    rope = pe.block_rope(grid)[1]
    qkv = block.attn.qkv(block.norm1(x))
    got = block.attn._rotate(qkv, rope).view(2, prefix + 15, 3, 3, 16).permute(2, 0, 3, 1, 4)
    q, k, v = written_block_qk(block, x, written_angles(pe, 1, grid), prefix)
    for a, b in ((got[0], q), (got[1], k), (got[2], v)):
        assert_close_to_scale(a.double(), b, rel=1e-5)
    if prefix:
        plain = qkv.view(2, prefix + 15, 3, 3, 16).permute(2, 0, 3, 1, 4)
        assert torch.equal(got[:2, :, :, :prefix], plain[:2, :, :, :prefix])


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('fast_path', [True, False])
def test_block_output_equals_written_attention(method, fast_path):
    """The whole block (global attention, class token in front) against softmax(q k^T / sqrt(d)) v
    of the written-out rotated q and k, then projection, layer scale and MLP."""
    pe, block = rope_pe(method), small_block(fast_path=fast_path)
    grid = (3, 5)
    x = torch.randn(2, 16, 48)
    with torch.no_grad():
        got = block(x, grid, rope=pe.block_rope(grid)[0])
        q, k, v = written_block_qk(block, x, written_angles(pe, 0, grid), prefix=1)
        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(16)).softmax(-1) @ v
        attn = attn.transpose(1, 2).reshape(2, 16, 48)
        y = F.linear(attn, block.attn.proj.weight.double(), block.attn.proj.bias.double())
        h = x.double() + block.gamma1.double() * y
        want = h + block.gamma2.double() * block.mlp.double()(block.norm2.double()(h))
        block.float()
    assert_close_to_scale(got.double(), want, rel=1e-5)


@pytest.mark.parametrize('method', METHODS)
def test_logits_depend_only_on_offsets(method):
    """With the same q and k content at every token, q(t) . k(s) after rotation depends only on the
    offset (x_t - x_s, y_t - y_s): equal on every pair with the same offset, on a 4x6 grid and on
    a 5x3 grid, and not constant (the rotation acts)."""
    pe = rope_pe(method)
    block = small_block()
    token = torch.randn(1, 1, 48)
    by_offset = {}
    for grid in ((4, 6), (5, 3)):
        n = grid[0] * grid[1]
        qkv = block.attn.qkv(block.norm1(token.expand(1, n, 48)))
        qkv = block.attn._rotate(qkv, pe.block_rope(grid)[1]).view(1, n, 3, 3, 16)
        logits = torch.einsum('thd,shd->hts', qkv[0, :, 0], qkv[0, :, 1]).double()
        for t in range(n):
            for s in range(n):
                off = (t % grid[1] - s % grid[1], t // grid[1] - s // grid[1])
                by_offset.setdefault(off, []).append(logits[:, t, s])
    scale = max(v.abs().max().item() for vals in by_offset.values() for v in vals)
    for off, vals in by_offset.items():
        for v in vals[1:]:
            assert (v - vals[0]).abs().max().item() <= 1e-5 * scale, off
    spread = torch.stack([vals[0] for vals in by_offset.values()])
    assert (spread.max(0).values - spread.min(0).values).min().item() > 1e-2 * scale


@pytest.mark.parametrize('method', METHODS)
def test_windowed_attention_uses_global_coordinates(method):
    """Windowed attention (3x3 windows on a 5x7 grid, padded to 6x9 with zero q, k, v as the
    published ViT-Adapter) against the written-out form: every token rotated with its coordinates
    on the whole grid, softmax over its window including the padded positions (logit 0, value 0).
    Fast and reference paths both."""
    pe = rope_pe(method)
    grid, ws = (5, 7), 3
    x = torch.randn(1, 35, 48)
    for fast in (True, False):
        block = small_block(window_size=ws, fast_path=fast)
        got = block.attn(block.norm1(x), grid, pe.block_rope(grid)[0]).detach()
        q, k, v = written_block_qk(block, x, written_angles(pe, 0, grid))
        out = torch.zeros(1, 3, 35, 16, dtype=torch.float64)
        for wy in range(0, 6, ws):
            for wx in range(0, 9, ws):
                idx = [yy * 7 + xx for yy in range(wy, wy + ws) for xx in range(wx, wx + ws)
                       if yy < 5 and xx < 7]
                pad = ws * ws - len(idx)
                logits = q[:, :, idx] @ k[:, :, idx].transpose(-2, -1) / math.sqrt(16)
                logits = torch.cat([logits, logits.new_zeros(*logits.shape[:-1], pad)], -1)
                out[:, :, idx] = logits.softmax(-1)[..., :len(idx)] @ v[:, :, idx]
        want = F.linear(out.transpose(1, 2).reshape(1, 35, 48), block.attn.proj.weight.double(),
                        block.attn.proj.bias.double())
        assert_close_to_scale(got.double(), want, rel=1e-5)


def test_axial_and_mixed_initialisation_follow_rope_vit():
    """Axial: no parameters, theta 100. Mixed: theta 10, per block (2, M, d/2) frequencies, the
    first d/4 pairs of a head along (cos a, sin a) * f_k and the others along the orthogonal
    direction, |(f_x, f_y)| = f_k = 1 / 10^(4k / d)."""
    axial = rope_pe('RoPEAxial')
    assert axial.theta == 100 and list(axial.parameters()) == []
    mixed = rope_pe('RoPEMixed', depth=3)
    assert mixed.theta == 10 and [tuple(p.shape) for p in mixed.parameters()] == [(2, 3, 8)] * 3
    mag = torch.tensor([10.0 ** (-4 * k / 16) for k in range(4)])
    for f in mixed.freqs:
        first, second = f[:, :, :4].detach(), f[:, :, 4:].detach()  # (2, M, 4)
        assert torch.allclose(first.norm(dim=0), mag.expand(3, 4), rtol=1e-6)
        assert torch.allclose(second.norm(dim=0), mag.expand(3, 4), rtol=1e-6)
        assert (first * second).sum(0).abs().max() < 1e-6
        # one angle per head: every first-half pair points the same way
        direction = first / first.norm(dim=0)
        assert torch.allclose(direction, direction[:, :, :1].expand_as(direction), atol=1e-6)
    assert not torch.equal(mixed.freqs[0], mixed.freqs[1])


@pytest.mark.parametrize('method', METHODS)
def test_rescaled_coordinates_and_extrapolation(method):
    """coords='rescale' (EVA-02) scales positions to the 4x4 pre-training grid on an 8x6 grid;
    the default extrapolates integer indices; both agree on the pre-training grid."""
    ext, res = rope_pe(method), rope_pe(method, coords='rescale')
    for pe, scale in ((ext, (1.0, 1.0)), (res, (4 / 6, 4 / 8))):
        rope = pe.block_rope((8, 6))[0].double()
        angles = written_angles(pe, 0, (8, 6), scale)
        want = torch.cat([angles.sin().repeat_interleave(2, -1),
                          angles.cos().repeat_interleave(2, -1)], -1)
        assert_close_to_scale(rope, want, rel=1e-6)
    assert torch.equal(ext.block_rope((4, 4))[1], res.block_rope((4, 4))[1])


def test_with_ape_adds_the_table_and_options_are_checked():
    pe = rope_pe('RoPEMixed', with_ape=True)
    x = torch.randn(2, 12, 48)
    table = F.interpolate(pe.weight.detach().reshape(1, 4, 4, 48).permute(0, 3, 1, 2), (3, 4),
                          mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    assert_close_to_scale(pe.embed(x, (3, 4)).detach(), x + table, rel=1e-5)
    assert torch.equal(rope_pe('RoPEAxial').embed(x, (3, 4)), x)
    with pytest.raises(ValueError, match='coords must be one of'):
        rope_pe('RoPEAxial', coords='interpolate')
    with pytest.raises(ValueError, match='needs num_heads'):
        build_pos_encoding(dict(type='RoPEAxial'), embed_dim=48, depth=2)
    with pytest.raises(ValueError, match='multiple of 4'):
        rope_pe('RoPEMixed', dim=36, heads=6)
    for method in ('RoPEAxial', 'RoPEMixed'):
        for theta in (0, -5.0, 1.0, float('nan'), float('inf'), '100', True):
            with pytest.raises(ValueError, match='theta must be a number > 1'):
                rope_pe(method, theta=theta)
        with pytest.raises(ValueError, match='with_ape must be True or False'):
            rope_pe(method, with_ape='yes')
    assert rope_pe('RoPEAxial', theta=2).theta == 2.0


def tiny_adapter(method, **kwargs):
    torch.manual_seed(3)
    return ViTAdapter(pos_embed=dict(type=method), embed_dim=48, num_heads=3, depth=4,
                      pretrain_size=64, drop_path_rate=0.0, deform_num_heads=6,
                      interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], **kwargs).eval()


@pytest.mark.parametrize('method', METHODS)
def test_adapter_fast_and_reference_paths_and_bf16(method):
    """Detection layout (windows in blocks 0, 1, 3 with window 3 on a 4x6 grid): fast path equals
    reference path; bf16 autocast stays close to fp32 (rotation tables are computed in fp32)."""
    model = randomize(tiny_adapter(method, window_attn=[True, True, False, True],
                                   window_size=3), seed=4)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        fast = model(img)
        model.fast_path = False
        ref = model(img)
        model.fast_path = True
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(img)
            assert all(r.dtype == torch.float32 for r in model.pos_embed.block_rope((4, 6)))
    for a, b, c in zip(fast, ref, low):
        assert a.shape == c.shape
        assert_close_to_scale(a, b, rel=1e-4)
        assert_close_to_scale(c.float(), a, rel=0.05)


def test_classifier_checkpoint_into_adapter_uses_every_weight(tmp_path):
    """A RoPE-Mixed PEViT checkpoint (mmpretrain layout) into ViTAdapter: every ViT weight of the
    classifier is placed (frequencies included) but the class token and the final norm, and the
    adapter's ViT stream reads them."""
    torch.manual_seed(2)
    clf = PEViT(arch=dict(embed_dim=48, depth=4, num_heads=3), img_size=64,
                pos_embed=dict(type='RoPEMixed'), drop_path_rate=0.0)
    randomize(clf, seed=6)
    state = {f'backbone.{k}': v for k, v in clf.state_dict().items()}
    path = tmp_path / 'cls.pth'
    torch.save({'meta': {}, 'state_dict': state}, path)
    adapter = tiny_adapter('RoPEMixed')
    missing, unexpected = load_backbone_checkpoint(adapter, str(path))
    assert unexpected == []
    assert not [k for k in missing if k.startswith(('patch_embed.', 'blocks.', 'pos_embed.'))
                and not k.endswith(('.gamma1', '.gamma2'))]
    theirs = adapter.state_dict()
    unused = [k for k in clf.state_dict() if k not in theirs]
    assert sorted(unused) == ['cls_token', 'norm.bias', 'norm.weight']
    for k, v in clf.state_dict().items():
        if k in theirs:
            assert torch.equal(theirs[k], v), k
    assert [k for k in theirs if k.startswith('pos_embed.')] == [
        f'pos_embed.freqs.{i}' for i in range(4)]
    assert guess_pos_embed(clf.state_dict()) == 'RoPEMixed'


def classifier_file(tmp_path, method, **opts):
    """A tiny classifier of ``method`` saved in mmpretrain's layout; returns its path."""
    torch.manual_seed(2)
    clf = PEViT(arch=dict(embed_dim=48, depth=4, num_heads=3), img_size=64,
                pos_embed=dict(type=method, **opts), drop_path_rate=0.0)
    path = tmp_path / f'{method}.pth'
    torch.save({'meta': {}, 'state_dict': {f'backbone.{k}': v
                                           for k, v in clf.state_dict().items()}}, path)
    return str(path)


def test_files_without_the_position_encoding_weights_are_refused(tmp_path):
    """A file that lacks the weights of the backbone's position encoding (RoPE-Axial has none)
    stops the load instead of leaving the table or the frequencies at their initialisation; the
    convert tool stops too and names --pos-embed."""
    from pe_dense.checkpoint import CheckpointLayoutError
    axial, mixed = classifier_file(tmp_path, 'RoPEAxial'), classifier_file(tmp_path, 'RoPEMixed')
    for model, path, missing in (
            (tiny_adapter('AbsolutePE'), axial, r'pos_embed\.\{weight\}'),
            (tiny_adapter('RoPEMixed'), axial, r'pos_embed\.\{freqs\.\*\}'),
            (ViTAdapter(pos_embed=dict(type='RoPEMixed', with_ape=True), embed_dim=48,
                        num_heads=3, depth=4, pretrain_size=64, deform_num_heads=6,
                        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]), mixed,
             r'pos_embed\.\{weight\}')):
        with pytest.raises(CheckpointLayoutError, match=missing + '.*What to do: the file'):
            load_backbone_checkpoint(model, path)
    missing, unexpected = load_backbone_checkpoint(tiny_adapter('RoPEAxial'), axial)
    assert unexpected == [] and not [k for k in missing if k.startswith(
        ('patch_embed.', 'blocks.', 'pos_embed.')) and not k.endswith(('.gamma1', '.gamma2'))]
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        from convert_checkpoint import convert
    finally:
        sys.path.pop(0)
    config = os.path.join(ROOT, 'configs', 'mini', 'upernet_vit-adapter-ti-rope-axial_mini.py')
    tiny = dict(embed_dim=48, num_heads=3, depth=4, deform_num_heads=6,
                interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
    with open(tmp_path / 'tiny.py', 'w') as f:
        f.write(f"_base_ = [{config!r}]\nmodel = dict(backbone=dict(**{tiny!r}))\n")
    with pytest.raises(SystemExit, match=r'(?s)pos_embed\.\{weight\}.*no position-encoding '
                       r'weights.*--pos-embed NAME'):
        convert(axial, str(tmp_path / 'out.pth'), pos_embed='AbsolutePE',
                config=str(tmp_path / 'tiny.py'))
    assert not (tmp_path / 'out.pth').exists()


def test_onnx_export_parity_through_the_tool(tmp_path):
    """tools/export_onnx.py on the mini RoPE-Mixed classifier (class token, learned frequencies)
    with free sizes: onnxruntime's logits match PyTorch's at 64x96 and at 96x64."""
    pytest.importorskip('onnxruntime')
    from pe_dense import deploy
    report = tmp_path / 'report.json'
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'export_onnx.py'),
         os.path.join(ROOT, 'configs', 'mini', 'deit-ti-rope-mixed_mini.py'), '--out',
         str(tmp_path / 'cls.onnx'), '--shape', '64', '96', '--dynamic', '--second-shape', '96',
         '64', '--repeats', '1', '--json', str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads(report.read_text())['checks']
    assert [c['output_shapes'] for c in checks] == [[[1, 3]], [[1, 3]]]  # the 3 mini shape classes
    for c in checks:
        assert all(d <= deploy.RTOL * v + deploy.ATOL
                   for d, v in zip(c['max_abs_diff'], c['max_abs_value']))


@pytest.mark.parametrize('name, scope', [
    # the 1x schedule inherits the 3x one's custom_keys, so it stands for both
    ('mask_rcnn/mask-rcnn_vit-adapter-ti-rope-mixed_fpn_8xb2-1x_coco.py', 'mmdet'),
    ('upernet/upernet_vit-adapter-ti-rope-mixed_4xb2-160k_ade20k-512x512.py', 'mmseg')])
def test_dense_configs_keep_the_frequencies_out_of_weight_decay(name, scope):
    """The RoPE-Mixed dense configs' optimizers, as its runner builds it: each block's
    frequencies without weight decay (rope-vit), the attention weights of the blocks decayed."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, DefaultScope, init_default_scope
    init_default_scope(scope)
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', name))
    cfg.model.backbone.init_cfg = None
    # The UperNet configs train with fp16 (AmpOptimWrapper, GPU only); the parameter groups come
    # from the same constructor and paramwise_cfg with a plain wrapper.
    wrapper = dict(cfg.optim_wrapper, type='OptimWrapper')
    wrapper.pop('loss_scale', None)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
        optim = build_optim_wrapper(model, wrapper)
    decay = {id(p): g['weight_decay'] for g in optim.optimizer.param_groups for p in g['params']}
    params = dict(model.named_parameters())
    freqs = [n for n in params if n.startswith('backbone.pos_embed.freqs.')]
    assert len(freqs) == 12
    assert all(decay[id(params[n])] == 0.0 for n in freqs)
    assert decay[id(params['backbone.blocks.3.attn.qkv.weight'])] > 0
