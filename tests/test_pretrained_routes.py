"""Every route that points a pe-dense backbone at a pre-trained file, for every layout users bring:
the backbone either holds exactly the file's tensors (under the names written out here, not read
from the loader) or the load stops with a CheckpointLayoutError that names the layout and what
to do. Files are small synthetic ones with the real key names: depth 4, 48 channels, 64x64
pre-training (a 4 x 4 patch grid); the block parity checks use timm's and mmpretrain's own
modules."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
from mmengine.runner.checkpoint import load_checkpoint
from torch import nn

import pe_dense  # noqa: F401  (mmengine's local loader)
from pe_dense.checkpoint import CheckpointLayoutError, load_backbone_checkpoint
from pe_dense.models import PEViT, ViTAdapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM, DEPTH, HEADS = 48, 4, 2


def adapter(method='AbsolutePE', **kwargs):
    torch.manual_seed(11)
    kwargs.setdefault('pretrain_size', 64)
    return ViTAdapter(pos_embed=dict(type=method), embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                      interaction_indexes=[[0, 1], [2, 3]], deform_num_heads=6,
                      drop_path_rate=0.0, **kwargs).eval()


def classifier(method='AbsolutePE', pooling='cls', **kwargs):
    torch.manual_seed(12)
    kwargs.setdefault('img_size', 64)
    return PEViT(arch=dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS),
                 pos_embed=dict(type=method), pooling=pooling, drop_path_rate=0.0,
                 **kwargs).eval()


def random_like(state, seed):
    """Every tensor random and distinct (norm weights around 1, the rest around 0)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=g)
        out[key] = noise * 0.2 + 1.0 if value.dim() == 1 and 'norm' in key and key.endswith(
            'weight') else noise * (0.2 if value.dim() <= 1 else value[0].numel() ** -0.5)
    return out


# ------------------------------------------------------------------------- the layouts
def timm_state(patch=16, img=64, layer_scale=False, seed=0):
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
        num_classes=5, init_values=1e-5 if layer_scale else None)
    return random_like(model.state_dict(), seed)


def with_lape_norms(state, seed=1):
    g = torch.Generator().manual_seed(seed)
    state = dict(state)
    for i in range(DEPTH):
        state[f'blocks.{i}.pe_norm.weight'] = 1 + 0.2 * torch.randn(DIM, generator=g)
        state[f'blocks.{i}.pe_norm.bias'] = 0.2 * torch.randn(DIM, generator=g)
    return state


def mmpretrain_vit(layer_scale=0.0):
    from mmpretrain.models.backbones import VisionTransformer
    torch.manual_seed(3)
    model = VisionTransformer(
        arch=dict(embed_dims=DIM, num_layers=DEPTH, num_heads=HEADS, feedforward_channels=4 * DIM),
        img_size=64, patch_size=16, layer_scale_init_value=layer_scale)
    model.eval()  # mmpretrain's train() returns None
    return model


def mmpretrain_state(layer_scale=0.0, seed=2):
    """An mmpretrain ImageClassifier checkpoint's keys: ``backbone.*`` (mmpretrain's own ViT
    names) and ``head.*``."""
    state = random_like(mmpretrain_vit(layer_scale).state_dict(), seed)
    state = {f'backbone.{k}': v for k, v in state.items()}
    state['head.layers.head.weight'] = torch.randn(5, DIM)
    state['head.layers.head.bias'] = torch.randn(5)
    return state


# mmpretrain name -> timm name, per block (written out from mmpretrain's modules).
MMPRETRAIN_BLOCK = {'ln1': 'norm1', 'attn.qkv': 'attn.qkv', 'attn.proj': 'attn.proj',
                    'ln2': 'norm2', 'ffn.layers.0.0': 'mlp.fc1', 'ffn.layers.1': 'mlp.fc2'}


