"""Every fenced code block in README.md and docs/**/*.md runs, or says why it cannot.

A block is treated by its language (the fence's info string) and by the HTML comments on
the lines right above its fence (invisible once rendered):

``<!-- illustrative: REASON -->``
    Not run: pseudo-code, sample output, a benchmark that takes minutes, a command that
    needs what the repository does not ship. The reason is required.
``<!-- setup: SHELL COMMAND -->``
    Run first (bash, in the page's folder) to make what the reader is assumed to have: an
    input file, or a tiny synthetic model standing in for a 500 MB import. May repeat.

Runners by language:

- ``python``: run by one child Python process (tests/doc_worker.py) shared by all pages,
  one namespace per page, in page order: a page reads as one session, so a block may use
  what an earlier block of the same page defined. The page's folder is the working
  directory and comes first on ``sys.path``.
- ``toml``: parsed and validated with :func:`tiercache.load_config`. A block whose first
  line is ``# NAME.toml`` is saved as NAME.toml in the page's folder for the later blocks;
  ``# costs.toml`` is validated as a simulator cost-model file instead
  (:func:`tiercache.sim.tiers.load_models`, every table through ``TierModel``).
- ``bash`` / ``sh`` / ``shell``: one ``bash -e -o pipefail`` script, the venv's ``bin`` first
  on ``PATH`` (so ``tiercache ...`` is this checkout's).
- ``console``: the ``$ `` lines (with ``\\`` continuations) run one by one; the other lines
  are the output shown. A command whose shown output has a ``tiercache: error: ...`` line
  must exit with status 2 and print that line; every other command must exit 0.
- ``conf`` whose first line names ``redis.conf``: a real redis-server (loopback, free port,
  tests/redis_fixtures.py) must start with it and know every directive (CONFIG GET).
- any other language, or none: a failure, unless marked illustrative.

Each page gets a fresh temporary folder that stands for a checkout's root (``examples`` and
``data`` link to the repository's, ``docs/img/`` is empty). Its blocks run there in page
order; running one block alone (``-k``) first runs the earlier blocks of its page. Test ids
are ``PATH:LINE`` of the fence. Each block is bounded by :data:`BLOCK_TIMEOUT_S`. The
whole file takes about 40 s on an idle 2-core VM (about 30 s of CPU, a third of it one
TensorFlow start-up). The tests at the end check the runner itself on small pages.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from markdown_it import MarkdownIt  # a dependency of rich, so always installed
from redis_fixtures import HOST, _die_with_parent, free_port, redis_binaries

import tiercache
from tiercache.sim.tiers import DEFAULT_MODELS, TierModel, load_models

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parents[1] / "doc_worker.py"
#: Wall-clock limit of one block (its setup commands included).
BLOCK_TIMEOUT_S = 120.0
_MARKER = re.compile(r"^\s*<!--\s*(illustrative|setup)\s*:(.*?)-->\s*$")
_NAMED_FILE = re.compile(r"^#\s*([\w.-]+\.(?:toml|conf))\b")
_RUNNERS = {"python": "python", "py": "python", "toml": "toml", "bash": "shell",
            "sh": "shell", "shell": "shell", "console": "console", "conf": "redis"}


@dataclass
class Block:
    """One fenced (or indented) code block of a page."""

    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    illustrative: str | None = None  # the reason, when marked
    setup: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def runner(self) -> str | None:
        """The runner's name, or None when no runner takes this language."""
        kind = _RUNNERS.get(self.lang)
        if kind == "redis" and "redis.conf" not in self.code.split("\n", 1)[0]:
            return None
        return kind

    @property
    def file_name(self) -> str | None:
        """The file this block saves itself as (first line ``# NAME.toml``), if any."""
        match = _NAMED_FILE.match(self.code)
        return match.group(1) if match else None


def parse_page(path: Path, root: Path = ROOT) -> list[Block]:
    """Every code block of one Markdown page, with the markers above it. O(page size)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks = []
    for token in MarkdownIt("commonmark").parse(text):
        if token.type not in ("fence", "code_block") or token.map is None:
            continue
        start = token.map[0]
        block = Block(path.relative_to(root).as_posix(), start + 1,
                      token.info.split()[0].lower() if token.info.strip() else "",
                      token.content)
        above = start - 1
        while above >= 0 and (match := _MARKER.match(lines[above])):
            kind, value = match.group(1), match.group(2).strip()
            if kind == "illustrative":
                block.illustrative = value
            else:
                block.setup.insert(0, value)
            above -= 1
        blocks.append(block)
    return blocks


def doc_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every docs/**/*.md (lab notes included), in a fixed order."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def collect(root: Path = ROOT) -> list[Block]:
    """The blocks the suite must run: every block not marked illustrative with a reason."""
    return [b for page in doc_pages(root) for b in parse_page(page, root) if not b.illustrative]


class BlockFailed(AssertionError):
    """A block did not run as its page says; the message names PATH:LINE."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    env["MPLBACKEND"] = "Agg"
    env.pop("PYTHONPATH", None)
    return env


