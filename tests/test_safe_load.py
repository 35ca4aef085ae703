"""Checkpoint loading never runs code from the file: the allow-list admits what OpenMMLab
checkpoints hold and refuses the rest on every route (pe-dense's loader, mmengine's loader, the
backbone's Pretrained init), with an error that names the global, the file and the opt-in."""
import fractions
import logging
import os

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint

import pe_dense  # noqa: F401  (installs the loader)
from pe_dense.checkpoint import load_backbone_checkpoint, read_checkpoint
from pe_dense.models import ViTAdapter
from pe_dense.safe_load import (TRUST_ENV, UnsafeCheckpointError, _history_buffer_getattr,
                                allowed_globals, load_checkpoint_file)


class CreatesAFile:
    """Unpickling this calls ``open(target, 'w')``: a file appears if the loader runs it."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, 'w'))


class CallsGetattr:
    """Unpickling this calls ``getattr('text', 'upper')``: a getattr on something other than
    mmengine's HistoryBuffer."""

    def __reduce__(self):
        return (getattr, ('text', 'upper'))


def crafted(tmp_path, payload, name='crafted.pth'):
    path = tmp_path / name
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'x': payload}}, path)
    return path


def test_crafted_pickle_is_refused_on_every_route_and_creates_nothing(tmp_path):
    target = tmp_path / 'created_by_the_checkpoint'
    path = crafted(tmp_path, CreatesAFile(target))
    routes = [
        lambda: load_checkpoint_file(path),
        lambda: read_checkpoint(str(path)),
        lambda: CheckpointLoader.load_checkpoint(str(path), map_location='cpu'),
        lambda: load_checkpoint(torch.nn.Linear(2, 2), str(path)),
        lambda: ViTAdapter(init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights(),
    ]
    for route in routes:
        with pytest.raises(UnsafeCheckpointError) as err:
            route()
        msg = str(err.value)
        assert 'open' in msg and str(path) in msg and TRUST_ENV in msg, msg
        assert not target.exists()


def test_getattr_only_for_history_buffer_methods(tmp_path):
    assert _history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in [(HistoryBuffer, '__init__'), (HistoryBuffer, '_set_default_statistics'),
                      (os, 'system'), ('text', 'upper'), (HistoryBuffer, 'no_such_method')]:
        with pytest.raises(UnsafeCheckpointError, match='getattr'):
            _history_buffer_getattr(obj, name)
    path = crafted(tmp_path, CallsGetattr())
    with pytest.raises(UnsafeCheckpointError, match=r"getattr\(str, 'upper'\)"):
        load_checkpoint_file(path)


def test_trusted_file_is_read_in_full_only_when_listed(tmp_path, monkeypatch):
    path = crafted(tmp_path, fractions.Fraction(1, 3))
    with pytest.raises(UnsafeCheckpointError, match='fractions.Fraction'):
        load_checkpoint_file(path)
    other = crafted(tmp_path, fractions.Fraction(1, 3), name='other.pth')
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([str(tmp_path / 'x.pth'), str(path)]))
    assert load_checkpoint_file(path)['meta']['x'] == fractions.Fraction(1, 3)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_file(other)


def test_openmmlab_contents_load(tmp_path):
    """What mmengine's message hub and released mmdet/mmseg files pickle: HistoryBuffer objects,
    numpy arrays, scalars and dtypes, config text and class names."""
    buf = HistoryBuffer()
    for v in (1.0, 3.0, 2.0):
        buf.update(v)
    ckpt = {
        'meta': {'config': "model = dict(type='MaskRCNN')", 'CLASSES': ('person', 'car'),
                 'PALETTE': [[220, 20, 60], [0, 0, 142]], 'epoch': 36, 'iter': np.int64(7),
                 'seed': np.int32(0), 'lr': np.float64(1e-4), 'dtype': np.dtype('float32'),
                 'hist': np.arange(6, dtype=np.float64).reshape(2, 3)},
        'message_hub': {'log_scalars': {'train/loss': buf},
                        'runtime_info': {'iter': 7, 'dataset_meta': {'classes': ('a', 'b')}}},
        'state_dict': {'backbone.w': torch.arange(4.0)},
    }
    path = tmp_path / 'released_style.pth'
    torch.save(ckpt, path)
    with pytest.raises(Exception):  # torch's own defaults refuse it
        torch.load(path, weights_only=True)
    got = load_checkpoint_file(path)
    assert got['meta']['CLASSES'] == ('person', 'car') and got['meta']['iter'] == 7
    assert got['meta']['dtype'] == np.float32 and got['meta']['lr'] == 1e-4
    np.testing.assert_array_equal(got['meta']['hist'], ckpt['meta']['hist'])
    hub = got['message_hub']['log_scalars']['train/loss']
    assert isinstance(hub, HistoryBuffer) and hub.mean() == 2.0 and hub.max() == 3.0
    assert torch.equal(got['state_dict']['backbone.w'], torch.arange(4.0))


def test_importing_pe_dense_adds_nothing_to_torchs_global_allow_list():
    torch_wide = torch.serialization.get_safe_globals()
    for entry in allowed_globals():
        assert entry not in torch_wide
        assert (entry[0] if isinstance(entry, tuple) else entry) not in torch_wide


def test_not_a_checkpoint_and_missing_files_are_plain_errors(tmp_path):
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
        read_checkpoint(str(junk))
    with pytest.raises(FileNotFoundError, match=r'configs/deit/deit-ti-pvg_4xb256-300e_in1k\.py'):
        read_checkpoint(str(tmp_path / 'pretrained' / 'deit-ti_pvg_in1k.pth'))
    with pytest.raises(FileNotFoundError, match='DeiT-Ti release'):
        read_checkpoint(str(tmp_path / 'deit_tiny_patch16_224-a1311bcf.pth'))


def test_loader_names_every_dropped_key(tmp_path, caplog):
    """A DeiT-style classifier file with a LaPE norm for block 0, into PVG (no PE at block 0) and
    NoPE (no table): the one log line names each key the conversion drops."""
    import timm
    deit = timm.create_model('deit_tiny_patch16_224', pretrained=False).state_dict()
    deit['blocks.0.pe_norm.weight'] = torch.ones(192)
    deit['blocks.0.pe_norm.bias'] = torch.zeros(192)
    path = tmp_path / 'deit_lape.pth'
    torch.save({'model': deit}, path)
    logger = logging.getLogger('pe_dense.test')
    expected = {
        'PVG': ['cls_token', 'head.{bias, weight}', 'norm.{bias, weight}',
                'blocks.{*.pe_norm.bias, *.pe_norm.weight}'],
        'NoPE': ['cls_token', 'pos_embed', 'head.{bias, weight}', 'norm.{bias, weight}',
                 'blocks.{*.pe_norm.bias, *.pe_norm.weight}'],
    }
    for method, names in expected.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger='pe_dense.test'):
            load_backbone_checkpoint(ViTAdapter(pos_embed=dict(type=method)), str(path),
                                     logger=logger)
        line = caplog.records[-1].getMessage()
        dropped = line.split('dropped (')[1].split('; missing')[0]
        # cls_token, head (2), norm (2), the LaPE norm pair; NoPE also the table.
        assert dropped.startswith(f'{7 + (method == "NoPE")}):'), line
        for name in names:
            assert name in dropped, (method, name, line)