def timm_names_of_mmpretrain(state):
    """Backbone-relative mmpretrain keys -> timm keys, as a table (independent of the loader)."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r'layers\.(\d+)\.(.+)\.(weight|bias)', key)
        if m and m.group(2) in MMPRETRAIN_BLOCK:
            out[f'blocks.{m.group(1)}.{MMPRETRAIN_BLOCK[m.group(2)]}.{m.group(3)}'] = value
        elif m and m.group(2) in ('attn.gamma1', 'ffn.gamma2'):
            out[f'blocks.{m.group(1)}.gamma{m.group(2)[-1]}'] = value
        elif key.startswith('patch_embed.projection.'):
            out['patch_embed.proj.' + key.split('.')[-1]] = value
        elif key.startswith('ln1.'):
            out['norm.' + key.split('.')[-1]] = value
        else:
            out[key] = value
    return out


def released_state(seed=4):
    """The released ViT-Adapter layout of a small model: timm names, the adapter, ``pos_embed``
    with a class slot, under ``backbone.``, beside a neck."""
    state = random_like(adapter().state_dict(), seed)
    table = state.pop('pos_embed.weight')
    state['pos_embed'] = torch.cat([torch.randn(1, 1, DIM), table], 1)
    state = {f'backbone.{k}': v for k, v in state.items()}
    state['neck.weight'] = torch.randn(3, 3)
    return state


def pe_dense_classifier_state(method='AbsolutePE', pooling='cls', seed=5):
    state = random_like(classifier(method, pooling).state_dict(), seed)
    state = {f'backbone.{k}': v for k, v in state.items()}
    state['head.fc.weight'] = torch.randn(5, DIM)
    return state


LAYOUTS = {
    # name: (object saved, backbone-relative tensors, prefix of a whole-model file)
    'deit_release': lambda: ({'model': timm_state()}, timm_state(), ''),
    'timm': lambda: (timm_state(), timm_state(), ''),
    'lape': lambda: (with_lape_norms(timm_state()), with_lape_norms(timm_state()), ''),
    'timm_layer_scale_patch14': lambda: (timm_state(14, 56, True), timm_state(14, 56, True), ''),
    'mmpretrain': lambda: ({'meta': {}, 'state_dict': mmpretrain_state()},
                           mmpretrain_state(), 'backbone.'),
    'released_vit_adapter': lambda: ({'state_dict': released_state(), 'meta': {}},
                                     released_state(), 'backbone.'),
    'pe_dense_classifier': lambda: ({'state_dict': pe_dense_classifier_state(), 'meta': {}},
                                    pe_dense_classifier_state(), 'backbone.'),
    'pe_dense_backbone': lambda: (
        {'meta': {'pe_dense': {'format': 1, 'pos_embed': 'AbsolutePE'}},
         'state_dict': random_like(adapter().state_dict(), 6)},
        random_like(adapter().state_dict(), 6), ''),
}


def backbone_kwargs(layout):
    if layout == 'lape':
        return dict(method='LaPE')
    if layout == 'timm_layer_scale_patch14':
        return dict(patch_size=14, pretrain_size=56)
    return {}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('layouts')
    out = {}
    for name, make in LAYOUTS.items():
        obj, state, prefix = make()
        path = folder / f'{name}.pth'
        torch.save(obj, path)
        rel = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        out[name] = (str(path), rel)
    return out


def expected_in_adapter(layout, state, backbone):
    """The file's tensors under ViTAdapter's names (what each layout means, written out)."""
    if layout == 'mmpretrain':
        state = timm_names_of_mmpretrain(state)
    out = {}
    for key, value in state.items():
        ls = re.fullmatch(r'blocks\.(\d+)\.ls([12])\.gamma', key)
        pe_norm = re.fullmatch(r'blocks\.(\d+)\.pe_norm\.(weight|bias)', key)
        if key == 'pos_embed':
            out['pos_embed.weight'] = value[:, 1:]
        elif ls:
            out[f'blocks.{ls.group(1)}.gamma{ls.group(2)}'] = value
        elif pe_norm:
            out[f'pos_embed.norms.{pe_norm.group(1)}.{pe_norm.group(2)}'] = value
        elif key in backbone.state_dict():
            out[key] = value
    return out


def assert_holds(backbone, expected):
    own = backbone.state_dict()
    for key, value in expected.items():
        assert torch.equal(own[key], value), key
    # Every ViT weight came from the file (layer scale only where the file has one).
    has_ls = any(re.search(r'\.gamma[12]$', k) for k in expected)
    vit = [k for k in own if k.startswith(('patch_embed.', 'blocks.'))
           and (has_ls or not re.search(r'\.gamma[12]$', k))]
    assert not [k for k in vit if k not in expected]


# ------------------------------------------------------------------ route: init_cfg
@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_init_cfg_loads_every_layout(files, layout):
    path, state = files[layout]
    prefixes = [None] + (['backbone.', 'backbone'] if layout in (
        'mmpretrain', 'released_vit_adapter', 'pe_dense_classifier') else [])
    for prefix in prefixes:
        kwargs = backbone_kwargs(layout)
        init_cfg = dict(type='Pretrained', checkpoint=path)
        if prefix:
            init_cfg['prefix'] = prefix
        backbone = adapter(kwargs.pop('method', 'AbsolutePE'), init_cfg=init_cfg, **kwargs)
        backbone.init_weights()
        expected = expected_in_adapter(layout, state, backbone)
        assert_holds(backbone, expected)
        if layout in ('released_vit_adapter', 'pe_dense_backbone'):
            assert set(expected) == set(backbone.state_dict())  # the adapter too


def test_mmpretrain_deit_blocks_compute_what_mmpretrain_computes(files):
    """The issue's case: mmpretrain's DeiT layout through init_cfg with prefix 'backbone.' (which
    used to load only the PE table): each block gives mmpretrain's layer output, with and without
    layer scale."""
    for layer_scale in (0.0, 0.5):
        ref = mmpretrain_vit(layer_scale)
        ref.load_state_dict(random_like(ref.state_dict(), 9))
        path = os.path.join(os.path.dirname(files['timm'][0]), f'mmpretrain_ls{layer_scale}.pth')
        torch.save({'state_dict': {f'backbone.{k}': v for k, v in ref.state_dict().items()}},
                   path)
        ours = adapter(init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
        ours.init_weights()
        x = torch.randn(2, 16, DIM)
        with torch.no_grad():
            assert torch.equal(ours.patch_embed.proj.weight, ref.patch_embed.projection.weight)
            for i in range(DEPTH):
                want = ref.layers[i](x)
                assert (want - x).abs().max() > 0.05
                got = ours.blocks[i](x, (4, 4))
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max())
                x = want


def test_pevit_init_cfg(files):
    """PEViT's init: the classification layouts load (class token, its PE slot and the final norm
    too); the dense files and layer-scale ViTs have tensors PEViT has no place for and stop."""
    for layout in ('deit_release', 'timm', 'mmpretrain', 'pe_dense_classifier'):
        path, state = files[layout]
        model = classifier(init_cfg=dict(type='Pretrained', checkpoint=path))
        model.init_weights()
        if layout == 'mmpretrain':
            state = timm_names_of_mmpretrain(state)
        own = model.state_dict()
        for key, value in state.items():
            if key == 'pos_embed':
                assert torch.equal(own['pos_embed.prefix_weight'], value[:, :1])
                assert torch.equal(own['pos_embed.weight'], value[:, 1:])
            elif not key.startswith('head'):
                assert torch.equal(own[key], value), (layout, key)
        assert all(k in state or k.startswith('pos_embed.') for k in own)
    lape = classifier('LaPE', init_cfg=dict(type='Pretrained', checkpoint=files['lape'][0]))
    lape.init_weights()
    assert torch.equal(lape.pos_embed.norms['2'].bias, files['lape'][1]['blocks.2.pe_norm.bias'])
    for layout, words in (('released_vit_adapter', ['released ViT-Adapter', 'spm']),
                          ('pe_dense_backbone', ["pe-dense's ViTAdapter", 'interactions']),
                          ('timm_layer_scale_patch14', ['layer scale', 'gamma1'])):
        kwargs = dict(patch_size=14, img_size=56) if 'patch14' in layout else {}
        model = classifier(init_cfg=dict(type='Pretrained', checkpoint=files[layout][0]), **kwargs)
        with pytest.raises(CheckpointLayoutError) as err:
            model.init_weights()
        for word in words:
            assert word in str(err.value), (layout, str(err.value))


# -------------------------------------------------------------- route: load_from
class Whole(nn.Module):
    """A whole model as mmdet/mmseg build it: the backbone under ``backbone.``, then a neck."""

    def __init__(self, **kwargs):
        super().__init__()
        method = kwargs.pop('method', 'AbsolutePE')
        self.backbone = adapter(method, **kwargs)
        self.neck = nn.Linear(3, 3, bias=False)


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_load_from_loads_whole_model_files_and_refuses_vit_files(files, layout):
    """mmengine's load_from (Runner.load_checkpoint: _load_checkpoint, then the model's
    load_state_dict with strict=False): files of a whole model load their backbone; files of a ViT
    alone stop with the init_cfg line to use, naming the file."""
    path, state = files[layout]
    model = Whole(**backbone_kwargs(layout))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if layout in ('mmpretrain', 'released_vit_adapter', 'pe_dense_classifier'):
        load_checkpoint(model, path, map_location='cpu', strict=False,
                        revise_keys=[(r'^module\.', '')])
        assert_holds(model.backbone, expected_in_adapter(layout, state, model.backbone))
        return
    with pytest.raises(CheckpointLayoutError) as err:
        load_checkpoint(model, path, map_location='cpu', strict=False,
                        revise_keys=[(r'^module\.', '')])
    msg = str(err.value)
    assert f"model.backbone.init_cfg = dict(type='Pretrained', checkpoint='{path}')" in msg, msg
    assert f'model.backbone.init_cfg.checkpoint={path} load_from=None' in msg
    layout_words = {'deit_release': "{'model': state_dict}", 'lape': 'LaPE',
                    'timm_layer_scale_patch14': 'layer scale', 'timm': 'timm ViT',
                    'pe_dense_backbone': "pe-dense's ViTAdapter"}[layout]
    assert layout_words in msg, msg
    for key, value in model.state_dict().items():  # nothing was changed
        assert torch.equal(value, before[key]), key


def test_runner_load_from_of_a_deit_file_stops_before_training(files, tmp_path):
    """The same through mmengine's Runner and a pe-dense config (the mini Mask R-CNN at the
    file's size): load_or_resume, which tools/train.py and tools/test.py reach, stops."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(
        os.path.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py'))
    cfg.model.backbone.update(embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                              interaction_indexes=[[0, 1], [2, 3]], window_attn=False)
    cfg.model.neck.in_channels = [DIM] * 4
    cfg.work_dir = str(tmp_path)
    cfg.load_from = files['deit_release'][0]
    runner = Runner.from_cfg(cfg)
    with pytest.raises(CheckpointLayoutError, match=r"init_cfg = dict\(type='Pretrained', "
                       r"checkpoint='.*deit_release\.pth'\)"):
        runner.load_or_resume()
    runner.cfg.load_from = None
    runner._load_from = files['mmpretrain'][0]
    runner._has_loaded = False
    runner.load_or_resume()
    expected = expected_in_adapter('mmpretrain', files['mmpretrain'][1], runner.model.backbone)
    assert_holds(runner.model.backbone, expected)


