"""The hand-off of ImageNet pre-training to the dense stage, on a mini run with DeiT's defaults
(repeated augmentation, an EMA of the weights): ``handoff_model.pth`` holds the model's own
weights (what DeiT reports), ``handoff_ema.pth`` the EMA, checked against a run without EMA and
the EMA recurrence written out; ViTAdapter reads the hand-off file."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import pe_dense  # noqa: F401  (registers the hook)
from pe_dense.checkpoint import load_backbone_checkpoint
from pe_dense.engine import HAND_OFF_FILES
from pe_dense.datasets import mini
from pe_dense.models import ViTAdapter

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

ITERS, MOMENTUM = 3, 0.5


def mini_config(data_root, work_dir, name, ema):
    """The mini DeiT-Ti classifier with the DeiT configs' sampler and hooks, ITERS iterations at a
    constant lr, a checkpoint after every iteration; EMA momentum MOMENTUM (a large one, so that
    the EMA is far from the weights after a few steps)."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs/mini/deit-ti-abs_mini.py'))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = name
    cfg.train_dataloader.batch_size = 4
    cfg.train_dataloader.sampler = dict(type='RepeatAugSampler', num_repeats=3, shuffle=True)
    cfg.train_dataloader.dataset.data_root = str(data_root)
    cfg.val_dataloader.dataset.data_root = str(data_root)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS, val_interval=ITERS)
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=1,
                                        max_keep_ckpts=ITERS)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1, log_metric_by_epoch=False)
    if ema:
        deit = Config.fromfile(osp.join(ROOT, 'configs/deit/deit-ti-abs_4xb256-300e_in1k.py'))
        cfg.custom_hooks = deit.custom_hooks
        cfg.custom_hooks[0].momentum = MOMENTUM
    return cfg


def weights(path, key='state_dict'):
    return torch.load(path, map_location='cpu', weights_only=False)[key]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Two identical seeded runs, one with the DeiT configs' EMA and hand-off hooks."""
    root = tmp_path_factory.mktemp('hand_off')
    data = root / 'imagenet'
    mini.make_imagenet(data, num_train=8, num_val=2, size=(64, 64))
    dirs = {}
    for name, ema in (('plain', False), ('deit', True)):
        dirs[name] = root / name
        Runner.from_cfg(mini_config(data, dirs[name], f'hand_off_{name}', ema)).train()
    return dirs


def test_hand_off_holds_the_model_weights_and_the_ema_beside(runs):
    plain, deit = runs['plain'], runs['deit']
    assert not osp.exists(plain / HAND_OFF_FILES['ema'])
    model = torch.load(deit / HAND_OFF_FILES['model'], map_location='cpu', weights_only=False)
    ema = torch.load(deit / HAND_OFF_FILES['ema'], map_location='cpu', weights_only=False)
    assert model['meta'] == dict(hand_off='model', iter=ITERS, epoch=0)
    assert ema['meta'] == dict(hand_off='ema', iter=ITERS, epoch=0)
    model, ema = model['state_dict'], ema['state_dict']
    # The run without EMA: its weights after each iteration.
    steps = [weights(plain / f'iter_{i}.pth') for i in range(1, ITERS + 1)]
    assert set(model) == set(ema) == set(steps[-1])
    assert any(k.startswith('backbone.') for k in model) and 'head.fc.weight' in model
    # mmengine's EMA: a copy after the first step, then ema <- ema + m (w - ema) after each;
    # with m = 1/2 over three steps: w1 / 4 + w2 / 4 + w3 / 2.
    moved = 0.0
    for key, final in steps[-1].items():
        torch.testing.assert_close(model[key], final, rtol=0, atol=0, msg=key)
        by_hand = 0.25 * steps[0][key] + 0.25 * steps[1][key] + 0.5 * steps[2][key]
        torch.testing.assert_close(ema[key], by_hand, rtol=1e-5, atol=1e-7, msg=key)
        moved = max(moved, (ema[key] - final).abs().max().item())
    assert moved > 1e-4  # the two sets differ: the test tells one from the other
    # mmengine's own checkpoint of the EMA run holds the EMA as state_dict: not the hand-off.
    checkpoint = weights(deit / f'iter_{ITERS}.pth')
    key = 'backbone.blocks.0.attn.qkv.weight'
    torch.testing.assert_close(checkpoint[key], ema[key], rtol=0, atol=0)
    assert not torch.equal(checkpoint[key], model[key])


def test_vit_adapter_reads_the_hand_off_file(runs):
    path = runs['deit'] / HAND_OFF_FILES['model']
    state = weights(path)
    backbone = ViTAdapter(pretrain_size=64)
    load_backbone_checkpoint(backbone, str(path))
    for name in ('blocks.3.attn.qkv.weight', 'blocks.11.mlp.fc2.bias', 'patch_embed.proj.weight',
                 'pos_embed.weight'):
        torch.testing.assert_close(backbone.state_dict()[name], state[f'backbone.{name}'],
                                   rtol=0, atol=0, msg=name)
