"""The ViT-Adapter backbone: output shapes for every method from both registries, any input size,
parameter count of the published Tiny backbone, attention variants, gradient checkpointing, and
the adapter's wiring (injector, extractors, ConvFFN) against a written-out computation."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import METHODS, randomize, small_backbone

from pe_dense.models import ViTAdapter
from pe_dense.models.backbones import Attention
from pe_dense.models.ops import MSDeformAttn


def expected_shapes(b, h, w):
    hp, wp = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    return [(b, 192, hp // s, wp // s) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize('method', METHODS)
def test_every_method_from_both_registries_any_size_train_and_eval(method):
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    det = DET.build(dict(type='ViTAdapter', pos_embed=dict(type=method),
                         window_attn=[True, True, False] * 4, window_size=3))
    seg = SEG.build(dict(type='ViTAdapter', pos_embed=dict(type=method),
                         vit_feature='per_interaction'))
    for model, (h, w) in ((det, (64, 64)), (seg, (96, 64)), (det, (70, 100))):
        model.eval()
        with torch.no_grad():
            outs = model(torch.randn(1, 3, h, w))
        assert [tuple(o.shape) for o in outs] == expected_shapes(1, h, w)
        assert all(torch.isfinite(o).all() for o in outs)
    seg.train()
    outs = seg(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == expected_shapes(2, 64, 96)
    sum(o.mean() for o in outs).backward()
    grads = [p.grad for p in seg.pos_embed.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('vit_feature', ['last', 'per_interaction', 'none'])
def test_outputs_are_contiguous_so_mmcv_roi_align_reads_them_right(vit_feature):
    # mmcv's RoIAlign reads raw NCHW memory; a channels-last view (what token sequences reshape
    # into) gives it wrong features without any error. torchvision's roi_align honours strides.
    from mmcv.ops import roi_align
    from torchvision.ops import roi_align as tv_roi_align
    model = randomize(small_backbone('AbsolutePE', vit_feature=vit_feature))
    rois = torch.tensor([[0, 3.0, 5.0, 40.0, 30.0], [1, 10.0, 0.0, 63.0, 50.0]])
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            outs = model(torch.randn(2, 3, 64, 64))
        for stride, fmap in zip((4, 8, 16, 32), outs):
            assert fmap.is_contiguous()
            ours = roi_align(fmap, rois, (7, 7), 1 / stride, 2, 'avg', True)
            ref = tv_roi_align(fmap, rois, (7, 7), 1 / stride, 2, aligned=True)
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_parameter_count_matches_the_published_tiny_backbone():
    model = ViTAdapter()
    n = sum(p.numel() for p in model.parameters())
    # The published ViT-Adapter-T backbone has 7,966,640 parameters, 192 of them in the unused
    # class-token slot of its (1, 197, 192) position embedding, which this backbone drops.
    assert n == 7_966_640 - 192


def test_non_multiple_of_32_equals_explicit_zero_padding():
    model = randomize(small_backbone('PVG'))
    img = torch.randn(1, 3, 70, 100)
    padded = F.pad(img, (0, 28, 0, 26))
    with torch.no_grad():
        a, b = model(img), model(padded)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_batch_padded_by_mmdet_preprocessor():
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    from mmdet.structures import DetDataSample
    pre = DetDataPreprocessor(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                              bgr_to_rgb=True, pad_size_divisor=32)
    imgs = [torch.randint(0, 255, (3, 70, 100), dtype=torch.uint8),
            torch.randint(0, 255, (3, 90, 64), dtype=torch.uint8)]
    samples = [DetDataSample(metainfo=dict(img_shape=i.shape[1:], ori_shape=i.shape[1:]))
               for i in imgs]
    batch = pre(dict(inputs=imgs, data_samples=samples), training=False)['inputs']
    assert batch.shape == (2, 3, 96, 128)
    model = small_backbone('AbsolutePE', window_attn=[True, True, False] * 4, window_size=5)
    with torch.no_grad():
        outs = model(batch)
        single = model(batch[:1])
    assert [tuple(o.shape) for o in outs] == expected_shapes(2, 96, 128)
    # Eval mode: each image of the batch gets what it gets alone.
    for o, s in zip(outs, single):
        assert torch.allclose(o[:1], s, atol=1e-4)


def reference_window_attention(attn, x, grid):
    """Windowed attention written out: qkv, zero-pad the grid, attend inside each window."""
    b, n, c = x.shape
    h, w = grid
    ws, m, d = attn.window_size, attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).view(b, h, w, 3 * c)
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    qkv = F.pad(qkv, (0, 0, 0, wp - w, 0, hp - h))
    out = torch.zeros(b, hp, wp, c)
    for i in range(0, hp, ws):
        for j in range(0, wp, ws):
            win = qkv[:, i:i + ws, j:j + ws].reshape(b, ws * ws, 3, m, d)
            q, k, v = win.unbind(2)  # (b, T, m, d)
            logits = torch.einsum('btmd,bsmd->bmts', q, k) / math.sqrt(d)
            o = torch.einsum('bmts,bsmd->btmd', logits.softmax(-1), v)
            out[:, i:i + ws, j:j + ws] = o.reshape(b, ws, ws, c)
    return attn.proj(out[:, :h, :w].reshape(b, n, c))


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('grid,ws', [((6, 9), 4), ((4, 4), 2), ((5, 3), 7)])
def test_windowed_attention_matches_written_out_reference(fused, grid, ws):
    torch.manual_seed(0)
    attn = Attention(24, 3, window_size=ws, fast_path=fused).eval()
    x = torch.randn(2, grid[0] * grid[1], 24)
    with torch.no_grad():
        assert torch.allclose(attn(x, grid), reference_window_attention(attn, x, grid), atol=1e-5)


def test_global_attention_fused_equals_explicit():
    torch.manual_seed(0)
    fused = Attention(24, 3, fast_path=True).eval()
    plain = Attention(24, 3, fast_path=False).eval()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 20, 24)
    assert torch.allclose(fused(x, (4, 5)), plain(x, (4, 5)), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    img = torch.randn(2, 3, 64, 64)
    results = []
    for with_cp in (False, True):
        model = randomize(small_backbone('MPVG', with_cp=with_cp)).train()
        outs = model(img)
        sum((o ** 2).mean() for o in outs).backward()
        results.append((outs, {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2):
        assert torch.allclose(a, b, atol=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 100
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-4, rtol=1e-3), name


def test_stochastic_depth_rates():
    model = ViTAdapter(drop_path_rate=0.1)
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])
    # Every extractor, the two extra ones included (as published), at the full rate.
    extractors = [inter.extractor for inter in model.interactions]
    extractors += list(model.interactions[-1].extra_extractors)
    assert [e.drop_path.drop_prob for e in extractors] == pytest.approx([0.1] * 6)


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match='vit_feature'):
        ViTAdapter(vit_feature='sum')
    with pytest.raises(ValueError, match='one per block'):
        ViTAdapter(window_attn=[True] * 5)
    with pytest.raises(ValueError, match='interaction_indexes'):
        ViTAdapter(interaction_indexes=[[0, 2], [4, 11]])
    with pytest.raises(KeyError, match='must be one of'):
        ViTAdapter(pos_embed=dict(type='Sinusoidal'))
    model = ViTAdapter().eval()
    with pytest.raises(ValueError, match='at least 32x32'):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(torch.randn(3, 64, 64))


# ----------------------------------------------------------------------------------------------
# The adapter's wiring against a written-out computation (non-square grid, float64).

def ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def cell_centres(h, w):
    """(h*w, 2): (x, y) of each cell centre of an h x w map in [0, 1], row-major."""
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    return torch.stack([xs.repeat(h), ys.repeat_interleave(w)], -1)


def bilinear_by_hand(fmap, x, y):
    """fmap (B, D, h, w); x, y (B, Q, P) in [0, 1] -> (B, Q, P, D): bilinear, zero outside the map,
    pixel (i, j) centred at ((j + 0.5) / w, (i + 0.5) / h)."""
    b, d, h, w = fmap.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = px.floor(), py.floor()
    flat = fmap.flatten(2)  # (B, D, h*w)
    out = 0
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        weight = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long().view(b, 1, -1)
        picked = flat.gather(2, index.expand(b, d, index.shape[-1])).view(b, d, *x.shape[1:])
        out = out + (weight * inside).unsqueeze(1) * picked
    return out.permute(0, 2, 3, 1)


def deformable_attention_by_hand(attn, query, feat, points, levels):
    """query (B, Q, C) and feat (B, S, C) already normalised; points (Q, 2) the reference (x, y)
    of each query; levels the (h, w) of the feat levels in their order in S."""
    b, q, _ = query.shape
    m, n_levels, n_points = attn.n_heads, attn.n_levels, attn.n_points
    value = F.linear(feat, attn.value_proj.weight, attn.value_proj.bias)
    d = value.shape[-1] // m
    offsets = F.linear(query, attn.sampling_offsets.weight, attn.sampling_offsets.bias)
    offsets = offsets.view(b, q, m, n_levels, n_points, 2)
    logits = F.linear(query, attn.attention_weights.weight, attn.attention_weights.bias)
    weights = logits.view(b, q, m, n_levels * n_points).softmax(-1)  # over levels x points
    weights = weights.view(b, q, m, n_levels, n_points)
    out = torch.zeros(b, q, m, d, dtype=query.dtype)
    start = 0
    for level, (h, w) in enumerate(levels):
        maps = value[:, start:start + h * w].reshape(b, h, w, m, d)
        start += h * w
        for head in range(m):
            fmap = maps[..., head, :].permute(0, 3, 1, 2)
            # Offsets are in cells of this level: x by the width, y by the height.
            x = points[:, 0].view(1, q, 1) + offsets[:, :, head, level, :, 0] / w
            y = points[:, 1].view(1, q, 1) + offsets[:, :, head, level, :, 1] / h
            sampled = bilinear_by_hand(fmap, x, y)  # (B, Q, P, D)
            out[:, :, head] += (weights[:, :, head, level, :, None] * sampled).sum(2)
    assert start == feat.shape[1]
    return F.linear(out.reshape(b, q, m * d), attn.output_proj.weight, attn.output_proj.bias)


def conv_ffn_by_hand(ffn, x, levels):
    """fc1 -> per level: tokens as an (h, w) map, depth-wise 3x3 conv -> GELU -> fc2."""
    hidden = F.linear(x, ffn.fc1.weight, ffn.fc1.bias)
    parts, start = [], 0
    for h, w in levels:
        tokens = hidden[:, start:start + h * w]
        start += h * w
        fmap = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        conv = ffn.dwconv.dwconv
        fmap = F.conv2d(fmap, conv.weight, conv.bias, padding=1, groups=fmap.shape[1])
        parts.append(fmap.flatten(2).transpose(1, 2))
    return F.linear(F.gelu(torch.cat(parts, 1)), ffn.fc2.weight, ffn.fc2.bias)


def capture_io(module, store, key):
    module.register_forward_hook(lambda m, a, out: store.__setitem__(key, (a, out)))


@pytest.mark.parametrize('fast_path', [True, False])
def test_adapter_wiring_matches_a_written_out_computation(fast_path):
    """Injector, extractor and extra extractor of a randomised backbone on a non-square 64 x 128
    image (ViT grid 4 x 8; adapter levels 8 x 16, 4 x 8, 2 x 4) against plain-torch formulas:
    reference points at cell centres in (x, y) order, offsets divided by (W, H) of their level,
    one softmax over levels x points per head, the adapter levels in stride order 8, 16, 32 with
    their level embeddings, and the ConvFFN's per-level maps."""
    model = randomize(small_backbone('AbsolutePE', fast_path=fast_path)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MSDeformAttn):  # offsets of a few cells: inside, across the border
                m.sampling_offsets.weight.mul_(0.5)
                m.sampling_offsets.bias.mul_(8.0)
    rec = {}
    capture_io(model.spm, rec, 'spm')
    first, last = model.interactions[0], model.interactions[-1]
    capture_io(first.injector, rec, 'injector')
    capture_io(first.extractor, rec, 'extractor')
    capture_io(last.extra_extractors[1], rec, 'extra')
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 128, dtype=torch.float64))
    grid, levels = (4, 8), [(8, 16), (4, 8), (2, 4)]

    # The adapter tokens: c2, c3, c4 in stride order, each plus its level embedding.
    _, (c1, *maps) = rec['spm']
    c = torch.cat([t.flatten(2).transpose(1, 2) + model.level_embed[i]
                   for i, t in enumerate(maps)], 1)
    (x, feat, _), out = rec['injector']
    assert torch.equal(feat, c)
    inj = first.injector
    attn = deformable_attention_by_hand(inj.attn, ln(x, inj.query_norm), ln(c, inj.feat_norm),
                                        cell_centres(*grid), levels)
    assert (attn.abs() > 0).all()
    torch.testing.assert_close(out, x + inj.gamma * attn, rtol=1e-9, atol=1e-9)

    points = torch.cat([cell_centres(h, w) for h, w in levels])
    for name, ext in (('extractor', first.extractor), ('extra', last.extra_extractors[1])):
        (query, feat, _, shapes), out = rec[name]
        assert [tuple(s) for s in shapes] == levels
        want = query + deformable_attention_by_hand(ext.attn, ln(query, ext.query_norm),
                                                    ln(feat, ext.feat_norm), points, [grid])
        want = want + conv_ffn_by_hand(ext.ffn, ln(want, ext.ffn_norm), levels)
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)



