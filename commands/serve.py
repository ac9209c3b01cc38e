"""Command serve: the champion decoder over HTTP, on MLflow's scoring server (`make serve`).

`python -m commands.serve` serves models:/<mlflow.model_name>@champion (the version
the champion gate chose; the first `make run` names one, and until then it refuses), with
`mlflow models serve --env-manager local`: in this environment, nothing installed.
It binds 127.0.0.1 on params.yaml serve.port (env VAE_SERVE_PORT wins; the port's one
source, which the Makefile and the docs name) and works over the embedded store and over a
tracking server (MLFLOW_TRACKING_URI). With PORT that port:

    curl -s http://127.0.0.1:PORT/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": [[0, 0, 0, 0]]}'        # -> {"predictions": [28 x 28 pixel values]}

The model checks each request (vae_pipeline/tracking/decoder_pyfunc.py): a bad one gets
HTTP 400 with a message, and at most serve.max_batch rows are decoded per request.
The version served is fixed at start: after a retrain moves the alias, restart.
"""
import json
import logging
import os
import sys
from pathlib import Path

from vae_pipeline.errors import PipelineError
from vae_pipeline.tracking import elsewhere, registry, store

log = logging.getLogger("serve")
HOST = "127.0.0.1"
PORT_ENV = "VAE_SERVE_PORT"


def port(params: dict) -> int:
    """Env VAE_SERVE_PORT, else params.yaml serve.port."""
    value = os.environ.get(PORT_ENV) or str(params["serve"]["port"])
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise PipelineError(f"env {PORT_ENV}: {value!r} is not a port number (1-65535)")
    return int(value)


def model_uri(params: dict) -> str:
    """models:/<name>@champion, once the champion gate has named one."""
    elsewhere.require_store(params)           # not an empty mlflow.db made by reading
    client = store.connect(params)            # an unreachable store fails here, with the reason
    name = params["mlflow"]["model_name"]
    try:
        version = registry.served_version(client, name)
    except PipelineError:
        if not (advice := elsewhere.advice(params)):
            raise
        raise PipelineError(f"MLflow model registry at {store.store_name(client.tracking_uri)}: no "
                            f"{registry.CHAMPION_ALIAS} of model '{name}'; {advice}") from None
    log.info("serving %s version %s, the champion", name, version)
    return f"models:/{name}@{registry.CHAMPION_ALIAS}"


def serve_command(params: dict) -> tuple[list[str], dict]:
    """The `mlflow models serve` command line and its environment."""
    venv_bin = Path(sys.executable).parent      # mlflow starts `uvicorn` from PATH: this venv's
    argv = [str(venv_bin / "mlflow"), "models", "serve", "-m", model_uri(params), "--env-manager", "local",
            "-h", HOST, "-p", str(port(params))]
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           # models:/ is resolved against this store, whatever the process default would be.
           "MLFLOW_TRACKING_URI": store.tracking_uri(params),
           # Overrides the limit stored in the model at training with the current params.
           "SERVING_MODEL_CONFIG": json.dumps({"max_batch": params["serve"]["max_batch"]})}
    return argv, env


def run(params: dict) -> None:
    argv, env = serve_command(params)
    log.info("POST latent vectors to http://%s:%s/invocations (at most %d per request); Ctrl-C stops",
             HOST, argv[-1], params["serve"]["max_batch"])
    sys.stderr.flush()
    os.execve(argv[0], argv, env)               # the server takes this process's place: Ctrl-C stops it


if __name__ == "__main__":
    from vae_pipeline.errors import main
    from vae_pipeline.settings import load_settings

    main(lambda: run(load_settings()))
