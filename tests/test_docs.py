"""README.md and docs/*.md against the repository, and the shape of tools/.

(a) What the documents name exists:
    - in every command (each line of a ```bash / ```sh / ```shell block, continuation lines
      joined, and each inline code span that starts with ``python`` or ``bash``, possibly after
      ``VAR=value`` settings): every token that starts with ``tools/`` or ``configs/`` (``./``
      allowed), and the script that ``python`` / ``bash`` runs, unless it lies outside the
      repository (an absolute path or one under ``.venv/``);
    - every inline code span that is a single path under ``tools/``, ``configs/``, ``pe_dense/``,
      ``tests/`` or ``docs/``;
    - every relative link or image target, taken from the document's own folder, and the
      ``#anchor`` of a link into a Markdown file: one of its headings (GitHub's slugs).
    Placeholders stand for any name: ``{m}`` and ``${m}`` and ``<class>`` become ``*`` (at least one
    file must match), ``{s,b}`` expands to each alternative (each must exist). Outputs such as
    ``work_dirs/...``, ``data/...`` or ``pretrained/...`` and the words CONFIG, CHECKPOINT, ... are
    not looked up: they do not start with a checked folder.
(b) Every ``tools/*.py`` answers ``--help`` with exit status 0 and its usage line; every
    ``tools/*.sh`` passes ``bash -n``.
(c) README.md is at most 12,000 bytes and each ``tools/*.py`` at most 150 lines; docs/README.md
    links every page of docs/; the README's test command is what ``.ci/run`` runs.
"""
import glob
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
TOOLS_PY = sorted((ROOT / 'tools').glob('*.py'))
TOOLS_SH = sorted((ROOT / 'tools').glob('*.sh'))
COMMAND_DIRS = ('tools/', 'configs/')
PROSE_DIRS = ('tools/', 'configs/', 'pe_dense/', 'tests/', 'docs/')
README_MAX_BYTES = 12_000
TOOL_MAX_LINES = 150

FENCE = re.compile(r'^```(\w*)\s*$')
INLINE = re.compile(r'`([^`]+)`')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
ASSIGNMENT = re.compile(r'^[A-Z_][A-Z0-9_]*=\S*$')


def split_markdown(text: str) -> tuple:
    """(command lines of the shell blocks, the text outside any code block)."""
    commands, prose, language, pending = [], [], None, ''
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language is None:
            prose.append(line)
        elif language in ('bash', 'sh', 'shell'):
            line = line.split(' #')[0] if not line.lstrip().startswith('#') else ''
            pending += line.rstrip()
            if pending.endswith('\\'):
                pending = pending[:-1] + ' '
                continue
            if pending.strip():
                commands.append(' '.join(pending.split()))
            pending = ''
    return commands, '\n'.join(prose)


def inline_commands(prose: str) -> list:
    """Inline code spans that run something: ``python ...`` or ``bash ...`` after settings."""
    found = []
    for span in INLINE.findall(prose):
        span = ' '.join(span.split())
        words = span.split()
        while words and ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words and words[0] in ('python', 'bash'):
            found.append(span)
    return found


def _clean(token: str) -> str:
    return token.strip('\'"').rstrip('.,;:)]')


def command_paths(command: str) -> list:
    """The repository paths a command names (see the module docstring)."""
    words = [_clean(w) for w in command.split()]
    paths = []
    for i, word in enumerate(words):
        word = word[2:] if word.startswith('./') else word
        runs_it = i > 0 and words[i - 1] in ('python', 'bash') and not word.startswith('-')
        if word.startswith(COMMAND_DIRS) or (
                runs_it and not word.startswith(('/', '.venv/', '$')) and word != '-c'):
            paths.append(word)
    return paths


def prose_paths(prose: str) -> list:
    """Inline code spans that are one repository path under ``PROSE_DIRS``."""
    return [_clean(span) for span in INLINE.findall(prose)
            if ' ' not in span.strip() and _clean(span).startswith(PROSE_DIRS)]