def _shell(block: Block, script: str, folder: Path, deadline: float,
           ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=folder,
                              env=_env(), capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise BlockFailed(f"{block.where}: {script!r} ran past {BLOCK_TIMEOUT_S:.0f} s") from None


def console_commands(code: str) -> list[tuple[str, list[str]]]:
    """``$ `` commands of a console block, each with the output lines shown after it."""
    commands: list[tuple[str, list[str]]] = []
    continued = False
    for line in code.splitlines():
        if continued:
            commands[-1] = (commands[-1][0] + "\n" + line, commands[-1][1])
        elif line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
            continue  # an output line never continues
        continued = line.endswith("\\")
    return commands


class PythonWorker:
    """One child Python process (tests/doc_worker.py) for the Python blocks of every page.

    Each page has its own namespace and working folder in it; TensorFlow and the other
    imports are paid once. Restarted after a timeout or a crash. Not thread-safe.
    """

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def close(self) -> None:
        """Stop the process (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def run(self, block: Block, folder: Path, deadline: float) -> None:
        """Run ``block`` in its page's namespace, in ``folder``; BlockFailed if it fails."""
        if self.proc is None:
            with self.log.open("a", encoding="utf-8") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, str(WORKER)], cwd=ROOT, env=_env(), text=True,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"page": block.path, "folder": str(folder), "path": block.path,
                   "line": block.line + 1, "code": block.code}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(max(0.0, deadline - time.monotonic()))
        reply_line = self.proc.stdout.readline() if ready else ""
        if not reply_line:
            proc, self.proc = self.proc, None
            proc.kill()
            status = proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()
            why = "died" if ready else f"ran past {BLOCK_TIMEOUT_S:.0f} s"
            raise BlockFailed(f"{block.where}: the Python block {why} (status {status}); "
                              f"its output ends with:\n{self.log_tail()}")
        reply = json.loads(reply_line)
        if not reply["ok"]:
            raise BlockFailed(f"{block.where}: the Python block failed:\n{reply['error']}")


