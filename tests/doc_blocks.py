"""The shell blocks of README.md and docs/*.md, and a runner that runs them as a reader would.

Every ```bash (and ```python) block of those files is run by a test, in order, or marked as not run with the reason.
A block's markers are HTML comments on the lines right above it (invisible on GitHub):

    <!-- docs-test: not run: REASON -->                 the whole block (other hosts, a real GPU, ...)
    <!-- docs-test: skip `COMMAND`: REASON -->          its lines that start with COMMAND
    <!-- docs-test: background `COMMAND` until URL -->  that line runs in the background (a server, as in
                                                         a second terminal) and the block goes on once URL
                                                         answers; it is stopped when the file is done
    <!-- docs-test: prints `TEXT` -->                   the block's output holds TEXT

`run_docs` runs each file's blocks in one bash, as one reader's shell (the pages of docs/ in the
project's environment, which the README activates): `set -e`, so the first command that fails stops
it, and the failure names the file and line of its block.
"""
import contextlib
import os
import re
import signal
import socket
import subprocess
import textwrap
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from vae_pipeline.files import ROOT

MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->", re.S)
FENCE = re.compile(r"^( *)```(bash|sh|shell|python)\n(.*?)^\1```", re.M | re.S)    # indented in a list too
NOT_RUN = re.compile(r"not run:\s*(\S.*)", re.S)
SKIP = re.compile(r"skip `([^`]+)`:\s*(\S.*)", re.S)
BACKGROUND = re.compile(r"background `([^`]+)` until (\S+)")
PRINTS = re.compile(r"prints `([^`]+)`")


# The test that runs each file's blocks, in this order, in one fresh clone each (a file not here has
# every block marked not run; tests/unit/test_doc_blocks.py checks both).
RUN_BY = {
    "tests/pipeline/test_docs.py": ["README.md", "docs/mlflow.md", "docs/serving.md", "docs/report.md",
                                    "docs/prefect.md"],
    "tests/stack/test_stack.py": ["docs/team-stack.md", "docs/sweeps.md"],
}


def documented_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page of docs/: the files whose shell blocks must run or say why not."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


