"""pe_dense.analysis and tools/analyze_pe.py: numbers on planted inputs, ViTAdapter and PEViT
classifier backbones, and the CLI end to end."""
import csv
import re
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import randomize
from pe_dense.analysis import (collect_layer_stats, cosine_similarity_grid, pearson,
                               similarity_mosaic)
from pe_dense.checkpoint import load_backbone_checkpoint
from pe_dense.models import PEViT, ViTAdapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'analyze_pe.py')
UPERNET = os.path.join(ROOT, 'configs', '_base_', 'models', 'upernet_vit-adapter-ti.py')
DEIT_PVG = os.path.join(ROOT, 'configs', 'mini', 'deit-ti-pvg_mini.py')


DIM = 48


def tiny_backbone(method, seed=0):
    """A narrow 12-block backbone (48 channels) on a 4x4 grid (64x64 pre-training size and
    input): the analysis does not depend on the width, and this keeps the tests fast."""
    torch.manual_seed(seed)
    pos_embed = method if isinstance(method, dict) else dict(type=method)
    return ViTAdapter(pos_embed=pos_embed, pretrain_size=64, embed_dim=DIM,
                      conv_inplane=16, drop_path_rate=0.0).eval()


def tiny_classifier(method, pooling, seed=0):
    """The classifier of the same width and depth (48 channels, 12 blocks) at 64x64 (4x4 grid)."""
    torch.manual_seed(seed)
    return PEViT(arch=dict(embed_dim=DIM, depth=12, num_heads=3), img_size=64,
                 pos_embed=dict(type=method), pooling=pooling, drop_path_rate=0.0).eval()


def images(n=2, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def corrcoef(a, b):
    """Reference Pearson r through torch.corrcoef."""
    return float(torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]).double())[0, 1])


# ------------------------------------------------------------------------------------ pearson
@pytest.mark.parametrize('r', [0.9, 0.3, 0.0, -0.6])
def test_pearson_recovers_planted_correlation(r):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400_000, generator=g)
    b = r * a + math.sqrt(1 - r * r) * torch.randn(400_000, generator=g)
    assert abs(pearson(a, b) - r) < 0.01
    # any shape, and invariant to shifting and positive scaling of either side
    assert pearson(a.view(400, 1000), 3 * b.view(1000, 400) + 7) == pytest.approx(pearson(a, b),
                                                                                  abs=1e-9)