def link_targets(prose: str, anchors: bool = False) -> list:
    """Relative link and image targets, without their ``#anchor`` (or as (path, anchor) pairs,
    anchor '' if none, with ``anchors``)."""
    targets = []
    for target in LINK.findall(prose):
        if not re.match(r'^[a-z]+:', target) and not target.startswith('#'):
            path, _, anchor = target.partition('#')
            targets.append((path, anchor) if anchors else path)
    return targets


def heading_slugs(text: str) -> set:
    """GitHub's anchors of a Markdown text's headings: lower case, punctuation other than '-' and
    '_' dropped, spaces as '-'."""
    _, prose = split_markdown(text)
    return {re.sub(r'[^\w\- ]', '', line.lstrip('#').strip().lower()).replace(' ', '-')
            for line in prose.splitlines() if re.match(r'^#{1,6} ', line)}


def expand(path: str) -> list:
    """Glob patterns for a path with placeholders: ``{a,b}`` -> one pattern per alternative;
    ``${m}``, ``{m}``, ``<m>`` -> ``*``."""
    parts = re.split(r'(\{[^{}]*,[^{}]*\})', path)
    choices = [part[1:-1].split(',') if part.startswith('{') and ',' in part else [part]
               for part in parts]
    patterns = []
    for combo in itertools.product(*choices):
        pattern = re.sub(r'\$\{\w+\}|\{\w+\}|<[^>]*>', '*', ''.join(combo))
        patterns.append(pattern)
    return patterns


def missing(path: str, base: Path = ROOT) -> list:
    """The patterns of ``path`` (relative to ``base``) that match nothing."""
    absent = []
    for pattern in expand(path):
        full = os.path.normpath(os.path.join(base, pattern))
        if pattern.endswith('/'):
            ok = any(os.path.isdir(p) for p in glob.glob(full))
        else:
            ok = bool(glob.glob(full))
        if not ok:
            absent.append(pattern)
    return absent


def broken_references(document: Path) -> list:
    """Every reference of ``document`` that names nothing in the repository, as
    ``(kind, where it was found, path)``."""
    commands, prose = split_markdown(document.read_text())
    broken = []
    for command in commands + inline_commands(prose):
        broken += [('command', command, p) for path in command_paths(command)
                   for p in missing(path)]
    broken += [('path', path, p) for path in prose_paths(prose) for p in missing(path)]
    for target, anchor in link_targets(prose, anchors=True):
        absent = missing(target, document.parent)
        broken += [('link', target, p) for p in absent]
        linked = document.parent / target
        if anchor and not absent and linked.suffix == '.md' and \
                anchor not in heading_slugs(linked.read_text()):
            broken.append(('anchor', target, anchor))
    return broken


# ------------------------------------------------------------------------ the checker itself
def test_the_checker_reads_commands_paths_and_links():
    text = ('Run `python tools/train.py CONFIG` or `PE_X=1 python tools/test.py A B`.\n'
            'See `pe_dense/checkpoint.py` and [docs](docs/install.md#x) and [web](https://a.b).\n'
            '```bash\npython tools/export_onnx.py configs/upernet/u_${m}.py \\\n'
            '    --out work_dirs/x.onnx   # comment configs/nowhere.py\n'
            'bash tools/dist_train.sh configs/deit/deit-{s,b}-abs.py 4\n```\n'
            '```python\nimport tools.nothing\n```\n')
    commands, prose = split_markdown(text)
    assert commands == ['python tools/export_onnx.py configs/upernet/u_${m}.py '
                        '--out work_dirs/x.onnx',
                        'bash tools/dist_train.sh configs/deit/deit-{s,b}-abs.py 4']
    assert inline_commands(prose) == ['python tools/train.py CONFIG',
                                      'PE_X=1 python tools/test.py A B']
    assert command_paths(commands[0]) == ['tools/export_onnx.py', 'configs/upernet/u_${m}.py']
    assert command_paths('python .venv/lib/x/train.py C') == []
    assert command_paths('python nowhere.py C') == ['nowhere.py']
    assert prose_paths(prose) == ['pe_dense/checkpoint.py']
    assert link_targets(prose) == ['docs/install.md']
    assert link_targets(prose, anchors=True) == [('docs/install.md', 'x')]
    assert heading_slugs('# A b\n```bash\n# not a heading\n```\n## How (and why), as_is\n') == {
        'a-b', 'how-and-why-as_is'}
    assert expand('configs/deit/deit-{s,b}-abs_{m}.py') == ['configs/deit/deit-s-abs_*.py',
                                                           'configs/deit/deit-b-abs_*.py']
    assert missing('configs/upernet/upernet_vit-adapter-ti-${m}_4xb2-160k_ade20k-512x512.py') == []
    assert missing('configs/deit/deit-{s,x}-abs_4xb256-300e_in1k.py') == [
        'configs/deit/deit-x-abs_4xb256-300e_in1k.py']
    assert missing('configs/nowhere/') == ['configs/nowhere/']


