"""Project root, the project's one error type, and small file helpers."""
import contextlib
import hashlib
import json
import os
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


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary name beside `path`; rename it into place on success.

    A crash or an exception leaves the old file (or nothing), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
