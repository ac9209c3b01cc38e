"""Command serve: the champion decoder over HTTP, on MLflow's scoring server (`make serve`).

`python -m commands.serve` serves models:/<mlflow.model_name>@champion (the version
the champion gate chose; the first `make run` names one, and until then it refuses), with
MLflow's scoring server run as `mlflow models serve --env-manager local` runs it (uvicorn, in
this environment, nothing installed), behind a guard (`guarded`): the decoder takes JSON only,
so any other body gets HTTP 415 and one line saying what to send (MLflow would answer a CSV body
with a 400 whose JSON holds its Python stack trace and the server's paths), and no error answer
carries a stack trace.
It binds 127.0.0.1 on params.yaml serve.port (env VAE_SERVE_PORT wins; the port's one
source, which the Makefile and the docs name) and works over the embedded store and over a
tracking server (MLFLOW_TRACKING_URI). With PORT that port:

    curl -s http://127.0.0.1:PORT/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": [[0, 0, 0, 0]]}'        # -> {"predictions": [28 x 28 pixel values]}

The model checks each request (vae_pipeline/tracking/decoder_pyfunc.py): a bad one gets
HTTP 400 with a message, and at most serve.max_batch rows are decoded per request.
The version served is fixed at start: after a retrain moves the alias, restart.
"""
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from vae_pipeline.errors import PipelineError, failing_as, redact_uri
from vae_pipeline.files import ROOT
from vae_pipeline.params import Serve
from vae_pipeline.settings import Settings, load_settings
from vae_pipeline.tracking import elsewhere, registry, store

log = logging.getLogger("serve")
HOST = "127.0.0.1"
PORT_ENV = "VAE_SERVE_PORT"


def port(serve: Serve) -> int:
    """Env VAE_SERVE_PORT, else params.yaml serve.port."""
    value = os.environ.get(PORT_ENV) or str(serve.port)
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise PipelineError(f"env {PORT_ENV}: {value!r} is not a port number (1-65535)")
    return int(value)


def champion(params: Settings) -> tuple[str, str]:
    """models:/<name>/<version> of the champion, once the champion gate has named one, and the id of
    the logged model it is (unique to those files, whatever the version's number)."""
    elsewhere.require_store(params)           # not an empty mlflow.db made by reading
    client = store.connect(params.mlflow, params.paths)  # an unreachable store fails here, with the reason
    name = params.mlflow.model_name
    try:
        version = registry.served_version(client, name)
    except PipelineError:
        if not (advice := elsewhere.advice(params)):
            raise
        raise PipelineError(f"MLflow model registry at {store.store_name(client.tracking_uri)}: no "
                            f"{registry.CHAMPION_ALIAS} of model '{name}'; {advice}") from None
    log.info("serving %s version %s, the champion", name, version)
    return f"models:/{name}/{version}", client.get_model_version(name, version).source


def local_model(params: Settings) -> str:
    """The champion's files in the temporary folder, as `mlflow models serve` fetches them: one folder per
    logged model, kept for the next start (its files never change), so that `make serve` does not leave
    a new copy behind each time."""
    import mlflow

    (uri, source), tracking = champion(params), store.tracking_uri(params.mlflow, params.paths)
    key = hashlib.sha256(f"{tracking} {source}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"vae-serve-{key}"
    if not folder.is_dir():
        with (failing_as(f"downloading {uri} from {redact_uri(tracking)}", "check the store, then rerun make serve"),
              tempfile.TemporaryDirectory(dir=folder.parent, prefix=f"{folder.name}.",
                                          ignore_cleanup_errors=True) as staged):
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=staged, tracking_uri=tracking)
            with contextlib.suppress(OSError):    # another `make serve` put the same files there first
                os.rename(staged, folder)
    return str(folder)


def serve_command(params: Settings) -> tuple[list[str], dict]:
    """The uvicorn command line of the scoring server (scoring_app) and its environment."""
    venv_bin = Path(sys.executable).parent
    argv = [str(venv_bin / "uvicorn"), "--host", HOST, "--port", str(port(params.serve)), "--workers", "1",
            "--app-dir", str(ROOT), "--factory", "commands.serve:scoring_app"]
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           MODEL_PATH_ENV: local_model(params),
           # Overrides the limit stored in the model at training with the current params.
           "SERVING_MODEL_CONFIG": json.dumps({"max_batch": params.serve.max_batch})}
    return argv, env


# ---- the server: MLflow's scoring app behind a guard (runs in the uvicorn process) ----------------

MODEL_PATH_ENV = "VAE_SERVE_MODEL_PATH"      # the champion's local files, from serve_command to scoring_app
JSON = "application/json"
TAKES = f'POST {{"inputs": [[...one latent vector...], ...]}} with Content-Type: {JSON}'


def scoring_app():
    """uvicorn's app (--factory): MLflow's scoring server over the model at env VAE_SERVE_MODEL_PATH, guarded."""
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(os.environ[MODEL_PATH_ENV])
    return guarded(scoring_server.init(model))


def without_trace(body: bytes) -> bytes:
    """An error answer's JSON without MLflow's `stack_trace` (the server's code and paths)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict) or "stack_trace" not in answer:
        return body
    answer.pop("stack_trace")
    return json.dumps(answer).encode()


def guarded(app):
    """An ASGI app around `app`: a request to /invocations that is not JSON gets HTTP 415 and a line
    saying what to send; any error answer of `app` loses its stack trace."""
    async def guard(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        if scope["path"] == "/invocations" and scope["method"] == "POST":
            given = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            if given.split(";")[0].strip().lower() != JSON:
                message = f"the decoder takes JSON, not {given or 'a body without Content-Type'}: {TAKES}"
                return await respond(send, 415, json.dumps({"error_code": "BAD_REQUEST", "message": message}))
        held = []                   # an error answer's start and body, sent once the body is whole

        async def send_without_trace(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.append(message)
            elif held and message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body"):
                    start, *parts = held
                    body = without_trace(b"".join(part.get("body", b"") for part in parts))
                    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
            else:
                await send(message)
        await app(scope, receive, send_without_trace)
    return guard


async def respond(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def run(params: Settings) -> None:
    argv, env = serve_command(params)
    log.info("POST latent vectors to http://%s:%s/invocations (at most %d per request); Ctrl-C stops",
             HOST, port(params.serve), params.serve.max_batch)
    sys.stderr.flush()
    os.execve(argv[0], argv, env)               # the server takes this process's place: Ctrl-C stops it


if __name__ == "__main__":
    from vae_pipeline.errors import main

    main(lambda: run(load_settings()))