def test_a_wrong_path_in_a_document_is_reported(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('```bash\npython tools/train.py configs/mini/no-such_mini.py\n```\n'
                    'Read `tests/test_nowhere.py` and ![x](figures/none.png).\n'
                    f'See [install]({ROOT}/docs/install.md#no-such-heading) and '
                    f'[install]({ROOT}/docs/install.md#installation).\n'
                    '`python tools/nowhere.py --help`\n')
    assert broken_references(page) == [
        ('command', 'python tools/train.py configs/mini/no-such_mini.py',
         'configs/mini/no-such_mini.py'),
        ('command', 'python tools/nowhere.py --help', 'tools/nowhere.py'),
        ('path', 'tests/test_nowhere.py', 'tests/test_nowhere.py'),
        ('link', 'figures/none.png', 'figures/none.png'),
        ('anchor', f'{ROOT}/docs/install.md', 'no-such-heading')]


# ------------------------------------------------------------------------ (a) the documents
@pytest.mark.parametrize('document', DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_name_only_what_exists(document):
    assert broken_references(document) == []


def test_documents_have_commands_to_check():
    """The check above is not empty: the README and the docs run the tools on real configs."""
    paths = set()
    for document in DOCUMENTS:
        commands, prose = split_markdown(document.read_text())
        paths.update(p for c in commands + inline_commands(prose) for p in command_paths(c))
    assert {'tools/train.py', 'tools/test.py', 'tools/make_mini_data.py', 'tools/export_onnx.py',
            'tools/infer_demo.py', 'tools/benchmark.py', 'tools/analyze_pe.py',
            'tools/run_demo.sh', 'tools/run_tests.sh', 'tools/dist_train.sh'} <= paths
    assert len([p for p in paths if p.startswith('configs/')]) >= 5


# ------------------------------------------------------------------------ (b) the tools run
@pytest.mark.parametrize('tool', TOOLS_PY, ids=lambda p: p.name)
def test_tool_help(tool):
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, str(tool), '--help'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f'usage: {tool.name}'), proc.stdout[:200]


@pytest.mark.parametrize('script', TOOLS_SH, ids=lambda p: p.name)
def test_shell_script_syntax(script):
    proc = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------ (c) sizes and links
def test_readme_is_short():
    size = len((ROOT / 'README.md').read_bytes())
    assert size <= README_MAX_BYTES, f'README.md has {size} bytes; move detail to docs/'


@pytest.mark.parametrize('tool', TOOLS_PY, ids=lambda p: p.name)
def test_tools_are_thin(tool):
    lines = len(tool.read_text().splitlines())
    assert lines <= TOOL_MAX_LINES, (f'{tool.name} has {lines} lines: move its logic into the '
                                     'pe_dense package and keep arguments, a call and printing')


def test_docs_index_lists_every_page():
    index = (ROOT / 'docs' / 'README.md').read_text()
    pages = {p.name for p in (ROOT / 'docs').glob('*.md')} - {'README.md'}
    assert pages and pages <= set(link_targets(index))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    block = readme.split('## The two commands', 1)[1].split('\n## ', 1)[0]
    commands = split_markdown(block)[0]
    assert commands == ['bash tools/run_demo.sh', 'bash tools/run_tests.sh']
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
          if line and not line.startswith(('#', 'set ', 'cd '))]
    assert ci == [commands[1]]
