"""Which code made an output: the project's git commit and whether its inputs differ from it.

One definition for the MLflow tags and the report. "Dirty" means a tracked file that
is an input differs from the commit; dvc.lock and the pipeline's outputs (params.yaml
`paths`) do not count, since `dvc repro` rewrites them while it runs.
"""
import subprocess

from vae_pipeline.files import ROOT
from vae_pipeline.params import Paths


def git_provenance(paths: Paths, root=ROOT) -> dict:
    """{"commit": sha or "unknown (...)", "dirty": bool or None when unknown, "changes": [paths]}."""
    outputs = [f":(exclude){p}" for p in ["dvc.lock", *paths.model_dump().values()]]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *outputs)
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown (git not found)", "dirty": None, "changes": []}
    if head.returncode != 0 or status.returncode != 0:
        return {"commit": "unknown (not a git repository)", "dirty": None, "changes": []}
    changes = [line[3:] for line in status.stdout.splitlines()]
    return {"commit": head.stdout.strip(), "dirty": bool(changes), "changes": changes}