class Page:
    """The state of one page's run: its folder and the blocks done. O(1) memory a block."""

    def __init__(self, path: str, folder: Path, worker: PythonWorker, root: Path = ROOT,
                 blocks: list[Block] | None = None) -> None:
        self.path = path
        self.folder = folder
        self.worker = worker
        if blocks is None:
            blocks = [b for b in parse_page(root / path, root) if not b.illustrative]
        self.blocks = blocks
        self.done = 0
        self.failed: str | None = None
        folder.mkdir(parents=True)
        for name in ("examples", "data"):  # what the pages read from a checkout
            if (ROOT / name).exists():
                (folder / name).symlink_to(ROOT / name)
        (folder / "docs" / "img").mkdir(parents=True)

    def run_through(self, block: Block) -> None:
        """Run the page's blocks up to ``block`` (earlier ones first, once)."""
        index = self.blocks.index(block)
        if index < self.done:
            raise BlockFailed(f"{block.where}: already run (blocks run in page order)")
        while self.done <= index:
            current = self.blocks[self.done]
            self.done += 1
            try:
                self.run_one(current)
            except BlockFailed as exc:
                # the later blocks still run, so that each failure is reported by its own id
                earlier, self.failed = self.failed, current.where
                if self.done <= index:
                    continue
                if earlier is not None:
                    raise BlockFailed(f"{exc}\n(an earlier block of the page, {earlier}, "
                                      "failed too: this may follow from it)") from None
                raise

    def run_one(self, block: Block) -> None:
        """Run one block: its setup commands, then its runner."""
        if block.illustrative is not None:
            raise BlockFailed(f"{block.where}: `<!-- illustrative: REASON -->` needs a reason")
        runner = block.runner
        if runner is None:
            raise BlockFailed(
                f"{block.where}: a ```{block.lang or '(no language)'} block has no runner: "
                "give it a language that runs (python, toml, bash, console, conf for a "
                "redis.conf) or mark it with `<!-- illustrative: REASON -->` on the line "
                "above the fence")
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        for command in block.setup:
            done = _shell(block, command, self.folder, deadline)
            if done.returncode != 0:
                raise BlockFailed(f"{block.where}: setup {command!r} failed "
                                  f"(exit {done.returncode}): {done.stderr[-2000:]}")
        getattr(self, f"_run_{runner}")(block, deadline)

    def _run_python(self, block: Block, deadline: float) -> None:
        self.worker.run(block, self.folder, deadline)

    def _run_toml(self, block: Block, deadline: float) -> None:
        name = block.file_name or f"_block_{block.line}.toml"
        target = self.folder / name
        try:
            data = tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as exc:
            raise BlockFailed(f"{block.where}: not valid TOML: {exc}") from None
        target.write_text(block.code, encoding="utf-8")
        try:
            if name == "costs.toml":
                for key, table in load_models(target).items():
                    TierModel.from_mapping(table, base=DEFAULT_MODELS["lmdb"],
                                           where=f"{name}:{key}")
            else:
                tiercache.load_config(target)
        except (tiercache.ConfigError, ValueError, TypeError) as exc:
            raise BlockFailed(f"{block.where}: {name} ({sorted(data)}) does not "
                              f"validate: {exc}") from None

    def _run_shell(self, block: Block, deadline: float) -> None:
        done = _shell(block, block.code, self.folder, deadline)
        if done.returncode != 0:
            raise BlockFailed(f"{block.where}: exit status {done.returncode}:\n"
                              f"{done.stdout[-1500:]}{done.stderr[-2500:]}")

    def _run_console(self, block: Block, deadline: float) -> None:
        commands = console_commands(block.code)
        if not commands:
            raise BlockFailed(f"{block.where}: a console block without a `$ ` command")
        for command, shown in commands:
            done = _shell(block, command, self.folder, deadline)
            errors = [line for line in shown if line.startswith("tiercache: error:")]
            if errors:
                if done.returncode != 2:
                    raise BlockFailed(f"{block.where}: {command!r} should fail with status "
                                      f"2, got {done.returncode}: {done.stderr[-1500:]}")
                printed = done.stderr.splitlines()
                missing = [line for line in errors if line not in printed]
                if missing:
                    raise BlockFailed(f"{block.where}: {command!r} printed "
                                      f"{done.stderr.strip()!r}, the page shows {missing}")
            elif done.returncode != 0:
                raise BlockFailed(f"{block.where}: {command!r}: exit status "
                                  f"{done.returncode}:\n{done.stderr[-2500:]}")

    def _run_redis(self, block: Block, deadline: float) -> None:
        conf = self.folder / f"redis-{block.line}.conf"
        conf.write_text(block.code, encoding="utf-8")
        server, _cli = redis_binaries()
        port = free_port()
        out = self.folder / f"redis-{block.line}.out"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                [server, str(conf), "--port", str(port), "--bind", HOST, "--dir",
                 str(self.folder), "--daemonize", "no", "--logfile", ""],
                stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            until = min(deadline, time.monotonic() + 20)
            while True:  # until it listens, or exits on a config error
                if proc.poll() is not None:
                    raise BlockFailed(f"{block.where}: redis-server refused this "
                                      f"redis.conf:\n{out.read_text(errors='replace')}")
                if time.monotonic() > until:
                    raise BlockFailed(f"{block.where}: redis-server did not answer")
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            client = redis.Redis(host=HOST, port=port, socket_timeout=5,
                                 socket_connect_timeout=5)
            for line in block.code.splitlines():
                words = shlex.split(line, comments=True)
                if words and not client.config_get(words[0]):
                    raise BlockFailed(f"{block.where}: redis-server does not know the "
                                      f"directive {words[0]!r}")
            client.close()
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def page_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Page]]:
    """The page of a path, made on first use; all pages share one Python worker."""
    root = tmp_path_factory.mktemp("docs")
    worker = PythonWorker(root / "python.log")
    opened: dict[str, Page] = {}

    def page_for(path: str) -> Page:
        if path not in opened:
            opened[path] = Page(path, root / path.replace("/", "_"), worker,
                                blocks=[b for b in _BLOCKS if b.path == path])
        return opened[path]

    try:
        yield page_for
    finally:
        worker.close()


_BLOCKS = collect()


#: Pages whose blocks take long together (marked ``slow``: the inner loop skips them).
SLOW_PAGES = frozenset({"docs/experiments.md"})
#: Words of a block (or its setup) that runs TensorFlow (marked ``tf``).
TF_WORDS = ("load_model", "tensorflow", "keras", "tiercache generate")


