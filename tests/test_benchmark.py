"""pe_dense.benchmark (tools/benchmark.py): option checks, sizes, the models timed, the ratios, the
Markdown rows from known records, a tiny CPU run (parameter counts against the documented ones:
ViT-Adapter-Ti has 7,966,448 parameters with the 37,632 of AbsolutePE's table, PEG's convolution
has 1,920) and the CPU peak-memory measurement in its own subprocess."""
import pytest
import torch

from pe_dense import benchmark

NO_PE = 7_966_448 - 37_632  # the backbone without any position-encoding parameter


def test_sizes_are_width_by_height():
    assert benchmark.parse_size('1333x800') == (800, 1333)
    assert benchmark.parse_size('64X32') == (32, 64)
    with pytest.raises(ValueError, match='WIDTHxHEIGHT'):
        benchmark.parse_size('512')


@pytest.mark.parametrize('options, message', [
    (dict(repeats=0), '--repeats and --batch must be >= 1'),
    (dict(batch=0), '--repeats and --batch must be >= 1'),
    (dict(warmup=-1), '--warmup >= 0'),
    (dict(clock='cpu', device='cuda'), '--clock cpu is for --device cpu'),
    (dict(amp='fp16'), '--amp fp16 needs --device cuda'),
    (dict(amp='fp16', device='cpu:0'), '--amp fp16 needs --device cuda'),
    (dict(amp='fp8'), '--amp must be one of'),
    (dict(with_cp=True, train=False), '--with-cp measures training'),
    (dict(sizes=['64x64', '20x20']), '--sizes 20x20: ViTAdapter takes images of at least 32'),
    (dict(sizes=['0x64']), 'at least 32 pixels'),
    (dict(sizes=['64']), "size '64' is not WIDTHxHEIGHT"),
    (dict(sizes='64x64'), 'are lists'),
    (dict(methods=['NoPE', 'Foo']), r"--methods: unknown \['Foo'\]"),
    (dict(threads=0), '--threads must be >= 1'),
    (dict(config='/nonexistent/cfg.py'), '--config /nonexistent/cfg.py does not exist'),
    (dict(clock='gpu'), "--clock must be 'wall' or 'cpu'"),
    (dict(cuda_sampler='pytorch'), '--cuda-sampler pytorch is for --device cuda'),
    (dict(cuda_sampler='triton', device='cuda'), '--cuda-sampler must be one of'),
])
def test_options_that_cannot_run_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        benchmark.check_options(**options)


def test_options_that_can_run_pass():
    benchmark.check_options()
    benchmark.check_options(clock='cpu', amp='bf16', with_cp=True)
    benchmark.check_options(device='cuda:1', amp='fp16', repeats=1, warmup=0)
    benchmark.check_options(sizes=['32x32', '1333x800'], methods=['RoPEAxial'], threads=1)
    benchmark.check_options(device='cuda', amp='bf16', cuda_sampler='pytorch')


def test_models_timed_per_method():
    assert benchmark.variants() == [('fast', True, None)]
    assert benchmark.variants(reference=True) == [('reference', False, None)]
    assert benchmark.variants(compare=True, with_cp=True) == [
        ('fast', True, False), ('fast+cp', True, True),
        ('reference', False, False), ('reference+cp', False, True)]


def test_ratios_are_medians_of_per_round_ratios():
    # ratios 2, 2, 3 -> 2; and 1, 5, 0.5 -> 1, where the ratio of the medians would be 3 / 2
    assert benchmark.paired_ratio([2, 4, 9], [1, 2, 3]) == 2
    assert benchmark.paired_ratio([1, 10, 3], [1, 2, 6]) == 1


META = dict(backbone='b', device_name='CPU x', threads=2, batch=1, repeats=3, warmup=1,
            clock='wall', omp_wait_policy='unset', torch='2', load='0.1', amp='off',
            precision='float32', memory_method='m', command='c', date='d')


def _record(path, **extra):
    record = dict(size=[800, 1333], method='PEG', path=path, params=7_930_736, gmacs=20.98,
                  fwd_ms=751.04, img_per_s=1.3315, train_ms=2358.0, fwd_peak_mib=100.0,
                  train_peak_mib=590.0, fwd_vs_abs=1.02, train_vs_abs=0.95)
    record.update(extra)
    return record


def test_markdown_rows():
    fast = _record('fast', fwd_speedup=1.666, train_speedup=1.5, fwd_peak_ratio=0.5,
                   train_peak_ratio=0.8, cp_train_peak_mib=216.0, cp_peak_ratio=0.366,
                   cp_time_ratio=1.25)
    reference = _record('reference', gmacs=None)
    plain = benchmark.markdown(META, [fast, reference]).splitlines()
    assert ('| 1333x800 | PEG | fast | 7.93 | 20.98 | 751.0 | 1.33 | 2358.0 | 100.0 | 590.0 '
            '| +2.0% | -5.0% |') in plain
    assert '| 1333x800 | PEG | reference | 7.93 | - | 751.0 |' in '\n'.join(plain)
    assert not any(line.startswith('## ') for line in plain)
    both = benchmark.markdown(META, [fast, reference], compare=True, with_cp=True)
    assert '| 1333x800 | PEG | 1.67x | 1.50x | 0.50 | 0.80 |' in both
    assert '| 1333x800 | PEG | fast | 590.0 | 216.0 | 0.37 | 1.25 |' in both


@pytest.fixture
def one_thread():
    """run_benchmark(threads=1) sets torch's thread count: put it back afterwards (on a busy
    2-core machine, two threads made this tiny run 50 times slower)."""
    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


def test_a_tiny_run_on_the_cpu(one_thread):
    meta, records = benchmark.run_benchmark(
        methods=('AbsolutePE', 'PEG'), sizes=('64x32',), threads=one_thread, repeats=2, warmup=0,
        memory=False, flops=False, load='n/a', command='test')
    assert [(r['method'], r['path'], r['size']) for r in records] == [
        ('AbsolutePE', 'fast', [32, 64]), ('PEG', 'fast', [32, 64])]
    assert [r['params'] for r in records] == [NO_PE + 37_632, NO_PE + 1_920]
    absolute, peg = records
    assert absolute['fwd_vs_abs'] == 1.0 and absolute['train_vs_abs'] == 1.0
    for r in records:
        assert len(r['fwd_runs_ms']['wall']) == 2 and len(r['train_runs_ms']['cpu']) == 2
        assert r['img_per_s'] == pytest.approx(1e3 / r['fwd_ms'], rel=1e-12)
        assert r['gmacs'] is None and 'fwd_peak_mib' not in r
    assert (meta['batch'], meta['repeats'], meta['threads'], meta['command'],
            meta['precision'], meta['sampler']) == (1, 2, 1, 'test', 'float32',
                                                    'PyTorch sampler (CPU)')
    assert '- deformable attention: PyTorch sampler (CPU)' in benchmark.markdown(meta, records)


def test_cpu_peak_memory_in_a_fresh_process():
    """A training pass of a 64 x 64 image needs the activations of 12 blocks and 4 interactions:
    tens of MiB (32 MiB measured), far above the forward pass without gradients (about 1 MiB)."""
    spec = benchmark.memory_spec({}, 'AbsolutePE', True, False, (64, 64), 1, 'train',
                                 torch.device('cpu'), 1)
    result = benchmark.peak_memory(spec)
    assert result['how'] in ('VmHWM - VmRSS after warm-up', 'ru_maxrss - RSS, no warm-up')
    assert 8 * benchmark.MiB < result['peak_bytes'] < 512 * benchmark.MiB