# ----------------------------------------------------------------------------------------------
# The output assembly against a written-out computation (patch size 16; 64 x 128 image: ViT grid
# 4 x 8, c1 16 x 32, adapter levels 8 x 16, 4 x 8, 2 x 4; float64; BN statistics randomised).

def resize_matrix(n_in, n_out, dtype):
    """(n_out, n_in): bilinear interpolation along one axis with half-pixel centres and no
    anti-aliasing: output cell i reads source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped
    at 0, between its floor and the next cell (the last cell repeated past the edge)."""
    m = torch.zeros(n_out, n_in, dtype=dtype)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        m[i, lo] += 1 - (src - lo)
        m[i, hi] += src - lo
    return m


def resize_by_hand(fmap, size):
    """(B, C, h, w) -> (B, C, *size), bilinear as above along each axis."""
    rows = resize_matrix(fmap.shape[-2], size[0], fmap.dtype)
    cols = resize_matrix(fmap.shape[-1], size[1], fmap.dtype)
    return torch.einsum('ih,bchw,jw->bcij', rows, fmap, cols)


def conv_transpose_2x2_by_hand(x, conv):
    """ConvTranspose2d(kernel 2, stride 2): input cell (i, j) writes the 2 x 2 block at
    (2i + a, 2j + q) with weight[:, :, a, q]; weight (C_in, C_out, 2, 2)."""
    b, _, h, w = x.shape
    y = torch.einsum('bcij,coaq->boiajq', x, conv.weight)
    return y.reshape(b, -1, 2 * h, 2 * w) + conv.bias.view(1, -1, 1, 1)