def _marks(block: Block) -> list[pytest.MarkDecorator]:
    """The markers of ``block``'s test: a block runs the earlier blocks of its page first,
    so it needs what any of them needs (a redis-server, TensorFlow). O(blocks)."""
    page = [b for b in _BLOCKS if b.path == block.path]
    upto = page[:page.index(block) + 1]
    marks = [pytest.mark.slow] if block.path in SLOW_PAGES else []
    if any(b.runner == "redis" for b in upto):
        marks.append(pytest.mark.redis)
    if any(word in " ".join([*b.setup, b.code]) for b in upto for word in TF_WORDS):
        marks.append(pytest.mark.tf)
    return marks


@pytest.mark.parametrize("block", [pytest.param(b, marks=_marks(b), id=b.where)
                                   for b in _BLOCKS])
def test_doc_block(block: Block, page_for: Callable[[str], Page]) -> None:
    """The block runs as the page shows it (see the module docstring for how)."""
    page_for(block.path).run_through(block)


# --- the runner itself ---------------------------------------------------------------------


@pytest.fixture
def mini(tmp_path: Path) -> Iterator[Callable[[str], Page]]:
    """Write ``docs/page.md`` under a fake repository root; return its Page."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    worker = PythonWorker(tmp_path / "python.log")

    def make(text: str) -> Page:
        (root / "docs" / "page.md").write_text(text, encoding="utf-8")
        return Page("docs/page.md", tmp_path / "page", worker, root)

    try:
        yield make
    finally:
        worker.close()


def _failure(page: Page, index: int) -> str:
    with pytest.raises(BlockFailed) as info:
        page.run_through(page.blocks[index])
    return str(info.value)


def test_a_block_neither_run_nor_marked_fails(mini: Callable[[str], Page]) -> None:
    page = mini("# P\n\n<!-- illustrative: sample output -->\n```text\nok\n```\n\n"
                "```text\nnot marked\n```\n\n<!-- illustrative: -->\n```python\n1/0\n```\n")
    assert [b.line for b in page.blocks] == [8, 13]  # the marked one is not collected
    assert "docs/page.md:8: a ```text block has no runner" in _failure(page, 0)
    assert "docs/page.md:13: `<!-- illustrative: REASON -->` needs a reason" in _failure(page, 1)


def test_python_blocks_share_the_page_and_failures_name_the_line(
        mini: Callable[[str], Page]) -> None:
    page = mini("```python\nanswer = 42\n```\n\n```python\nassert answer == 42\n"
                "open('here.txt', 'w').close()\n```\n\n```python\nx = 1\nundefined_name\n```\n")
    page.run_through(page.blocks[1])  # runs the first block too: `answer` is defined
    assert (page.folder / "here.txt").exists()  # in the page's folder
    message = _failure(page, 2)
    assert 'docs/page.md:10: the Python block failed' in message
    assert 'File "docs/page.md", line 12' in message and "NameError" in message


def test_toml_blocks_are_validated_and_saved(mini: Callable[[str], Page]) -> None:
    page = mini('```toml\n# tiers.toml\n[[tiers]]\nname = "ram"\nbackend = "memory"\n'
                'capacity = "1MiB"\n```\n\n```toml\n[origin]\nkind = "npy"\npath = "w/"\n```\n')
    page.run_through(page.blocks[0])
    assert (page.folder / "tiers.toml").read_text().startswith("# tiers.toml")
    message = _failure(page, 1)  # the fragment quickstart.md once showed
    assert "docs/page.md:9:" in message and "does not validate" in message


def test_console_blocks_check_the_error_they_show(mini: Callable[[str], Page]) -> None:
    page = mini("<!-- setup: printf '1 1 0 0\\n2 1 0\\n' > cut.lis -->\n```console\n"
                "$ tiercache simulate cut.lis --capacity 10\n"
                "tiercache: error: cut.lis:2: not what it prints\n```\n")
    message = _failure(page, 0)
    assert "docs/page.md:2:" in message and "the page shows" in message
    assert "cut.lis:2: expected 4 integers" in message


@pytest.mark.redis
def test_a_redis_conf_redis_refuses_fails(mini: Callable[[str], Page]) -> None:
    page = mini("```conf\n# redis.conf\nmaxmemory 1gb    # an inline comment\n```\n")
    message = _failure(page, 0)
    assert "docs/page.md:1: redis-server refused this redis.conf" in message
    assert "wrong number of arguments" in message


def test_console_commands_and_their_output() -> None:
    code = "$ tiercache a \\\n    --b\nshown \\\n$ tiercache c\n"
    assert console_commands(code) == [("tiercache a \\\n    --b", ["shown \\"]),
                                      ("tiercache c", [])]
