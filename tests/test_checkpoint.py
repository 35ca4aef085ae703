"""Checkpoint loading and conversion: DeiT release / timm files (a randomised timm DeiT-Ti's blocks
reproduced), LaPE-style, the released ViT-Adapter-T layout (key names and shapes of the published
model, tests/fixtures/vit_adapter_t_keys.txt; whole detector and backbone alone), pe-dense files,
and the errors."""
import logging
import os
import subprocess
import sys

import pytest
import timm
import torch
from helpers import METHODS, randomize, small_backbone

from pe_dense.checkpoint import load_backbone_checkpoint
from pe_dense.models import ViTAdapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


RELEASED_KEYS = os.path.join(ROOT, 'tests', 'fixtures', 'vit_adapter_t_keys.txt')


def randomize_timm(model, seed=0):
    """Every weight of a timm ViT random and distinct: LayerNorm weights 1 + N(0, 0.2^2), every
    bias N(0, 0.2^2), matrices N(0, 1 / fan_in), tokens and table N(0, 0.5^2). timm's own
    initialisation leaves the norms at 1 and 0 and the biases at 0, which would hide swapped
    norms or a dropped bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1:
                p.copy_(noise * 0.2 + (1.0 if 'norm' in name and name.endswith('weight') else 0.0))
            elif name in ('cls_token', 'pos_embed'):
                p.copy_(noise * 0.5)
            else:
                p.copy_(noise * p[0].numel() ** -0.5)
    return model


@pytest.fixture(scope='module')
def deit(tmp_path_factory):
    """A randomised timm DeiT-Ti, saved as the DeiT release saves it."""
    torch.manual_seed(0)
    model = randomize_timm(timm.create_model('deit_tiny_patch16_224', pretrained=False).eval())
    path = tmp_path_factory.mktemp('deit') / 'deit_tiny_patch16_224-a1311bcf.pth'
    torch.save({'model': model.state_dict()}, path)
    return model, path


def test_deit_release_loads_every_vit_weight_and_matches_timm_blocks(deit, caplog):
    timm_model, path = deit
    backbone = ViTAdapter(init_cfg=dict(type='Pretrained', checkpoint=str(path))).eval()
    with caplog.at_level(logging.INFO):
        missing, unexpected = load_backbone_checkpoint(backbone, str(path))
    assert unexpected == []
    # Nothing of the ViT is missing but layer scale (not in DeiT, initialised to 1).
    vit_missing = [k for k in missing if k.startswith(('blocks', 'patch_embed', 'pos_embed'))]
    assert sorted(vit_missing) == sorted(f'blocks.{i}.gamma{j}' for i in range(12) for j in (1, 2))
    line = [r.getMessage() for r in caplog.records if 'loaded' in r.getMessage()]
    assert len(line) == 1 and 'unexpected (0)' in line[0] and 'spm' in line[0]

    sd = timm_model.state_dict()
    assert torch.equal(backbone.pos_embed.weight, sd['pos_embed'][:, 1:])
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = backbone.pos_embed.embed(backbone.patch_embed(img).flatten(1, 2), (14, 14))
        theirs = timm_model.patch_embed(img) + timm_model.pos_embed[:, 1:]
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        # Every weight is random (norms, biases), so swapped norms or a dropped bias differ by
        # far more than the tolerance; each block is compared on its own input.
        x = torch.randn(2, 196, 192)
        for i, (ours_blk, theirs_blk) in enumerate(zip(backbone.blocks, timm_model.blocks)):
            want = theirs_blk(x)
            assert (want - x).abs().max() > 0.1
            torch.testing.assert_close(ours_blk(x, (14, 14)), want, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, i=i: f'block {i}: {m}')
            x = want


def test_pretrained_init_cfg_route_and_resampled_grid(deit):
    timm_model, path = deit
    backbone = ViTAdapter(pretrain_size=320,
                          init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    sd = timm_model.state_dict()
    assert backbone.pos_embed.weight.shape == (1, 400, 192)
    assert torch.equal(backbone.blocks[3].attn.qkv.weight, sd['blocks.3.attn.qkv.weight'])
    want = torch.nn.functional.interpolate(
        sd['pos_embed'][:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2), size=(20, 20),
        mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(backbone.pos_embed.weight, want, atol=1e-6)


def test_lape_style_checkpoint(tmp_path, deit):
    _, path = deit
    sd = torch.load(path)['model']
    g = torch.Generator().manual_seed(3)
    for i in range(12):
        sd[f'blocks.{i}.pe_norm.weight'] = torch.rand(192, generator=g)
        sd[f'blocks.{i}.pe_norm.bias'] = torch.rand(192, generator=g)
    lape_path = tmp_path / 'lape.pth'
    torch.save({'model': sd}, lape_path)
    lape = ViTAdapter(pos_embed=dict(type='LaPE'))
    _, unexpected = load_backbone_checkpoint(lape, str(lape_path))
    assert unexpected == []
    for i in range(12):
        assert torch.equal(lape.pos_embed.norms[str(i)].weight, sd[f'blocks.{i}.pe_norm.weight'])
    pvg = ViTAdapter(pos_embed=dict(type='PVG'))
    _, unexpected = load_backbone_checkpoint(pvg, str(lape_path))
    assert unexpected == []  # block 0's norm has no place in PVG and is dropped
    assert torch.equal(pvg.pos_embed.norms['5'].bias, sd['blocks.5.pe_norm.bias'])
    mpvg = ViTAdapter(pos_embed=dict(type='MPVG'))
    load_backbone_checkpoint(mpvg, str(lape_path))
    assert torch.equal(mpvg.pos_embed.last_norm.weight, sd['norm.weight'])


def released_state_dict(seed=0):
    """Random tensors in the layout of the released ViT-Adapter-T COCO file's backbone
    (``backbone.*`` keys, shapes from ``tests/fixtures/vit_adapter_t_keys.txt``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    with open(RELEASED_KEYS) as f:
        for line in f:
            if not line.strip() or line.startswith('#'):
                continue
            key, shape = line.split()
            shape = tuple(int(n) for n in shape.split(',')) if shape != '-' else ()
            if key.endswith('num_batches_tracked'):
                sd[key] = torch.tensor(1000)
            elif key.endswith('running_var'):
                sd[key] = torch.rand(shape, generator=g) + 0.5
            else:
                sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


def test_released_layout_fixture_is_the_published_tiny_backbone():
    sd = released_state_dict()
    assert sd['backbone.pos_embed'].shape == (1, 197, 192)
    params = sum(v.numel() for k, v in sd.items()
                 if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
    assert params == 7_966_640
    assert sum(v.numel() for v in ViTAdapter().parameters()) == params - 192  # the class slot
    assert not any('cls_token' in k or '.norm.' in k for k in sd)


def test_released_vit_adapter_checkpoint_into_detector_and_backbone(tmp_path):
    from mmengine.runner.checkpoint import load_checkpoint
    from torch import nn
    released = released_state_dict()
    whole = dict(released)
    whole['neck.lateral.weight'] = torch.randn(4, 4)
    path = tmp_path / 'mask_rcnn_deit_adapter_tiny_fpn_3x_coco.pth'
    torch.save({'state_dict': whole, 'meta': {'epoch': 36}}, path)

    def check(backbone):
        own = backbone.state_dict()
        for key, value in released.items():
            key = key[len('backbone.'):]
            if key == 'pos_embed':
                assert torch.equal(own['pos_embed.weight'], value[:, 1:])
            else:
                assert torch.equal(own[key], value), key

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = small_backbone('AbsolutePE', seed=5)
            self.neck = nn.Module()
            self.neck.lateral = nn.Linear(4, 4, bias=False)

    det = Detector()
    load_checkpoint(det, str(path), map_location='cpu', strict=True)  # nothing missing/unexpected
    check(det.backbone)
    alone = small_backbone('AbsolutePE', seed=7)
    missing, unexpected = load_backbone_checkpoint(alone, str(path))
    assert missing == [] and unexpected == []
    check(alone)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(alone(img), det.backbone.eval()(img)):
            assert torch.equal(a, b)


def test_errors_name_the_problem(tmp_path, deit):
    _, path = deit
    small = ViTAdapter(embed_dim=96, num_heads=3, deform_num_heads=6)
    with pytest.raises(ValueError, match=r"has shape \(.*192.*\) but the model's has shape \(.*96"):
        load_backbone_checkpoint(small, str(path))
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    with pytest.raises(ValueError, match='notes.pth'):
        load_backbone_checkpoint(ViTAdapter(), str(text))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        load_backbone_checkpoint(ViTAdapter(), str(tmp_path / 'nowhere.pth'))
    empty = tmp_path / 'empty.pth'
    torch.save({'epoch': 3}, empty)
    with pytest.raises(ValueError, match='empty.pth.*not a model checkpoint'):
        load_backbone_checkpoint(ViTAdapter(), str(empty))


@pytest.mark.parametrize('method', METHODS)
def test_convert_tool_round_trip(tmp_path, method):
    src_model = randomize(small_backbone(method, seed=2))
    raw = tmp_path / f'{method}_raw.pth'
    torch.save(src_model.state_dict(), raw)
    out = tmp_path / f'{method}_pe_dense.pth'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_checkpoint.py'),
                           str(raw), str(out), '--pos-embed', method],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(out)
    assert ckpt['meta']['pe_dense'] == {'format': 1, 'pos_embed': method,
                                        'source': f'{method}_raw.pth'}
    fresh = small_backbone(method, seed=9)
    missing, unexpected = load_backbone_checkpoint(fresh, str(out))
    assert missing == [] and unexpected == []
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(fresh(img), src_model(img)):
            assert torch.equal(a, b)


def test_convert_tool_rejects_a_checkpoint_of_another_method(tmp_path):
    raw = tmp_path / 'lape.pth'
    torch.save(small_backbone('LaPE').state_dict(), raw)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_checkpoint.py'),
                           str(raw), str(tmp_path / 'out.pth'), '--pos-embed', 'PEG'],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'norms.*.weight' in proc.stderr and not (tmp_path / 'out.pth').exists()
