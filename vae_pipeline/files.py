"""Project root, the project's one error type, and small file helpers."""
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

# Every path in the project is anchored here, never at the current directory.
ROOT = Path(__file__).resolve().parents[1]


class PipelineError(Exception):
    """A problem the user can fix (bad input, bad params, unreachable source).

    Entry points print its message and exit non-zero, without a traceback.
    """


def project_path(relative: str | os.PathLike) -> Path:
    """Resolve a path from params.yaml against the project root."""
    path = Path(relative)
    return path if path.is_absolute() else ROOT / path


def stage_output(path: Path, stage: str) -> Path:
    """`path`, written by `stage`; when it is missing, a PipelineError that says which stage to run."""
    if not path.exists():
        raise PipelineError(f"{path}: missing; run the {stage} stage first (dvc repro {stage})")
    return path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary name beside `path`; rename it into place on success.

    A crash or an exception leaves the old file (or nothing), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A process killed mid-write (SIGKILL runs no `finally`) leaves its temporary file behind;
    # remove those of dead processes so they never end up in an output folder.
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_checkout(project: Path, dest: Path) -> None:
    """Copy what a clone of `project` holds into `dest`: git's tracked files and the untracked
    ones git does not ignore (so nothing generated: no outputs, caches, venv or stores).

    The one way the sweep's points, the benchmarks and the tests copy the project.
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=project, capture_output=True)
    if listed.returncode != 0:
        raise PipelineError(f"{project}: copying the project needs its git file list, but git ls-files "
                            f"failed: {listed.stderr.decode(errors='replace').strip()}")
    for name in map(os.fsdecode, filter(None, listed.stdout.split(b"\0"))):
        source = Path(project) / name
        if source.is_file():          # a deleted, not yet staged file is still listed
            (Path(dest) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, Path(dest) / name)