def test_pearson_exact_cases():
    a = torch.randn(50, 192, generator=torch.Generator().manual_seed(1))
    assert pearson(a, a) == pytest.approx(1.0, abs=1e-12)
    assert pearson(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert pearson(a, a.exp()) == pytest.approx(corrcoef(a, a.exp()), abs=1e-9)
    assert math.isnan(pearson(a, torch.full_like(a, 2.0)))
    with pytest.raises(ValueError, match='same number of entries'):
        pearson(a, a[:10])


# ------------------------------------------------------------------ planted correlation in a model
def test_planted_correlation_in_pvg_backbone():
    """x_0 = pos exactly (zero patch embedding, zero injector gammas), block 0 leaves the tokens
    unchanged (zero layer-scale gammas), so:
    layer 0: corr(LN(pos), pos), computed here with torch;
    layer 1: LN1_1 and the PE norm of block 1 have opposite affine parameters -> r = -1."""
    model = tiny_backbone('PVG')
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        for interaction in model.interactions:
            interaction.injector.gamma.zero_()
        model.blocks[0].gamma1.zero_()
        model.blocks[0].gamma2.zero_()
        model.blocks[0].norm1.weight.fill_(1.0)
        model.blocks[0].norm1.bias.zero_()
        g = torch.Generator().manual_seed(5)
        model.pos_embed.weight.copy_(torch.randn(1, 16, DIM, generator=g) * 0.3 + 0.1)
        norm1 = model.blocks[1].norm1
        norm1.weight.copy_(torch.rand(DIM, generator=g) + 0.5)
        norm1.bias.copy_(torch.randn(DIM, generator=g) * 0.2)
        model.pos_embed.norms['1'].weight.copy_(-norm1.weight)
        model.pos_embed.norms['1'].bias.copy_(-norm1.bias)

    stats = collect_layer_stats(model, images())

    pos = model.pos_embed.weight.detach()[0]
    ln_pos = F.layer_norm(pos, (DIM,), eps=1e-6)
    assert [s['layer'] for s in stats] == list(range(12))
    assert [s['pe_source'] for s in stats] == ['input'] + ['block'] * 11
    assert stats[0]['grid'] == (4, 4)
    assert stats[0]['correlation'] == pytest.approx(corrcoef(ln_pos, pos), abs=1e-5)
    assert stats[0]['mean_abs_pe'] == pytest.approx(float(pos.abs().mean()), abs=1e-6)
    assert stats[0]['mean_abs_token'] == pytest.approx(float(ln_pos.abs().mean()), abs=1e-5)
    torch.testing.assert_close(stats[0]['token_mean'], ln_pos, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats[0]['pe'], pos)
    assert stats[1]['correlation'] == pytest.approx(-1.0, abs=1e-5)
    torch.testing.assert_close(stats[1]['pe'], -stats[1]['token_mean'], atol=1e-5, rtol=0)
    assert all(math.isfinite(s['correlation']) for s in stats)
    assert model.training is False


@pytest.mark.parametrize('method, sources', [
    ('AbsolutePE', ['input'] + ['none'] * 11),
    ('LaPE', ['block'] * 12),
    ('MPVG', ['input'] + ['block'] * 11),
    ('NoPE', ['none'] * 12),
    ('PEG', ['none'] * 12),
    ('RoPEAxial', ['none'] * 12),
    ('RoPEMixed', ['none'] * 12),
    (dict(type='RoPEMixed', with_ape=True), ['input'] + ['none'] * 11),
])
def test_which_pe_enters_which_layer(method, sources):
    stats = collect_layer_stats(tiny_backbone(method), images(1))
    assert [s['pe_source'] for s in stats] == sources
    for s, source in zip(stats, sources):
        assert s['has_pe'] == (source != 'none')
        assert math.isfinite(s['correlation']) == s['has_pe']
        assert math.isfinite(s['mean_abs_pe']) == s['has_pe']
        assert (s['pe'] is None) == (not s['has_pe'])
        assert s['token_mean'].shape == (16, DIM)


def test_wiring_check_rejects_a_wrong_attention_input():
    model = tiny_backbone('LaPE')
    handle = model.blocks[3].attn.register_forward_pre_hook(lambda m, args: (args[0] + 1.0,
                                                                             *args[1:]))
    with pytest.raises(RuntimeError, match='block 3'):
        collect_layer_stats(model, images(1))
    handle.remove()


# ------------------------------------------------------------------------ classifier backbones
def test_classifier_statistics_cover_the_patch_tokens_only():
    """LaPE with a class token, every weight random: the statistics of each layer equal those
    computed here from the blocks' inputs without the class token's row (the class token set
    far off, so that counting it would show)."""
    model = randomize(tiny_classifier('LaPE', 'cls'))
    with torch.no_grad():
        model.cls_token.fill_(5.0)
    inputs = {}
    handles = [block.register_forward_hook(
        lambda m, args, out, i=i: inputs.__setitem__(i, args[0])) for i, block in
        enumerate(model.blocks)]
    imgs = images(3)
    with torch.no_grad():
        model(imgs)
        block_pos = model.pos_embed.block_pos((4, 4))
        for handle in handles:
            handle.remove()
        stats = collect_layer_stats(model, imgs, batch_size=2)
        for i, s in enumerate(stats):
            tokens = model.blocks[i].norm1(inputs[i])[:, 1:]  # (3, 16, C)
            pos = block_pos[i][0, 1:]  # (16, C)
            assert s['pe_source'] == 'block' and s['grid'] == (4, 4)
            expected = np.mean([corrcoef(t, pos) for t in tokens])
            assert s['correlation'] == pytest.approx(expected, abs=1e-5)
            assert s['mean_abs_token'] == pytest.approx(float(tokens.abs().mean()), rel=1e-5)
            torch.testing.assert_close(s['token_mean'], tokens.mean(0), atol=1e-5, rtol=0)
            torch.testing.assert_close(s['pe'], pos)
    assert len({round(s['correlation'], 6) for s in stats}) == 12


@pytest.mark.parametrize('method', ['PVG', 'MPVG'])
def test_gap_classifier_checkpoint_gives_the_same_tokens_in_vit_adapter(tmp_path, method):
    """A GAP classifier's mmpretrain checkpoint (backbone.* and head.* keys) loaded into
    ViTAdapter: the injectors start at zero, so the ViT blocks see the classifier's tokens and the
    per-layer statistics agree."""
    classifier = randomize(tiny_classifier(method, 'gap'))
    state = {f'backbone.{k}': v for k, v in classifier.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(9, DIM)
    path = tmp_path / 'classifier.pth'
    torch.save({'meta': {}, 'state_dict': state}, path)
    adapter = tiny_backbone(method)
    missing, _ = load_backbone_checkpoint(adapter, str(path))
    assert not [k for k in missing if k.startswith(('patch_embed', 'pos_embed'))]
    assert all(k.endswith(('gamma1', 'gamma2')) for k in missing if k.startswith('blocks'))
    imgs = images(2, seed=4)
    ours, theirs = collect_layer_stats(adapter, imgs), collect_layer_stats(classifier, imgs)
    for a, b in zip(ours, theirs):
        assert a['pe_source'] == b['pe_source']
        assert a['correlation'] == pytest.approx(b['correlation'], abs=1e-5)
        torch.testing.assert_close(a['token_mean'], b['token_mean'], atol=1e-4, rtol=0)


# -------------------------------------------------------------------------- similarity grid
def test_cosine_similarity_grid_known_values():
    e = torch.eye(4)
    # grid 2x3: (0,0)=e0, (0,1)=e1, (0,2)=e2, (1,0)=e0+e1, (1,1)=-e2, (1,2)=3*e0
    pos = torch.stack([e[0], e[1], e[2], e[0] + e[1], -e[2], 3 * e[0]])
    h = 1 / math.sqrt(2)
    expected = torch.tensor([
        [1, 0, 0, h, 0, 1],
        [0, 1, 0, h, 0, 0],
        [0, 0, 1, 0, -1, 0],
        [h, h, 0, 1, 0, h],
        [0, 0, -1, 0, 1, 0],
        [1, 0, 0, h, 0, 1],
    ])
    sim = cosine_similarity_grid(pos[None], (2, 3))
    assert sim.shape == (2, 3, 2, 3)
    torch.testing.assert_close(sim.reshape(6, 6), expected, atol=1e-6, rtol=0)
    assert sim[1, 2, 0, 0] == pytest.approx(1.0)  # same direction, other length
    assert sim[0, 2, 1, 1] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match='grid 3x3'):
        cosine_similarity_grid(pos, (3, 3))


def test_similarity_mosaic_layout():
    sim = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).reshape(2, 3, 2, 3).numpy()
    mosaic = similarity_mosaic(sim)
    assert mosaic.shape == (2 * 3 - 1, 3 * 4 - 1)
    for i, j, k, m in np.ndindex(*sim.shape):
        assert mosaic[i * 3 + k, j * 4 + m] == sim[i, j, k, m]
    assert np.isnan(mosaic[2]).all() and np.isnan(mosaic[:, 3]).all()


