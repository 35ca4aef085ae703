"""The ImageNet classifier backbone PEViT: parity with timm's DeiT / GAP ViT, each method's
equations written out by hand, its checkpoints in ViTAdapter, checkpoint routes into PEViT,
mmpretrain's ImageClassifier, and the errors."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pe_dense.checkpoint import load_backbone_checkpoint
from pe_dense.models import PEViT, ViTAdapter

SMALL = dict(embed_dim=48, depth=4, num_heads=2)
# (method, pooling, final_norm) as the papers use them, plus the other combinations the
# interface allows (class token through PEG and PVG, GAP with the table methods).
CASES = [
    ('AbsolutePE', 'cls', 'before_pool'), ('AbsolutePE', 'gap', 'before_pool'),
    ('AbsolutePE', 'gap', 'after_pool'), ('NoPE', 'gap', 'before_pool'),
    ('PEG', 'gap', 'before_pool'), ('PEG', 'cls', 'before_pool'),
    ('LaPE', 'cls', 'before_pool'), ('LaPE', 'gap', 'after_pool'),
    ('PVG', 'gap', 'before_pool'), ('PVG', 'cls', 'before_pool'),
    ('MPVG', 'gap', 'before_pool'),
]


def randomize(model, seed=1):
    """Every parameter random: LayerNorm weights around 1 and biases around 0 (never exactly),
    matrices scaled by 1/sqrt(fan-in) so that deep stacks stay O(1), tables and tokens O(0.5)."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            if id(p) in norms:
                p.copy_(1 + 0.3 * noise)
            elif p.dim() == 1:
                p.copy_(0.3 * noise)
            elif p.dim() == 3:  # PE tables, class token (1, N, C)
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return model


