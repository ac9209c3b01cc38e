"""The one error path of the entry points a user runs (vae_pipeline.errors.exit_code): a port
taken, a server that does not answer, a write refused. Each ends with `error: ...` naming what
to fix, exit 2, no traceback, no secret; the commands run as a user runs them, in a subprocess."""
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.conftest import free_port, pipeline_env, run_in, stop_process_group, wait_healthy
from vae_pipeline.files import ROOT
from vae_pipeline.settings import load_settings

PASSWORD = "pw-s3cret-9"


def run_entry(args: list[str], cwd=ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env={**pipeline_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, a last line `error: ...` holding each of `expected`, no traceback; returns that line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    line = [line for line in result.stderr.splitlines() if line.startswith("error: ")][-1]
    assert all(text in line for text in expected), line
    return line


# ---- a port taken --------------------------------------------------------------------------------

@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_mlflow_ui_refuses_a_port_in_use(taken_port):
    result = run_entry([sys.executable, "-m", "commands.mlflow_ui"], env={"VAE_MLFLOW_UI_PORT": str(taken_port)})
    assert_one_error(result, f"127.0.0.1:{taken_port}: in use", "VAE_MLFLOW_UI_PORT=PORT make mlflow-ui")


def test_make_mlflow_ui_fails_on_a_port_in_use(taken_port):
    """`make mlflow-ui` itself: it used to exit 0 when mlflow's server could not bind."""
    result = run_entry(["make", "-s", "-o", ".venv/.installed", "mlflow-ui"],
                       env={"VAE_MLFLOW_UI_PORT": str(taken_port)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: 127.0.0.1:{taken_port}: in use" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_mlflow_ui_serves_the_runs_page_of_the_embedded_store(project):
    port = free_port()
    log = project / "ui.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "commands.mlflow_ui"], cwd=project, stdout=out,
                                   stderr=subprocess.STDOUT, env={**pipeline_env(), "VAE_MLFLOW_UI_PORT": str(port)},
                                   start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log, 180)
        assert f"The training runs: http://127.0.0.1:{port}/#/experiments" in log.read_text()
        assert (project / "mlflow.db").exists()                   # the project's embedded store
    finally:
        stop_process_group(process)


# ---- a server that does not answer, a password in its URI ----------------------------------------

def dead_url(path: str = "") -> str:
    return f"http://vae:{PASSWORD}@127.0.0.1:{free_port()}{path}"


# The retrain and the sweep end as the pipeline does (flows/local_api.py run_on_local_api), and import
# more: slow. So do the commands (vae_pipeline.errors.main), which import torch and matplotlib.
@pytest.mark.parametrize("entry", ["flows.pipeline", "flows.schedule",
                                   pytest.param("flows.retrain", marks=pytest.mark.slow),
                                   pytest.param("flows.sweep", marks=pytest.mark.slow)])
def test_a_flow_names_an_unreachable_prefect_server_with_its_password_masked(entry, tmp_path):
    url = dead_url("/api")
    result = run_entry([sys.executable, "-m", entry], env={"PREFECT_API_URL": url,
                                                           "PREFECT_HOME": str(tmp_path / "home")})
    masked = url.replace(PASSWORD, "***")
    assert_one_error(result, f"env PREFECT_API_URL: no Prefect server answers at {masked}")
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["commands.compare", "commands.serve"])
def test_a_command_names_an_unreachable_tracking_server_with_its_password_masked(entry):
    url = dead_url()
    result = run_entry([sys.executable, "-m", entry], env={"MLFLOW_TRACKING_URI": url})
    assert_one_error(result, f"MLflow tracking server {url.replace(PASSWORD, '***')} is unreachable")
    assert PASSWORD not in result.stdout + result.stderr


def test_the_scheduler_without_a_server_says_how_to_start_one(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    port = load_settings().stack.prefect_port
    result = run_entry([sys.executable, "-m", "flows.schedule"])
    assert_one_error(result, "PREFECT_API_URL is not set", f"--port {port}", f"http://127.0.0.1:{port}/api")


@pytest.mark.slow
def test_a_bad_seed_is_refused_before_anything_starts():
    result = run_entry([sys.executable, "-m", "flows.retrain", "seven"])
    assert result.returncode == 2 and "usage: python -m flows.retrain [SEED]" in result.stderr, result.stderr


# ---- a write refused -----------------------------------------------------------------------------

def read_only(folder, args: list[str]) -> list[str]:
    """`args` run where `folder` cannot be written: as root (who may write anywhere) under a read-only
    tmpfs mounted over it in a mount namespace of its own; else with the folder made read-only."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return args
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("root without `unshare --mount`: no folder is read-only to this test")
    script = f'mount -t tmpfs -o ro vae-read-only "{folder}" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args]


def test_a_flow_whose_prefect_home_cannot_be_written_names_it(tmp_path):
    home = tmp_path / "read-only" / "prefect-home"
    result = run_entry(read_only(tmp_path / "read-only", [sys.executable, "-m", "flows.pipeline"]),
                       env={"PREFECT_HOME": str(home)})
    assert_one_error(result, f"error: {home}: ", "fix the permissions")


def test_a_worker_kit_in_a_read_only_folder_names_it_and_the_default_kit_lands_in_the_stack_folder(project):
    kit = project.parent / "read-only" / "kit"
    result = run_entry(read_only(project.parent / "read-only", [sys.executable, "-m", "stack", "worker-kit", str(kit)]),
                       cwd=project)
    assert_one_error(result, f"error: {kit}: ")
    # No folder given: params.yaml stack.state_dir's worker-kit/ (the Makefile's KIT is empty by default).
    run_in(project, sys.executable, "-m", "stack", "worker-kit")
    assert (project / load_settings().stack.state_dir / "worker-kit" / "env").stat().st_mode & 0o777 == 0o600
    made = run_in(project, "make", "-s", "-o", ".venv/.installed", "stack-worker-kit", "KIT=other-kit")
    assert (project / "other-kit" / "env").exists(), made.stdout
