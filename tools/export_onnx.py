"""Exports a pe-dense model to ONNX and checks the file with onnxruntime on the CPU.

    python tools/export_onnx.py CONFIG [CHECKPOINT] --out FILE [--shape H W] [--dynamic]
        [--second-shape H W] [--part {model,backbone}] [--opset N] [--rtol R] [--atol A]
        [--repeats N]
        [--json FILE] [--cfg-options KEY=VALUE ...]

``--part model`` (default): an UperNet config gives the segmentor up to its logits (stride 4), a
Mask R-CNN config the backbone + FPN (the RPN and RoI heads stay in PyTorch), a pre-training
(mmpretrain) config the classifier's logits; ``--part backbone``: the backbone alone (ViT-Adapter:
its four maps). Without CHECKPOINT the weights are random (enough to check
the export). The file is run with onnxruntime on the same seeded input as PyTorch; the largest
absolute difference per output and both latencies (median of ``--repeats`` runs, same thread
count) are printed. With ``--dynamic`` the height and width are free and the check runs at
``--second-shape`` too (default: W x (H + 64)). Per output the largest absolute difference, the
output's largest absolute value and their ratio are printed; an output passes when
``max|diff| <= rtol * max|value| + atol`` (``--rtol`` 1e-4, ``--atol`` 1e-5: a bound relative to the
output's scale, since rounding differences between PyTorch's and onnxruntime's kernels grow with
the values and differ between CPUs and thread counts). Exits with status 1 if an output fails.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
import warnings

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

import torch  # noqa: E402

from pe_dense import deploy  # noqa: E402

# Operators named in the summary line: what carries the deformable attention and the PEs.
KEY_OPERATORS = ('GridSample', 'Resize', 'Conv', 'LayerNormalization', 'MatMul', 'Softmax')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Export a pe-dense model to ONNX and check it '
                                     'with onnxruntime')
    parser.add_argument('config', help='mmdet, mmseg or mmpretrain config file')
    parser.add_argument('checkpoint', nargs='?', help='trained checkpoint (default: random '
                        'weights)')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--shape', nargs=2, type=int, default=[512, 512], metavar=('H', 'W'),
                        help='input height and width of the export and the first check')
    parser.add_argument('--dynamic', action='store_true', help='free input height and width')
    parser.add_argument('--second-shape', nargs=2, type=int, metavar=('H', 'W'),
                        help='with --dynamic: the second size checked')
    parser.add_argument('--part', choices=deploy.PARTS, default='model')
    parser.add_argument('--opset', type=int, default=deploy.OPSET)
    parser.add_argument('--rtol', type=float, default=deploy.RTOL,
                        help='accepted largest |difference| per output, relative to the output\'s '
                        'largest |value| (default %(default)g)')
    parser.add_argument('--atol', type=float, default=deploy.ATOL,
                        help='absolute floor added to the bound, for outputs near zero '
                        '(default %(default)g)')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per latency')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.pos_embed.type=PEG')
    args = parser.parse_args(argv)
    if args.second_shape and not args.dynamic:
        parser.error('--second-shape needs --dynamic (a static graph takes one size)')
    for flag, shape in (('--shape', args.shape), ('--second-shape', args.second_shape)):
        if args.dynamic and shape and any(v % 32 for v in shape):
            parser.error(f'{flag} {shape[0]} {shape[1]}: a dynamic export takes heights and '
                         'widths that are multiples of 32')
    return args


def main(argv=None) -> int:
    from mmengine.config import Config
    args = parse_args(argv)
    if args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint} does not exist')
    shapes = [tuple(args.shape)]
    if args.dynamic:
        shapes.append(tuple(args.second_shape or (args.shape[1], args.shape[0] + 64)))
    try:
        shapes = deploy.check_shapes(shapes)
    except ValueError as e:
        raise SystemExit(str(e))
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    torch.manual_seed(0)
    try:
        model = deploy.build_model(cfg, args.checkpoint)
        module = deploy.export_module(model, args.part)
    except ValueError as e:  # a checkpoint that does not fit, a model without the part
        raise SystemExit(f'error: {e}')
    images = [torch.randn(1, 3, h, w) for h, w in shapes]

    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    start = time.perf_counter()
    try:
        names = deploy.export_onnx(module, images[0], args.out, dynamic=args.dynamic,
                                   opset=args.opset)
    except ValueError as e:  # an opset the exporter cannot write
        raise SystemExit(f'error: {e}')
    seconds = time.perf_counter() - start
    ops = deploy.onnx_operators(args.out)
    size = 'free height and width' if args.dynamic else 'static size %dx%d' % shapes[0]
    print(f'exported {args.part} of {osp.basename(args.config)} to {args.out} '
          f'({osp.getsize(args.out) / 1e6:.1f} MB, opset {args.opset}, {size}) in {seconds:.0f} s')
    print('operators: ' + ', '.join(f'{op} x{ops[op]}' for op in KEY_OPERATORS if op in ops)
          + f'; {sum(ops.values())} nodes of {len(ops)} types')

    session = deploy.onnx_session(args.out)
    results, ok = [], True
    for (h, w), image in zip(shapes, images):
        diffs = deploy.compare(module, session, image)
        t_torch, t_ort = deploy.latencies(module, session, image, args.repeats)
        for n, d in zip(names, diffs):
            passed = d.within(args.rtol, args.atol)
            ok &= passed
            print(f'{h}x{w}: {n} {d.shape} max|diff| {d.max_abs_diff:.1e}, max|value| '
                  f'{d.max_abs_ref:.1e}, relative {d.rel_diff:.1e}{"" if passed else "  FAILED"}')
        print(f'{h}x{w}: latency PyTorch {t_torch:.1f} ms, onnxruntime {t_ort:.1f} ms '
              f'({torch.get_num_threads()} threads)')
        results.append(dict(shape=[h, w], max_abs_diff=[d.max_abs_diff for d in diffs],
                            max_abs_value=[d.max_abs_ref for d in diffs],
                            rel_diff=[d.rel_diff for d in diffs],
                            output_shapes=[list(d.shape) for d in diffs],
                            torch_ms=t_torch, onnxruntime_ms=t_ort))
    worst = max(d for r in results for d in r['rel_diff'])
    print(f'parity: largest relative difference {worst:.1e}; bound max|diff| <= {args.rtol:g} x '
          f'max|value| + {args.atol:g}: {"ok" if ok else "FAILED"}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, part=args.part, opset=args.opset,
                           dynamic=args.dynamic, rtol=args.rtol, atol=args.atol,
                           export_seconds=seconds, operators=ops,
                           threads=torch.get_num_threads(), checks=results, ok=ok), f, indent=1)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