def classifier(method, pooling='gap', final_norm='before_pool', seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault('arch', SMALL)
    kwargs.setdefault('img_size', 64)
    model = PEViT(pos_embed=dict(type=method) if isinstance(method, str) else method,
                  pooling=pooling, final_norm=final_norm, drop_path_rate=0.0, **kwargs)
    return randomize(model.eval(), seed + 1)


# ------------------------------------------------------------------ parity with timm
def test_deit_tiny_matches_timm_logits_and_pre_logits():
    torch.manual_seed(0)
    deit = randomize(timm.create_model('deit_tiny_patch16_224', pretrained=False).eval(), 3)
    ours = PEViT(arch='tiny', drop_path_rate=0.0).eval()
    ours.load_state_dict(deit.state_dict(), strict=True)  # head.* dropped, pos_embed split
    sd = deit.state_dict()
    assert torch.equal(ours.pos_embed.prefix_weight, sd['pos_embed'][:, :1])
    assert torch.equal(ours.pos_embed.weight, sd['pos_embed'][:, 1:])
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        (feats,) = ours(img)
        want = deit.forward_head(deit.forward_features(img), pre_logits=True)
        logits = F.linear(feats, deit.head.weight, deit.head.bias)
        torch.testing.assert_close(feats, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, deit(img), atol=1e-5, rtol=0)
    assert feats.shape == (2, 192) and feats.std() > 0.1


@pytest.mark.parametrize('final_norm, fc_norm', [('before_pool', False), ('after_pool', True)])
def test_gap_matches_timm_vision_transformer(final_norm, fc_norm):
    torch.manual_seed(0)
    ref = VisionTransformer(img_size=(64, 96), patch_size=16, num_classes=10, class_token=False,
                            global_pool='avg', fc_norm=fc_norm, **SMALL)
    ref = randomize(ref.eval(), 4)
    ours = PEViT(arch=SMALL, img_size=(64, 96), pooling='gap', final_norm=final_norm,
                 drop_path_rate=0.0).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    # The norm sits where timm puts it: `norm` on the tokens or `fc_norm` on the mean.
    assert hasattr(ours.norm, 'weight') is not fc_norm
    assert hasattr(ours.fc_norm, 'weight') is fc_norm
    img = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        (feats,) = ours(img)
        want = ref.forward_head(ref.forward_features(img), pre_logits=True)
        torch.testing.assert_close(feats, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(F.linear(feats, ref.head.weight, ref.head.bias), ref(img),
                                   atol=1e-5, rtol=0)


# --------------------------------------------------------- the equations, by hand
def ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def block_by_hand(blk, x, pos, heads):
    """x' = x + Attn(LN1(x) + pos), x'' = x' + MLP(LN2(x')), written out."""
    b, n, c = x.shape
    y = ln(x, blk.norm1) + (0 if pos is None else pos)
    q, k, v = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(c, dim=-1)
    q, k, v = [t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v)]
    attn = torch.softmax(q @ k.transpose(-2, -1) / (c // heads) ** 0.5, dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(b, n, c)
    x = x + y @ blk.attn.proj.weight.T + blk.attn.proj.bias
    h = F.gelu(ln(x, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    return x + h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def classifier_by_hand(model, img, method, after_block=0):
    """PEViT's output from its parameters and the equations (REFERENCE sections 1 and 5)."""
    pe = model.pos_embed
    c = model.embed_dim
    cls = model.pooling == 'cls'
    h, w = img.shape[2] // 16, img.shape[3] // 16
    proj = model.patch_embed.proj
    x = F.conv2d(img, proj.weight, proj.bias, stride=16).flatten(2).transpose(1, 2)
    if cls:
        x = torch.cat([model.cls_token.expand(len(img), -1, -1), x], 1)
    table = None
    if hasattr(pe, 'weight'):
        h0, w0 = model.pretrain_grid
        grid_part = F.interpolate(pe.weight.reshape(1, h0, w0, c).permute(0, 3, 1, 2),
                                  size=(h, w), mode='bicubic', align_corners=False)
        table = grid_part.flatten(2).transpose(1, 2)
        if cls:  # the class slot is learned as it is, never resampled
            table = torch.cat([pe.prefix_weight, table], 1)
    if method in ('AbsolutePE', 'PVG', 'MPVG'):
        x = x + table
    pos = {}
    if method == 'LaPE':  # pos_l = LN_l(pos_{l-1}), pos_{-1} = table; over every row
        p = table
        for i in range(model.depth):
            p = pos[i] = ln(p, pe.norms[str(i)])
    if method in ('PVG', 'MPVG'):  # pos_0 = table (at the input), pos_l = LN_l(pos_{l-1})
        p = table
        for i in range(1, model.depth):
            p = pos[i] = ln(p, pe.norms[str(i)])

    def peg(x):  # depth-wise 3x3 on the H x W map of the patch tokens; class token untouched
        prefix, patches = x[:, :int(cls)], x[:, int(cls):]
        fmap = patches.transpose(1, 2).reshape(len(x), c, h, w)
        conv = F.conv2d(fmap, pe.proj.weight, pe.proj.bias, padding=1, groups=c)
        return torch.cat([prefix, patches + conv.flatten(2).transpose(1, 2)], 1)

    if method == 'PEG' and after_block == -1:
        x = peg(x)
    heads = model.blocks[0].attn.num_heads
    for i, blk in enumerate(model.blocks):
        x = block_by_hand(blk, x, pos.get(i), heads)
        if method == 'PEG' and i == after_block:
            x = peg(x)
    if method == 'MPVG':  # Last LN: y = LN(x_L) + LN''(pos_0), per token, before GAP
        x = ln(x, pe.last_norm) + ln(table, pe.last_pe_norm)
    elif model.final_norm == 'before_pool':
        x = ln(x, model.norm)
    x = x[:, 0] if cls else x.mean(1)
    return ln(x, model.fc_norm) if model.final_norm == 'after_pool' else x


@pytest.mark.parametrize('method, pooling, final_norm', CASES)
def test_each_method_equals_its_equations_on_a_non_square_grid(method, pooling, final_norm):
    # Pre-trained at 64x64 (4x4 table), run on 64x96 (4x6 grid): the grid rows are resampled.
    model = classifier(method, pooling, final_norm)
    img = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        (ours,) = model(img)
        want = classifier_by_hand(model, img, method)
    assert ours.shape == (2, 48)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)
    # The same with the fast path off (explicit attention, no caching).
    model.fast_path = False
    with torch.no_grad():
        torch.testing.assert_close(model(img)[0], want, atol=1e-5, rtol=0)


def test_peg_before_the_first_block_with_class_token():
    model = classifier(dict(type='PEG', after_block=-1), 'cls')
    img = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(img)[0],
                                   classifier_by_hand(model, img, 'PEG', after_block=-1),
                                   atol=1e-5, rtol=0)


def test_parameters_per_method_and_pooling():
    def names(method, pooling, final_norm='before_pool'):
        return set(dict(classifier(method, pooling, final_norm).named_parameters()))
    deit = names('AbsolutePE', 'cls')
    assert {'cls_token', 'pos_embed.weight', 'pos_embed.prefix_weight', 'norm.weight'} <= deit
    assert 'fc_norm.weight' not in deit
    gap = names('PVG', 'gap')
    assert not {'cls_token', 'pos_embed.prefix_weight'} & gap and 'norm.bias' in gap
    mpvg = names('MPVG', 'gap')
    # MPVG's Last LN takes the place of the classifier's norm.
    assert not any(n.startswith(('norm.', 'fc_norm.')) for n in mpvg)
    assert {'pos_embed.last_norm.weight', 'pos_embed.last_pe_norm.bias'} <= mpvg
    assert names('PEG', 'cls') >= {'cls_token', 'pos_embed.proj.weight'}
    assert 'pos_embed.prefix_weight' not in names('PEG', 'cls')  # no table, no slot
    # DeiT-Ti's 5,717,416 parameters less its 1000-class head (193,000).
    assert sum(p.numel() for p in PEViT().parameters()) == 5_524_416


# ------------------------------------------------- PEViT checkpoints in ViTAdapter
def adapter_like(method, **kwargs):
    torch.manual_seed(5)
    return ViTAdapter(pos_embed=dict(type=method), pretrain_size=64, drop_path_rate=0.0,
                      interaction_indexes=[[0, 1], [2, 3]], deform_num_heads=6, **SMALL,
                      **kwargs).eval()


ADAPTER_ONLY = ('level_embed', 'spm.', 'interactions.', 'up.', 'norm1.', 'norm2.', 'norm3.',
                'norm4.')


@pytest.mark.parametrize('method, pooling, final_norm', CASES)
def test_classifier_checkpoint_loads_into_vit_adapter(tmp_path, method, pooling, final_norm):
    clf = classifier(method, pooling, final_norm, seed=2)
    ours = clf.state_dict()
    # As mmpretrain's ImageClassifier saves it.
    state = {f'backbone.{k}': v for k, v in ours.items()}
    state.update({'head.fc.weight': torch.randn(7, 48), 'head.fc.bias': torch.randn(7)})
    path = tmp_path / 'epoch_300.pth'
    torch.save({'meta': {'epoch': 300}, 'state_dict': state}, path)

    adapter = adapter_like(method)
    missing, unexpected = load_backbone_checkpoint(adapter, str(path))
    assert unexpected == []
    assert all(k.startswith(ADAPTER_ONLY) or k.endswith(('.gamma1', '.gamma2'))
               for k in missing), missing
    theirs = adapter.state_dict()
    used = {k for k in theirs if k.startswith(('patch_embed.', 'blocks.', 'pos_embed.'))
            and not k.endswith(('.gamma1', '.gamma2'))}
    for k in used:
        assert torch.equal(theirs[k], ours[k]), k
    # Every classifier tensor is used except the class token, its PE slot and the final norm
    # (MPVG's Last LN is part of its PE and is kept).
    dropped = set(ours) - used
    want = {'cls_token', 'pos_embed.prefix_weight'} if pooling == 'cls' else set()
    if method not in ('AbsolutePE', 'LaPE', 'PVG', 'MPVG'):
        want.discard('pos_embed.prefix_weight')
    if method != 'MPVG':
        want |= {'norm.weight', 'norm.bias'} if final_norm == 'before_pool' else {
            'fc_norm.weight', 'fc_norm.bias'}
    assert dropped == want

    # Same ViT: each block, and each PE hook, on the same patch tokens (64x96 -> 4x6 grid).
    grid, p = (4, 6), clf.num_prefix_tokens
    torch.manual_seed(3)
    tokens = torch.randn(2, 24, 48)
    with torch.no_grad():
        prefix = torch.randn(2, p, 48)
        embedded = clf.pos_embed.embed(torch.cat([prefix, tokens], 1), grid)
        torch.testing.assert_close(adapter.pos_embed.embed(tokens, grid), embedded[:, p:],
                                   atol=1e-6, rtol=0)
        pos_a, pos_c = adapter.pos_embed.block_pos(grid), clf.pos_embed.block_pos(grid)
        for i in range(4):
            pa = pos_a[i]
            pc = None if pos_c[i] is None else pos_c[i][:, p:]
            assert (pa is None) == (pc is None)
            a = adapter.blocks[i](tokens, grid, pos=pa)
            c = clf.blocks[i](tokens, grid, pos=pc)
            torch.testing.assert_close(a, c, atol=1e-5, rtol=0)
            after_a = adapter.pos_embed.after_block(i, a, grid)
            after_c = clf.pos_embed.after_block(i, torch.cat([prefix, c], 1), grid)
            torch.testing.assert_close(after_a, after_c[:, p:], atol=1e-5, rtol=0)


@pytest.mark.parametrize('method', ['AbsolutePE', 'PEG', 'PVG', 'MPVG'])
def test_gap_classifier_and_adapter_run_the_same_vit_stream(tmp_path, method):
    # Without a class token the whole ViT stream is shared: with the injectors' gamma at 0,
    # ViT-Adapter's blocks see exactly the classifier's tokens.
    clf = classifier(method, 'gap', seed=4)
    path = tmp_path / 'clf.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in clf.state_dict().items()}}, path)
    adapter = adapter_like(method)
    load_backbone_checkpoint(adapter, str(path))
    with torch.no_grad():
        for inter in adapter.interactions:
            inter.injector.gamma.zero_()
    outs = {'clf': [], 'adapter': []}
    for name, model in (('clf', clf), ('adapter', adapter)):
        for blk in model.blocks:
            blk.register_forward_hook(lambda m, a, out, name=name: outs[name].append(out))
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        clf(img)
        adapter(img)
    assert len(outs['clf']) == len(outs['adapter']) == 4
    for a, c in zip(outs['adapter'], outs['clf']):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


# ------------------------------------------------------ checkpoints into PEViT
@pytest.fixture(scope='module')
def deit_file(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(timm.create_model('deit_tiny_patch16_224', pretrained=False), 6)
    path = tmp_path_factory.mktemp('deit') / 'deit_tiny_patch16_224-a1311bcf.pth'
    torch.save({'model': model.state_dict()}, path)
    return model.state_dict(), path


def test_deit_release_into_classifiers(deit_file, tmp_path):
    sd, path = deit_file
    # Class token: the class slot is kept as it is while the grid is resampled (14x14 -> 20x20).
    lape = PEViT(pos_embed=dict(type='LaPE'), img_size=320)
    missing, unexpected = load_backbone_checkpoint(lape, str(path))
    assert unexpected == [] and sorted(missing) == sorted(
        f'pos_embed.norms.{i}.{p}' for i in range(12) for p in ('weight', 'bias'))
    assert torch.equal(lape.pos_embed.prefix_weight, sd['pos_embed'][:, :1])
    want = F.interpolate(sd['pos_embed'][:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2),
                         size=(20, 20), mode='bicubic', align_corners=False)
    torch.testing.assert_close(lape.pos_embed.weight, want.flatten(2).transpose(1, 2),
                               atol=1e-6, rtol=0)
    assert torch.equal(lape.cls_token, sd['cls_token'])
    assert torch.equal(lape.norm.weight, sd['norm.weight'])
    # GAP: class token and class slot dropped; MPVG takes DeiT's final norm as its Last LN.
    mpvg = PEViT(pos_embed=dict(type='MPVG'), pooling='gap')
    missing, unexpected = load_backbone_checkpoint(mpvg, str(path))
    assert unexpected == [] and all(k.startswith('pos_embed.') for k in missing)
    assert 'pos_embed.weight' not in missing
    assert torch.equal(mpvg.pos_embed.weight, sd['pos_embed'][:, 1:])
    assert torch.equal(mpvg.pos_embed.last_norm.bias, sd['norm.bias'])


def test_mmpretrain_checkpoint_through_init_cfg(tmp_path):
    src = classifier('PVG', 'gap', seed=7)
    state = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    state['head.fc.weight'] = torch.randn(7, 48)
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': state}, path)
    torch.manual_seed(8)
    fresh = PEViT(arch=SMALL, img_size=64, pos_embed=dict(type='PVG'), pooling='gap',
                  drop_path_rate=0.0,
                  init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    fresh.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(img)[0], src(img)[0])


def test_shape_mismatch_names_the_key(deit_file):
    _, path = deit_file
    with pytest.raises(ValueError, match=r'has shape \(.*192.*\) but the model\'s has shape'):
        load_backbone_checkpoint(PEViT(arch='small'), str(path))


# --------------------------------------------------------------- mmpretrain
def build_image_classifier(pos_embed, pooling):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as CLS
    init_default_scope('mmpretrain')
    return CLS.build(dict(
        type='ImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=3,
                               mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
        backbone=dict(type='PEViT', arch=SMALL, img_size=64, pos_embed=pos_embed,
                      pooling=pooling, drop_path_rate=0.0),
        neck=None,
        head=dict(type='LinearClsHead', num_classes=3, in_channels=48)))


def test_mmpretrain_image_classifier_reproduces_timm_logits():
    torch.manual_seed(0)
    ref = VisionTransformer(img_size=64, patch_size=16, num_classes=3, **SMALL)
    ref = randomize(ref.eval(), 9)
    model = build_image_classifier(dict(type='AbsolutePE'), 'cls').eval()
    sd = ref.state_dict()
    model.backbone.load_state_dict(sd, strict=True)
    model.head.fc.load_state_dict({'weight': sd['head.weight'], 'bias': sd['head.bias']})
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(img, mode='tensor'), ref(img), atol=1e-5, rtol=0)


@pytest.mark.parametrize('method, pooling', [('LaPE', 'cls'), ('PEG', 'gap'), ('MPVG', 'gap')])
def test_mmpretrain_image_classifier_trains(method, pooling):
    from mmengine.optim import OptimWrapper
    from mmpretrain.structures import DataSample
    model = build_image_classifier(dict(type=method), pooling)
    model.train()
    g = torch.Generator().manual_seed(0)
    data = dict(inputs=[torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8)
                        for _ in range(4)],
                data_samples=[DataSample().set_gt_label(i % 3) for i in range(4)])
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    before = {k: v.clone() for k, v in model.backbone.pos_embed.state_dict().items()}
    losses = [model.train_step(data, optim)['loss'].item() for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # eight steps on one batch: the classifier fits it
    after = model.backbone.pos_embed.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), 'PE not trained'


# ------------------------------------------------------------------- errors
def test_errors_say_why():
    with pytest.raises(ValueError, match='incompatible with the class token.*gap'):
        PEViT(pos_embed=dict(type='MPVG'), pooling='cls')
    with pytest.raises(ValueError, match="MPVG with final_norm='after_pool'.*before_pool"):
        PEViT(pos_embed=dict(type='MPVG'), pooling='gap', final_norm='after_pool')
    with pytest.raises(ValueError, match=r"unknown arch 'huge'.*\['base', 'small', 'tiny'\]"):
        PEViT(arch='huge')
    with pytest.raises(ValueError, match='embed_dim, depth, num_heads'):
        PEViT(arch=dict(embed_dim=48, depth=2))
    with pytest.raises(ValueError, match="pooling must be one of \\('cls', 'gap'\\)"):
        PEViT(pooling='mean')
    with pytest.raises(ValueError, match='final_norm must be one of'):
        PEViT(final_norm='none')
    with pytest.raises(TypeError, match='unknown option.*num_prefix_tokens'):
        PEViT(pos_embed=dict(type='LaPE', num_prefix_tokens=2))



def test_initialisation_of_the_class_token_and_the_peg_conv():
    """DeiT's class token: truncated normal, std 0.02 (timm 0.3.2's ViT, which DeiT and LaPE
    train with). CPVT/Twins' PEG conv: normal(0, sqrt(2 / fan_out)), fan_out = 3 * 3 *
    out_channels / groups = 9 for the depth-wise conv (std 0.471), zero bias. Sample statistics
    of a fixed seed: 768 class-token values (std within 15%), 3 x 3 x 768 conv weights (within
    5%, mean within 0.05)."""
    from pe_dense.models.pos_embed import build_pos_encoding
    torch.manual_seed(0)
    arch = dict(embed_dim=768, depth=1, num_heads=12)
    model = PEViT(arch=arch, img_size=32, pos_embed=dict(type='PEG'), pooling='cls')
    token = model.cls_token.detach()
    assert token.shape == (1, 1, 768)
    assert 0.85 * 0.02 < token.std().item() < 1.15 * 0.02
    assert token.abs().max().item() <= 2.0
    convs = [model.pos_embed.proj,
             build_pos_encoding(dict(type='PEG'), embed_dim=768, depth=1).proj]
    vit_adapter = ViTAdapter(pos_embed=dict(type='PEG'), drop_path_rate=0.0)
    convs.append(vit_adapter.pos_embed.proj)
    for conv in convs:
        std = (2 / 9) ** 0.5
        assert conv.weight.shape[1:] == (1, 3, 3)
        assert 0.95 * std < conv.weight.std().item() < 1.05 * std
        assert abs(conv.weight.mean().item()) < 0.05
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