# --------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope='module')
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(60, 80), (90, 70)]):
        path = folder / f'img{i}.png'
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def check_png(path):
    assert os.path.isfile(path)
    assert 0 < os.path.getsize(path) < 300_000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == 'PNG' and img.width > 100 and img.height > 100


def test_cli_end_to_end_mpvg(tmp_path, image_files):
    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, TOOL, UPERNET, '--images', *image_files, '--out', str(out),
         '--method', 'MPVG', '--size', '64', '64'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'MPVG' in proc.stdout
    rows = read_csv(out / 'pe_analysis.csv')
    assert [int(r['layer']) for r in rows] == list(range(12))
    assert [r['pe_source'] for r in rows] == ['input'] + ['block'] * 11
    for r in rows[1:]:
        corr = float(r['correlation'])
        assert math.isfinite(corr) and -1 <= corr <= 1
        assert float(r['mean_abs_pe']) > 0 and float(r['mean_abs_token']) > 0
    for name in ('pe_correlation.png', 'pe_heatmaps.png', 'pe_similarity.png'):
        check_png(str(out / name))


@pytest.fixture(scope='module')
def cli():
    spec = importlib.util.spec_from_file_location('analyze_pe', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_checkpoint_and_no_pe(tmp_path, image_files, cli):
    """A whole-model checkpoint (``backbone.`` keys) reaches the analysed backbone: block 11's PE
    norm set to weight 0, bias 0.25 makes pos_11 the constant 0.25 (mean |pos_11| = 0.25, r
    NaN).
    NoPE writes NaN everywhere and skips the figures that need a PE."""
    ckpt = tmp_path / 'model.pth'
    # A whole segmentor's file holds every backbone weight (one that leaves ViT blocks unset is
    # refused by the loader).
    state = {f'backbone.{k}': v
             for k, v in ViTAdapter(pos_embed=dict(type='PVG')).state_dict().items()}
    state.update({'backbone.pos_embed.norms.11.weight': torch.zeros(192),
                  'backbone.pos_embed.norms.11.bias': torch.full((192,), 0.25),
                  'decode_head.conv_seg.bias': torch.zeros(150)})
    torch.save({'state_dict': state}, ckpt)
    cli.main([UPERNET, str(ckpt), '--images', *image_files, '--out', str(tmp_path / 'pvg'),
              '--method', 'PVG', '--size', '64', '64', '--sim-layer', '2',
              '--heatmap-layers', '0', '11'])
    rows = read_csv(tmp_path / 'pvg' / 'pe_analysis.csv')
    assert float(rows[11]['mean_abs_pe']) == pytest.approx(0.25, abs=1e-6)
    assert math.isnan(float(rows[11]['correlation']))
    assert all(math.isfinite(float(r['correlation'])) for r in rows[:11])
    check_png(str(tmp_path / 'pvg' / 'pe_similarity.png'))

    cli.main([UPERNET, '--images', image_files[0], '--out', str(tmp_path / 'nope'),
              '--method', 'NoPE', '--size', '64', '64'])
    rows = read_csv(tmp_path / 'nope' / 'pe_analysis.csv')
    assert len(rows) == 12
    assert all(r['has_pe'] == 'False' and math.isnan(float(r['correlation'])) for r in rows)
    assert sorted(os.listdir(tmp_path / 'nope')) == ['pe_analysis.csv', 'pe_heatmaps.png']

    with pytest.raises(ValueError, match='no PE enters layer 4'):
        cli.main([UPERNET, '--images', image_files[0], '--out', str(tmp_path / 'abs'),
                  '--method', 'AbsolutePE', '--size', '64', '64', '--sim-layer', '4'])


def test_cli_classifier_config_checkpoint_folder_and_suffix(tmp_path, cli):
    """A mini classifier config (PEViT, 8x8 grid at 128x128) and an mmpretrain-style checkpoint
    whose block-11 PE norm is planted (weight 0, bias -0.5: pos_11 = -0.5); a folder of images;
    the file names carry the suffix."""
    folder = tmp_path / 'imgs'
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (100, 140, 3), dtype=np.uint8)).save(
            folder / f'{i}.JPEG')
    (folder / 'notes.txt').write_text('not an image')
    ckpt = tmp_path / 'iter_2.pth'
    # A whole classifier's file holds every backbone weight (one that leaves ViT blocks unset is
    # refused by the loader): the mini config's PEViT (64 x 64 inputs, GAP) with the planted norm.
    backbone = PEViT(arch='tiny', img_size=64, patch_size=16, pos_embed=dict(type='PVG'),
                     pooling='gap')
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state.update({'backbone.pos_embed.norms.11.weight': torch.zeros(192),
                  'backbone.pos_embed.norms.11.bias': torch.full((192,), -0.5),
                  'head.fc.weight': torch.zeros(9, 192)})
    torch.save({'state_dict': state}, ckpt)
    out = tmp_path / 'figures'
    cli.main([DEIT_PVG, str(ckpt), '--images', str(folder), '--out', str(out), '--size', '128',
              '128', '--suffix', 'pvg', '--heatmap-layers', '0', '11'])
    assert sorted(os.listdir(out)) == ['pe_analysis_pvg.csv', 'pe_correlation_pvg.png',
                                       'pe_heatmaps_pvg.png', 'pe_similarity_pvg.png']
    rows = read_csv(out / 'pe_analysis_pvg.csv')
    assert [r['pe_source'] for r in rows] == ['input'] + ['block'] * 11
    assert float(rows[11]['mean_abs_pe']) == pytest.approx(0.5, abs=1e-6)
    assert all(math.isfinite(float(r['correlation'])) for r in rows[:11])
    check_png(str(out / 'pe_similarity_pvg.png'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('not an image')
    with pytest.raises(SystemExit, match='no images'):
        cli.main([DEIT_PVG, '--images', str(empty), '--out', str(out)])


def test_cli_refuses_bad_arguments_before_any_work(tmp_path, image_files, cli, capsys):
    """Wrong inputs end in argparse's one-line error (exit 2), not a traceback."""
    base = [UPERNET, '--images', *image_files, '--out', str(tmp_path)]
    for argv, message in (
            ([UPERNET, '--images', str(tmp_path / 'no.png'), '--out', str(tmp_path)],
             'no.png not found'),
            ([str(tmp_path / 'no.py'), '--images', *image_files, '--out', str(tmp_path)],
             'config .*no.py does not exist'),
            ([UPERNET, str(tmp_path / 'no.pth'), '--images', *image_files, '--out',
              str(tmp_path)], 'checkpoint .*no.pth does not exist'),
            (base + ['--method', 'Foo'], "invalid choice: 'Foo'"),
            (base + ['--size', '0', '0'], 'at least 32 pixels'),
            (base + ['--batch-size', '0'], '--batch-size at least 1')):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_args(argv)
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err), argv
    assert cli.parse_args(base + ['--method', 'RoPEMixed']).method == 'RoPEMixed'