def batch_norm_by_hand(x, bn):
    """Eval-mode BatchNorm: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    def per_channel(t):
        return t.view(1, -1, 1, 1)
    return ((x - per_channel(bn.running_mean)) / torch.sqrt(per_channel(bn.running_var) + bn.eps)
            * per_channel(bn.weight) + per_channel(bn.bias))


ASSEMBLY_CASES = [('AbsolutePE', 'last', {}), ('AbsolutePE', 'per_interaction', {}),
                  ('AbsolutePE', 'none', {}), ('MPVG', 'last', dict(last_norm_at='output')),
                  ('MPVG', 'per_interaction', dict(last_norm_at='output'))]


@pytest.mark.parametrize('method,vit_feature,options', ASSEMBLY_CASES)
def test_output_assembly_matches_a_written_out_computation(method, vit_feature, options):
    """c2, c3, c4 split from the final adapter tokens in stride order; c1 = the spatial prior
    module's c1 + ConvTranspose(c2); the ViT tokens as a 4 x 8 map resized x4, x2, x1, x0.5 and
    added to c1..c4 (the final tokens to all four for 'last', the tokens after interaction i to
    output i for 'per_interaction', none for 'none'); then norm1..norm4."""
    model = randomize(small_backbone(dict(type=method, **options), vit_feature=vit_feature))
    model = model.double()
    rec = {}
    capture_io(model.spm, rec, 'spm')
    for i, interaction in enumerate(model.interactions):
        capture_io(interaction, rec, i)
    img = torch.randn(2, 3, 64, 128, dtype=torch.float64)
    with torch.no_grad():
        outs = model(img)
    grid, levels = (4, 8), [(8, 16), (4, 8), (2, 4)]
    sizes = [(16, 32), (8, 16), (4, 8), (2, 4)]

    with torch.no_grad():
        _, (c1, *_) = rec['spm']
        _, (_, c) = rec[3]
        tokens = [rec[i][1][0] for i in range(4)]  # ViT tokens after each interaction
        if method == 'MPVG':  # the Last LN on the tokens after the last interaction
            pe = model.pos_embed
            table = pe.weight.reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
            table = F.interpolate(table, size=grid, mode='bicubic', align_corners=False)
            table = table.flatten(2).transpose(1, 2)
            tokens[3] = ln(tokens[3], pe.last_norm) + ln(table, pe.last_pe_norm)
        # The tokens of different interactions differ by far more than the tolerance.
        assert (tokens[3] - tokens[0]).abs().max() > 0.5 * tokens[3].abs().max()
        start, maps = 0, []
        for h, w in levels:
            maps.append(c[:, start:start + h * w].transpose(1, 2).reshape(2, 192, h, w))
            start += h * w
        assert start == c.shape[1]
        maps.insert(0, c1 + conv_transpose_2x2_by_hand(maps[0], model.up))
        if vit_feature != 'none':
            chosen = tokens[3:] * 4 if vit_feature == 'last' else tokens
            for i, (t, size) in enumerate(zip(chosen, sizes)):
                fmap = t.transpose(1, 2).reshape(2, 192, *grid)
                maps[i] = maps[i] + resize_by_hand(fmap, size)
        want = [batch_norm_by_hand(m, getattr(model, f'norm{i + 1}')) for i, m in enumerate(maps)]
    assert [tuple(o.shape) for o in outs] == [(2, 192, *s) for s in sizes]
    # timm resamples the PE table in float32, so MPVG's outputs carry float32 rounding.
    tol = 1e-5 if method == 'MPVG' else 1e-9
    for i, (out, ref) in enumerate(zip(outs, want)):
        scale = ref.abs().max().item()
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol * scale, msg=f'output {i}')


def test_resize_by_hand_is_bilinear_on_known_answers():
    """The helper above on values worked out by hand: x2 along a row [0, 4] gives
    [0, 1, 3, 4] (edges clamped), x0.5 of [0, 2, 4, 6] gives the pair means [1, 5]."""
    row = torch.tensor([[[[0.0, 4.0]]]], dtype=torch.float64)
    assert resize_by_hand(row, (1, 4)).flatten().tolist() == [0.0, 1.0, 3.0, 4.0]
    row = torch.tensor([[[[0.0, 2.0, 4.0, 6.0]]]], dtype=torch.float64)
    assert resize_by_hand(row, (1, 2)).flatten().tolist() == [1.0, 5.0]