# ------------------------------------------------------------- route: convert tool
def convert_tool():
    spec = importlib.util.spec_from_file_location(
        'convert_checkpoint', os.path.join(ROOT, 'tools', 'convert_checkpoint.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('layout', ['deit_release', 'mmpretrain', 'lape'])
def test_convert_tool_converts_the_classification_layouts(files, layout, tmp_path):
    path, state = files[layout]
    config = tmp_path / 'small.py'
    method = 'LaPE' if layout == 'lape' else 'AbsolutePE'
    config.write_text(f'model = dict(backbone=dict(type="ViTAdapter", pretrain_size=64, '
                      f'embed_dim={DIM}, depth={DEPTH}, num_heads={HEADS}, '
                      'interaction_indexes=[[0, 1], [2, 3]], deform_num_heads=6))\n')
    out = tmp_path / 'converted.pth'
    convert_tool().convert(path, str(out), pos_embed=method, config=str(config),
                           backbone_only=True)
    fresh = adapter(method)
    load_backbone_checkpoint(fresh, str(out))
    assert_holds(fresh, expected_in_adapter(layout, state, fresh))


def test_convert_tool_stops_on_a_truncated_file(files, tmp_path):
    state = {k: v for k, v in files['timm'][1].items() if not k.startswith('blocks.3.')}
    src = tmp_path / 'truncated.pth'
    torch.save(state, src)
    config = tmp_path / 'small.py'
    config.write_text(f'model = dict(backbone=dict(type="ViTAdapter", pretrain_size=64, '
                      f'embed_dim={DIM}, depth={DEPTH}, num_heads={HEADS}, '
                      'interaction_indexes=[[0, 1], [2, 3]], deform_num_heads=6))\n')
    with pytest.raises(SystemExit, match=r'blocks.*initialisation.*depth=3'):
        convert_tool().convert(str(src), str(tmp_path / 'out.pth'), config=str(config))
    assert not (tmp_path / 'out.pth').exists()


# ----------------------------------------------------------------- what stops, and how
def test_errors_name_the_layout_what_is_missing_and_what_to_do(files, tmp_path):
    timm_sd = files['timm'][1]
    cases = []
    # A file two blocks short: the blocks it leaves unset, and the depth it was made for.
    short = tmp_path / 'short.pth'
    torch.save({k: v for k, v in timm_sd.items() if not k.startswith(('blocks.2.', 'blocks.3.'))},
               short)
    cases.append((short, None, 'AbsolutePE',
                  [r'DeiT release / timm', r'initialisation \(blocks 2, 3\)', r'depth=2']))
    # ViT weights nested under a prefix the init_cfg does not give.
    nested = tmp_path / 'nested.pth'
    torch.save({f'encoder.{k}': v for k, v in timm_sd.items()}, nested)
    cases.append((nested, None, 'AbsolutePE', [r"prefix='encoder\.'"]))
    # A prefix the file does not have.
    cases.append((files['timm'][0], 'backbone.', 'AbsolutePE',
                  [r"no keys under the prefix 'backbone\.'", 'leave the prefix out']))
    # A pe-dense MPVG classifier into an AbsolutePE backbone.
    mpvg = tmp_path / 'mpvg.pth'
    torch.save({'state_dict': pe_dense_classifier_state('MPVG', 'gap')}, mpvg)
    cases.append((mpvg, None, 'AbsolutePE',
                  [r"pos_embed=dict\(type='MPVG'\)",
                   r'no place in this ViTAdapter \(AbsolutePE\): pos_embed']))
    # Not a ViT at all (a ResNet-like file).
    resnet = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.randn(4, 3, 3, 3), 'layer1.0.bn1.weight': torch.ones(4)},
               resnet)
    cases.append((resnet, None, 'AbsolutePE', ['no ViT layout pe-dense reads',
                                               'holds no ViT weights']))
    for path, prefix, method, patterns in cases:
        with pytest.raises(CheckpointLayoutError) as err:
            load_backbone_checkpoint(adapter(method), str(path), prefix=prefix)
        for pattern in patterns:
            assert re.search(pattern, str(err.value)), (path, pattern, str(err.value))


