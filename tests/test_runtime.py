"""``pe_dense.runtime.finish_distributed``: in a process with a (gloo) process group it ends the
process with status 0 once every rank has arrived, after flushing the standard streams and the
log files, and without the interpreter's shutdown (no ``atexit`` handler runs); without a process
group it returns and the program goes on."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = r'''
import atexit, logging, sys
import torch.distributed as dist
from pe_dense.runtime import finish_distributed
log_file, world = sys.argv[1], sys.argv[2]
logger = logging.getLogger('run')
logger.addHandler(logging.FileHandler(log_file))
logger.setLevel(logging.INFO)
if world == '1':
    # a file store: no TCP port that another process could hold
    dist.init_process_group('gloo', init_method='file://' + log_file + '.store', rank=0,
                            world_size=1)
atexit.register(lambda: print('atexit ran'))
logger.info('logged before the end')
sys.stdout.write('written before the end')  # no newline: still in the buffer
sys.stderr.write('to stderr')
finish_distributed()
print(' | returned')
'''


def run(tmp_path, world):
    log = tmp_path / f'run_{world}.log'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                   os.environ.get('PYTHONPATH')])))
    # stdout is a pipe, so Python buffers it fully: only a flush before the end shows it.
    proc = subprocess.run([sys.executable, '-c', PROGRAM, str(log), world], capture_output=True,
                          text=True, env=env, timeout=120)
    return proc, log.read_text()


def test_with_a_process_group_the_process_ends_there_with_everything_flushed(tmp_path):
    proc, log = run(tmp_path, '1')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'written before the end'
    assert proc.stderr.endswith('to stderr')
    assert log == 'logged before the end\n'


def test_without_a_process_group_it_returns(tmp_path):
    proc, log = run(tmp_path, '0')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'written before the end | returned\natexit ran\n'
    assert log == 'logged before the end\n'
