"""Checkpoint loading and conversion: DeiT release / timm files, LaPE-style, the released
ViT-Adapter layout (whole detector and backbone alone), pe-dense files, and the errors."""
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


@pytest.fixture(scope='module')
def deit(tmp_path_factory):
    """A randomly initialised timm DeiT-Ti, saved as the DeiT release saves it."""
    torch.manual_seed(0)
    model = timm.create_model('deit_tiny_patch16_224', pretrained=False).eval()
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
        assert torch.allclose(ours, theirs, atol=1e-5)
        tokens = torch.randn(2, 196, 192)
        x, y = tokens, tokens
        for ours_blk, theirs_blk in zip(backbone.blocks, timm_model.blocks):
            x = ours_blk(x, (14, 14))
            y = theirs_blk(y)
            assert torch.allclose(x, y, atol=1e-5)


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


def official_vit_adapter_layout(backbone):
    """The released ViT-Adapter-T backbone's keys: ours, with the (1, 197, 192) pos_embed."""
    sd = {}
    for k, v in backbone.state_dict().items():
        if k == 'pos_embed.weight':
            sd['pos_embed'] = torch.cat([torch.zeros(1, 1, 192), v], 1)
        else:
            sd[k] = v
    return sd


def test_released_vit_adapter_checkpoint_into_detector_and_backbone(tmp_path):
    from mmengine.runner.checkpoint import load_checkpoint
    from torch import nn
    src = randomize(small_backbone('AbsolutePE'))
    official = official_vit_adapter_layout(src)
    assert official['pos_embed'].shape == (1, 197, 192)
    assert sum(v.numel() for k, v in official.items() if 'running' not in k
               and 'num_batches' not in k) == 7_966_640
    whole = {f'backbone.{k}': v for k, v in official.items()}
    whole['neck.lateral.weight'] = torch.randn(4, 4)
    path = tmp_path / 'mask_rcnn_vit_adapter_tiny.pth'
    torch.save({'state_dict': whole, 'meta': {'epoch': 36}}, path)

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = small_backbone('AbsolutePE', seed=5)
            self.neck = nn.Module()
            self.neck.lateral = nn.Linear(4, 4, bias=False)

    det = Detector()
    load_checkpoint(det, str(path), map_location='cpu', strict=True)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = src(img)
        for a, b in zip(det.backbone.eval()(img), want):
            assert torch.equal(a, b)
        alone = small_backbone('AbsolutePE', seed=7)
        missing, unexpected = load_backbone_checkpoint(alone, str(path))
        assert missing == [] and unexpected == []
        for a, b in zip(alone(img), want):
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
