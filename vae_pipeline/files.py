"""The project root and its home (the checkout whose tracking store it shares), and writing files whole:
a temporary name renamed into place, or several outputs at once."""
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from vae_pipeline.errors import PipelineError

# Every path in the project is anchored here, never at the current directory.
ROOT = Path(__file__).resolve().parents[1]


def project_path(relative: str | os.PathLike) -> Path:
    """Resolve a path from params.yaml against the project root."""
    path = Path(relative)
    return path if path.is_absolute() else ROOT / path


# ---- the home: one tracking store and run record for every way DVC runs a stage ----------------
#
# The outputs of a stage belong to the checkout that runs it (ROOT). The MLflow store and the run
# record belong to the project: they must outlive the copies DVC runs experiments in, and be the
# same for every checkout of the repository. Where a stage may run, and the home it resolves to:
#   `dvc repro`, `dvc exp run` (in the workspace)   ROOT itself
#   `dvc exp run --temp`, queued experiments         DVC runs them in a throwaway git repository under
#     (`dvc queue start`)                            <repo>/.dvc/tmp/exps and sets env DVC_ROOT to <repo>
#                                                    (dvc/repo/experiments/queue/base.py): that repo
#   a linked worktree (`git worktree add`)           the repository's main checkout (git's common dir)
# Both steps apply: a temp run started in a worktree goes to the main checkout.

@functools.cache
def main_checkout(root: Path) -> Path:
    """The main working tree of the git repository whose top folder is `root`; `root` when that is it,
    or when root is no such top folder (no git, a project inside another repository, a bare repository's
    worktree)."""
    git_env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR")}
    try:
        found = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--show-toplevel", "--git-common-dir"],
                               cwd=root, env=git_env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return root
    lines = found.stdout.splitlines()
    if found.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return root
    common = Path(lines[1]).resolve()
    return common.parent if common.name == ".git" and common.parent.is_dir() else root


def project_home(root: Path = ROOT) -> Path:
    """The checkout that holds the tracking store and the run record of the project at `root` (see above)."""
    root = Path(root).resolve()
    # DVC_ROOT counts only for a copy inside that repository's .dvc folder: a value inherited from
    # another project's DVC run (a stage that runs `dvc repro` elsewhere) is not this project's.
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and root.is_relative_to(Path(dvc_root).resolve() / ".dvc"):
        root = Path(dvc_root).resolve()
    return main_checkout(root)


def home_path(relative: str | os.PathLike, root: Path = ROOT) -> Path:
    """Resolve a path from params.yaml against the home of the project at `root` (project_home)."""
    path = Path(relative)
    return path if path.is_absolute() else project_home(root) / path


@contextlib.contextmanager
def locked(folder: Path):
    """Hold an exclusive lock on `folder` (released on exit, or when the process dies).

    For a read-modify-write of a file in it that several processes share. The folder is
    locked, not a lock file, so nothing is left beside what it guards.
    """
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary name beside `path`; rename it into place on success.

    A crash or an exception leaves the old file (or nothing), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.tmp-*")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replace_together(*paths: Path):
    """Yield a staged name for each of `paths` (files or folders); move them all in when the block ends.

    A stage's outputs change together or not at all. Written into place one by one, a
    failure after the first would leave it beside the others of an earlier run (new
    weights beside the previous run record). Here each output is written under a staging
    folder beside its target, `.<name>.staged-<pid>/<name>` (its own name, so a tool that
    names things after their file, as MLflow's artifacts do, sees the right one; the same
    file system, so moving it in is a rename). Only when the block has finished are they
    moved into place, in the order given; the old ones are kept aside until all are in, and
    put back if a move fails. An error in the block leaves every old output as it was.
    A folder replaces the old folder whole: nothing of the old one lingers in the new.

    Only a SIGKILL in the microseconds of the moves can leave a mix; the staging folders
    of a killed process are removed by the next call for the same outputs.
    """
    paths = [Path(p) for p in paths]
    folders = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(path.parent, f".{path.name}.staged-*")
            folder = path.with_name(f".{path.name}.staged-{os.getpid()}")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            folders.append(folder)
        staged = [folder / path.name for folder, path in zip(folders, paths)]
        yield staged
        for new in staged:
            if not new.exists():
                raise FileNotFoundError(f"{new}: nothing was written under this staged name")
        moved = []   # (target, its staging folder, whether an old one stepped aside)
        try:
            for path, new, folder in zip(paths, staged, folders):
                # A folder cannot be renamed over a folder that holds files: the old one steps aside first.
                had_old = path.exists() or path.is_symlink()
                if had_old:
                    os.replace(path, folder / f"{path.name}.previous")
                moved.append((path, folder, had_old))
                os.replace(new, path)
        except BaseException:
            for path, folder, had_old in reversed(moved):   # put the old set back as it was
                if not (folder / path.name).exists():         # the new one had moved in
                    remove(path)
                if had_old:
                    os.replace(folder / f"{path.name}.previous", path)
            raise
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def remove(path: Path) -> None:
    """Remove a file, a link or a whole folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_stale(folder: Path, pattern: str) -> None:
    """Remove what writers that died left in `folder`: names matching `pattern`, ending in -<pid>.

    A process killed mid-write (SIGKILL runs no `finally`) leaves its temporary file or
    staging folder behind; those of dead processes are removed so they never end up in an
    output folder.
    """
    for stale in folder.glob(pattern):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            remove(stale)


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
