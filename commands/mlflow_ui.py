"""Command mlflow_ui: MLflow's UI over the project's embedded store (`make mlflow-ui`).

`python -m commands.mlflow_ui` starts `mlflow server` on 127.0.0.1, port params.yaml
mlflow_ui.port (env VAE_MLFLOW_UI_PORT wins), over the embedded store and its artifacts
(vae_pipeline/tracking/ui.py), and prints the page of the experiment's training runs. Its default
port is its own, not the team stack's MLflow (stack.mlflow_port): both can run at once. A port
another program holds is refused at once (exit 2), naming it and how to choose another.
Ctrl-C stops the server.
"""
import errno
import logging
import os
import socket
import sys
from pathlib import Path

from vae_pipeline.errors import PipelineError
from vae_pipeline.settings import MlflowUi, load_settings
from vae_pipeline.tracking import store, ui

log = logging.getLogger("mlflow-ui")
HOST = "127.0.0.1"
PORT_ENV = "VAE_MLFLOW_UI_PORT"


def port(settings: MlflowUi) -> int:
    """Env VAE_MLFLOW_UI_PORT, else params.yaml mlflow_ui.port."""
    value = os.environ.get(PORT_ENV) or str(settings.port)
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise PipelineError(f"env {PORT_ENV}: {value!r} is not a port number (1-65535)")
    return int(value)


def check_free(port: int) -> None:
    """PipelineError unless `port` can be bound on HOST (mlflow's server would start its workers, then
    fail there, and the command would end as if it had served)."""
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise PipelineError(f"{HOST}:{port}: in use by another program (params.yaml mlflow_ui.port); "
                                f"stop it, or choose another port: {PORT_ENV}=PORT make mlflow-ui") from None


def server_command(settings: MlflowUi) -> tuple[list[str], dict]:
    """The `mlflow server` command line over the embedded store and its artifacts, and its environment."""
    venv_bin = Path(sys.executable).parent
    argv = [str(venv_bin / "mlflow"), "server", "--host", HOST, "--port", str(port(settings)), "--workers", "1",
            "--backend-store-uri", store.default_tracking_uri(), "--artifacts-destination", str(ui.artifact_root())]
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}    # no job runner: a UI, not a team's server
    return argv, env


def run(settings: MlflowUi) -> None:
    chosen = port(settings)
    check_free(chosen)                          # before a second or two of importing mlflow
    argv, env = server_command(settings)
    uri = store.default_tracking_uri()
    store.check_sqlite_file(uri)                # a damaged store: its error now, not the UI's later
    print(f"The training runs: http://{HOST}:{chosen}/{ui.runs_page()}", flush=True)
    log.info("MLflow's UI over %s; Ctrl-C stops it", store.store_name(uri))
    sys.stderr.flush()
    os.execve(argv[0], argv, env)               # the server takes this process's place: Ctrl-C stops it


if __name__ == "__main__":
    from vae_pipeline.errors import main

    main(lambda: run(load_settings().mlflow_ui))
