"""The documentation works as written: the shell blocks of README.md and the local pages of docs/,
run in order in a fresh clone on tiny data, as a new user would (tests/doc_blocks.py)."""
import os
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, make_project
from tests.doc_blocks import RUN_BY, run_docs
from vae_pipeline.environment import TELEMETRY_OFF

pytestmark = pytest.mark.slow


def give_venv(project: Path) -> None:
    """The project's .venv as `make` leaves it, made of links to this checkout's: `make` installs nothing."""
    venv = VENV_BIN.parent
    (project / ".venv").mkdir()
    for entry in venv.iterdir():
        if not entry.name.startswith("."):
            (project / ".venv" / entry.name).symlink_to(entry)
    (project / ".venv" / ".installed").touch()     # newer than pyproject.toml: make's stamp is up to date


def new_shell_env(home: Path) -> dict:
    """A new user's shell: the project's environment not yet activated, no server or store chosen."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_BIN]
    drop = {"VIRTUAL_ENV", "PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "VAE_RUN_TAGS"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST")}
    return {**env, **TELEMETRY_OFF, "PATH": os.pathsep.join(path), "HOME": str(home),
            "GIT_AUTHOR_NAME": "reader", "GIT_AUTHOR_EMAIL": "reader@localhost",
            "GIT_COMMITTER_NAME": "reader", "GIT_COMMITTER_EMAIL": "reader@localhost"}


def test_the_readme_and_the_local_docs_work_as_written(tmp_path, tiny_source):
    project = make_project(tmp_path, tiny_source)
    give_venv(project)
    (tmp_path / "home").mkdir()
    outputs = run_docs(project, RUN_BY["tests/pipeline/test_docs.py"], new_shell_env(tmp_path / "home"),
                       timeout=900)
    assert outputs, "no block ran"
