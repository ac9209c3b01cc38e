"""Helpers for the tests that damage things for real: what a stage run wrote, and its error."""
import os
import sys
from pathlib import Path

from tests.conftest import run_in
from vae_pipeline.params import load_params
from vae_pipeline.tracking.runs import RUN_FILE

# Files a run may create without them being outputs of the pipeline.
NOT_OUTPUTS = ("__pycache__", ".hypothesis", ".pytest_cache", "mlartifacts")
# The MLflow store and the run records (paths.run_record; the unfinished run's, in paths.checkpoint_dir)
# record a failed run too, on purpose: they are tracking, not outputs. The test projects are copies
# of this checkout, with its paths (and their params.yaml may be broken on purpose).
PATHS = load_params().paths
TRACKING_RECORDS = {"mlflow.db", PATHS.run_record, str(Path(PATHS.checkpoint_dir) / RUN_FILE)}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (but .git and caches), with its size and modification time."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git" and d not in NOT_OUTPUTS]
        for name in names:
            stat = (Path(folder) / name).lstat()
            files[str((Path(folder) / name).relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def changed_files(root: Path, before: dict) -> list[str]:
    """Files under root that are new or changed since `before` (a snapshot), sorted."""
    after = snapshot(root)
    return sorted(name for name, stat in after.items()
                  if before.get(name) != stat and name not in TRACKING_RECORDS)


def run_stage(project: Path, stage: str, timeout: int = 300) -> tuple[int, str, list[str]]:
    """Run `python -m stages.<stage>` in project: (exit code, its error message, files it wrote).

    Paths in the message are shown relative to the project."""
    before = snapshot(project)
    result = run_in(project, sys.executable, "-m", f"stages.{stage}", check=False, timeout=timeout)
    _, marker, error = ("\n" + result.stderr).partition("\nerror: ")
    if not marker:  # no PipelineError: keep the end of whatever it printed (a traceback?)
        error = result.stderr.strip()[-300:]
    error = " ".join(error.replace(f"{project}/", "").split())
    return result.returncode, error, changed_files(project, before)