@dataclass
class Block:
    file: str                   # relative to the project, e.g. docs/serving.md
    line: int                   # the line of its opening fence
    text: str                   # its commands, as written
    markers: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def not_run(self) -> str | None:
        """The reason the block is not run, or None."""
        return next((m.group(1) for m in map(NOT_RUN.fullmatch, self.markers) if m), None)

    def commands(self) -> list[str]:
        """Its commands, a continued line (trailing backslash) joined into one."""
        commands, current = [], ""
        for line in self.text.splitlines():
            current += line + "\n"
            if not line.rstrip().endswith("\\"):
                commands.append(current.rstrip("\n"))
                current = ""
        return [c for c in commands if c.strip()]

    def script(self, number: int) -> str:
        """The bash that runs the block: skipped lines left out, background lines started and awaited."""
        skips = [m.group(1) for m in map(SKIP.fullmatch, self.markers) if m]
        backgrounds = {m.group(1): m.group(2) for m in map(BACKGROUND.fullmatch, self.markers) if m}
        lines = []
        for command in self.commands():
            start = command.lstrip()
            if any(start.startswith(s) for s in skips):
                continue
            if background := next((b for b in backgrounds if start.startswith(b)), None):
                log = f".docs-test/{number}-{len(lines)}.log"
                lines.append(f"{{ {command}\n}} >{log} 2>&1 &\nready {backgrounds[background]} {log}")
            else:
                lines.append(command)
        return "\n".join(lines)

    def check_markers(self) -> None:
        """Every marker is one this module knows, and each skip or background names a line of the block."""
        starts = [c.lstrip() for c in self.commands()]
        for marker in self.markers:
            if NOT_RUN.fullmatch(marker) or PRINTS.fullmatch(marker):
                continue
            named = SKIP.fullmatch(marker) or BACKGROUND.fullmatch(marker)
            if named is None:
                raise AssertionError(f"{self.where}: unknown marker 'docs-test: {marker}'")
            if not any(s.startswith(named.group(1)) for s in starts):
                raise AssertionError(f"{self.where}: the marker names `{named.group(1)}`, no line of the block")


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The shell blocks of one markdown file, with the markers written right above each."""
    text = path.read_text()
    found = []
    for fence in FENCE.finditer(text):
        above = text[:fence.start()].rstrip()
        markers = []
        while (m := list(MARKER.finditer(above))) and above.endswith("-->") and m[-1].end() == len(above):
            markers.insert(0, m[-1].group(1))
            above = above[:m[-1].start()].rstrip()
        body = textwrap.dedent(fence.group(3))
        if fence.group(2) == "python":      # as the reader would: python, in the project's environment
            body = f"python - <<'DOCS_TEST_PY'\n{body}DOCS_TEST_PY\n"
        found.append(Block(str(path.relative_to(root)), text[:fence.start()].count("\n") + 1, body, markers))
    return found


PROLOGUE = r"""set -eo pipefail
mkdir -p .docs-test
ready() {  # URL LOG: wait until URL answers 2xx, or fail with what the background command printed
  for _ in $(seq 1200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.25; done
  echo "docs-test: nothing answered at $1; its log:" >&2; tail -n 30 "$2" >&2; return 1
}
"""
# The pages of docs/ assume the project's environment, as the README says once for all of them.
ACTIVATE = "source .venv/bin/activate"
START, END = "@@docs-test start {}@@", "@@docs-test end {}@@"


def run_docs(project: Path, files: list[str], env: dict, timeout: float) -> dict[str, str]:
    """Run the blocks of `files` (relative to project), each file in a bash of its own in `project`,
    in order; return each run block's output by its place (file:line). Raise, naming the block, when
    one fails or prints less than its `prints` marker says."""
    outputs = {}
    for name in files:
        outputs |= run_file(project, name, env, timeout)
    return outputs


def stop_servers(group: int, seconds: float = 30) -> None:
    """Stop what the shell left running (its background servers), as Ctrl-C would, and wait until they
    are gone: the next file's servers take the same ports."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            os.killpg(group, 0)                    # ProcessLookupError once none is left
            time.sleep(0.2)
        os.killpg(group, signal.SIGKILL)


def port_in_use(url: str) -> bool:
    """Whether something already listens where `url` points (a documented server's address)."""
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as probe:
        return probe.connect_ex((parts.hostname, parts.port or 80)) == 0


def run_file(project: Path, name: str, env: dict, timeout: float) -> dict[str, str]:
    """run_docs for one file: one reader's shell, whose background servers stop when it is done."""
    script, run = [PROLOGUE, ACTIVATE if name != "README.md" else ""], []
    for block in blocks(project / name, project):
        block.check_markers()
        if block.not_run:
            continue
        for url in (m.group(2) for m in map(BACKGROUND.fullmatch, block.markers) if m):
            # The docs name their servers' default ports: one of yours there would answer instead.
            assert not port_in_use(url), (f"{block.where}: something already listens at {url}; the docs test "
                                          "starts the documented server there: stop yours and run it again")
        run.append(block)
        script += [f"echo '{START.format(block.where)}'; SECONDS=0", block.script(len(run)),
                   f"echo \"{END.format(block.where)} $SECONDS s\""]
    if not run:
        return {}
    process = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=project, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n(docs-test: stopped after {timeout:.0f} s)"
    finally:
        stop_servers(process.pid)
    outputs = {}
    for block in run:
        started, ended = START.format(block.where), END.format(block.where)
        if started not in output:
            break
        body = output.split(started, 1)[1]
        if ended not in body:
            raise AssertionError(f"{block.where}: a command of this block failed (exit {process.returncode}):\n"
                                 f"{block.text}\n--- what it printed (the end):\n{body[-4000:]}")
        outputs[block.where], after = body.split(ended, 1)
        print(f"{block.where}: {after.split(maxsplit=2)[0]} s")     # what a reader waits, shown with -s
        for wanted in (m.group(1) for m in map(PRINTS.fullmatch, block.markers) if m):
            assert wanted in outputs[block.where], (f"{block.where}: the docs say it prints {wanted!r}; "
                                                    f"it printed:\n{outputs[block.where][-3000:]}")
    if process.returncode != 0:
        raise AssertionError(f"{name}: docs-test exited {process.returncode}:\n{output[-4000:]}")
    return outputs