def test_a_whole_model_file_without_backbone_weights_stops(tmp_path):
    """A whole-model state dict that holds nothing for the backbone (here: a neck only) stops
    too."""
    path = tmp_path / 'neck_only.pth'
    torch.save({'state_dict': {'neck.weight': torch.randn(3, 3)}}, path)
    with pytest.raises(CheckpointLayoutError, match=r"nothing in it starts with 'backbone\.'.*"
                       r'every ViT block would stay at its initialisation'):
        load_checkpoint(Whole(), str(path), map_location='cpu', strict=False)


# --------------------------------------------------- the command-line tools, end to end
@pytest.fixture(scope='module')
def mini_coco(tmp_path_factory):
    out = tmp_path_factory.mktemp('mini')
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools/make_mini_data.py'), '--out',
                    str(out), '--num-train', '4', '--num-val', '2', '--cls-train', '1',
                    '--cls-val', '1'], check=True, capture_output=True)
    return f'{out}/coco/'


def test_tools_with_a_deit_file_as_load_from_stop_with_the_init_cfg_line(files, mini_coco,
                                                                         tmp_path):
    """The issue's case: `--cfg-options load_from=<DeiT file>` with a Mask R-CNN config, through
    tools/train.py, tools/test.py (CHECKPOINT) and mmdet's own tools/test.py: each stops before
    training or testing, with the init_cfg line naming the file."""
    import mmdet
    deit = files['deit_release'][0]
    config = os.path.join(ROOT, 'configs/mini/mask-rcnn_vit-adapter-ti-abs_fpn_mini.py')
    data = [f'{split}_dataloader.dataset.data_root={mini_coco}' for split in
            ('train', 'val', 'test')]
    data += [f'{split}_evaluator.ann_file={mini_coco}annotations/instances_val2017.json'
             for split in ('val', 'test')]
    mmdet_test = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
    commands = [
        [os.path.join(ROOT, 'tools/train.py'), config, '--work-dir', str(tmp_path / 'a'),
         '--cfg-options', *data, f'load_from={deit}', 'train_cfg.max_iters=1',
         'train_cfg.val_interval=2'],
        [os.path.join(ROOT, 'tools/test.py'), config, deit, '--work-dir', str(tmp_path / 'b'),
         '--cfg-options', *data],
        [mmdet_test, config, deit, '--work-dir', str(tmp_path / 'c'), '--cfg-options', *data,
         "custom_imports.imports=['pe_dense']"],
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
    for cmd in commands:
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True,
                              env=env, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-2000:]
        assert f"model.backbone.init_cfg = dict(type='Pretrained', checkpoint='{deit}')" in out, \
            out[-3000:]
        assert 'Iter(' not in out and 'coco/bbox_mAP' not in out  # nothing trained or tested


def test_released_file_without_batchnorm_step_counters_loads(files, tmp_path):
    """Files written before BatchNorm counted its steps lack ``num_batches_tracked``: still a
    complete ViT-Adapter file."""
    path, state = files['released_vit_adapter']
    obj = torch.load(path)
    obj['state_dict'] = {k: v for k, v in obj['state_dict'].items()
                         if not k.endswith('num_batches_tracked')}
    old = tmp_path / 'old_released.pth'
    torch.save(obj, old)
    backbone = adapter(init_cfg=dict(type='Pretrained', checkpoint=str(old)))
    backbone.init_weights()
    expected = expected_in_adapter('released_vit_adapter', state, backbone)
    assert_holds(backbone, {k: v for k, v in expected.items()
                            if not k.endswith('num_batches_tracked')})
    # ... but a file without an adapter part it should hold stops.
    obj['state_dict'] = {k: v for k, v in obj['state_dict'].items()
                         if not k.startswith('backbone.interactions.1.')}
    torch.save(obj, old)
    with pytest.raises(CheckpointLayoutError, match=r'interactions'):
        adapter(init_cfg=dict(type='Pretrained', checkpoint=str(old))).init_weights()
