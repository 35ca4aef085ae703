"""The OpenMMLab stack works on this torch: mmcv's compiled ops give known answers, mmdet and
mmseg import, and pe_dense's modules are found by plain name from both frameworks' registries."""
import torch


def test_mmcv_nms_known_answer():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.],
                          [0., 0., 10., 9.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(box 3, box 0) = 90/100 and IoU(box 3, box 1) = 72/118 = 0.61: box 3 (best) removes
    # 0 and 1 at a threshold of 0.5; at 0.65 box 1 survives (box 0, its other overlap, is gone).
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [3, 2]
    assert torch.allclose(dets[:, 4], torch.tensor([0.95, 0.7]))
    _, keep = nms(boxes, scores, iou_threshold=0.65)
    assert keep.tolist() == [3, 1, 2]


def test_mmcv_roi_align_known_answer():
    from mmcv.ops import RoIAlign
    h, w = 8, 8
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing='ij')
    # Channel 0 is f = x, channel 1 is f = 10 y: bilinear sampling of a linear map is exact, so
    # each bin's value is the function at the bin centre.
    feat = torch.stack([xs, 10 * ys])[None]
    rois = torch.tensor([[0., 0., 0., 4., 4.], [0., 2., 1., 6., 3.]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feat, rois)
    assert out.shape == (2, 2, 2, 2)
    # aligned=True shifts by half a pixel: roi [0, 4] has bin centres at 0.5 and 2.5.
    assert torch.allclose(out[0, 0], torch.tensor([[0.5, 2.5], [0.5, 2.5]]), atol=1e-5)
    assert torch.allclose(out[0, 1], torch.tensor([[5., 5.], [25., 25.]]), atol=1e-4)
    # roi x in [2, 6] -> centres 2.5, 4.5; y in [1, 3] -> centres 1, 2 (times 10).
    assert torch.allclose(out[1, 0], torch.tensor([[2.5, 4.5], [2.5, 4.5]]), atol=1e-5)
    assert torch.allclose(out[1, 1], torch.tensor([[10., 10.], [20., 20.]]), atol=1e-4)


def test_frameworks_import():
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    assert DET_MODELS.get('MaskRCNN') is not None
    assert SEG_MODELS.get('EncoderDecoder') is not None


def test_pe_dense_modules_found_from_mmdet_and_mmseg():
    import pe_dense  # noqa: F401
    from mmdet.registry import MODELS as DET_MODELS
    from mmdet.utils import register_all_modules as det_register
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.utils import register_all_modules as seg_register
    from pe_dense.models import ViTAdapter

    det_register(init_default_scope=False)
    seg_register(init_default_scope=False)
    assert DET_MODELS.get('ViTAdapter') is ViTAdapter
    assert SEG_MODELS.get('ViTAdapter') is ViTAdapter
    for registry in (DET_MODELS, SEG_MODELS):
        backbone = registry.build(dict(type='ViTAdapter', depth=4,
                                       interaction_indexes=[[0, 1], [2, 3]]))
        assert isinstance(backbone, ViTAdapter)
        assert len(backbone.blocks) == 4
