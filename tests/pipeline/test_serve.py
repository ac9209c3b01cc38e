"""Serving the registered decoder: `make serve` (commands/serve.py) as a real MLflow scoring server
over the embedded store and over a tracking server; the checks of the model's own predict; and
loading on the CPU where CUDA is present."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import torch
from mlflow.exceptions import MlflowException

from commands.serve import PORT_ENV, port
from tests.conftest import copy_project, free_port, pipeline_env, run_in, set_params, stop_process_group
from vae_pipeline.errors import PipelineError
from vae_pipeline.ml.data import IMAGE_SIZE
from vae_pipeline.ml.model import VAE, load_model
from vae_pipeline.params import load_params
from vae_pipeline.settings import load_settings
from vae_pipeline.tracking import registry, store
from vae_pipeline.tracking.champion import champion_gate
from vae_pipeline.tracking.decoder_pyfunc import DECODER_ARTIFACT, latent_batch
from vae_pipeline.tracking.registry import log_decoder


def decoded(model, z: np.ndarray) -> np.ndarray:
    """The project's own decode of z, as images."""
    with torch.no_grad():
        return model.decode(torch.from_numpy(z)).reshape(-1, IMAGE_SIZE, IMAGE_SIZE).numpy()


def bad_requests(latent_dim: int, max_batch: int) -> list[tuple[str, str]]:
    """Requests the server must refuse with a 4xx and a message: (what, JSON body)."""
    row = [0.0] * latent_dim
    return [(what, body if isinstance(body, str) else json.dumps({"inputs": body})) for what, body in [
        ("wrong width", [row + [0.0]]),
        ("NaN", [[float("nan")] + row[1:]]),          # json.dumps writes NaN and Infinity, as many clients do
        ("infinite", [row[:-1] + [float("inf")]]),
        ("too large for float32", [[1e300] + row[1:]]),
        ("strings", [["a"] * latent_dim]),
        ("empty batch", []),
        ("more rows than serve.max_batch", [row] * (max_batch + 1)),
        ("100,000 rows", [row] * 100_000),
        ("not JSON", "{{"),
    ]]


def start_server(project, env: dict, log_path) -> tuple[str, subprocess.Popen]:
    """`python -m commands.serve` in `project` on a free port: its URL once /ping answers, and the process."""
    url = f"http://127.0.0.1:{free_port()}"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "commands.serve"], cwd=project,
                                   env={**pipeline_env(), **env, PORT_ENV: url.rsplit(":", 1)[1]},
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)   # its own group: stopping it stops uvicorn too
    deadline = time.monotonic() + 180
    while not alive(url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            raise AssertionError(f"make serve did not answer:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    return url, process


def alive(url: str) -> bool:
    try:
        return requests.get(f"{url}/ping", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def predict(url: str, z: np.ndarray) -> np.ndarray:
    answer = requests.post(f"{url}/invocations", json={"inputs": z.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text[:500]
    return np.asarray(answer.json()["predictions"], dtype=np.float32)


# ---- end to end: trained by the train stage, served by `make serve` --------------------------

@pytest.mark.slow
def test_make_serve_decodes_like_the_project_and_answers_bad_requests_with_400(built_project, tmp_path, request):
    project = copy_project(built_project, tmp_path)          # registered by `dvc repro`: version 1
    # Read at serving, not training (no stage lists serve.*): this limit applies to the version trained above.
    set_params(project, serve={"max_batch": 300})
    params = load_settings(project / "params.yaml")
    # A registered version is not in use until the champion gate says so: `make run` ends with it.
    refused = run_in(project, "python", "-m", "commands.serve", check=False)
    uri = store.tracking_uri(params.mlflow, params.paths, project)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: MLflow model registry at {uri}: no version of model "
        "'vae-decoder' is champion yet; `make run` names one (its last step, the champion gate)"]
    # `make run` ends with the champion gate, which names version 1 (test_flows.py); the gate alone here.
    mlflow = params.mlflow.model_copy(update={"tracking_uri": uri})
    gate = champion_gate(store.connect(mlflow, params.paths), "vae-decoder", "1", params.retrain.margin,
                         params.retrain.gate_metric)
    assert gate["decision"] == "no champion yet: version 1 becomes champion"
    url, server = start_server(project, {}, tmp_path / "serve.log")
    request.addfinalizer(lambda: stop_process_group(server))
    assert "serving vae-decoder version 1, the champion" in (tmp_path / "serve.log").read_text()

    model, config = load_model(project / params.paths.model_dir)
    z = np.random.default_rng(0).standard_normal((300, config["latent_dim"])).astype(np.float32)
    images = predict(url, z)
    assert images.shape == (300, IMAGE_SIZE, IMAGE_SIZE)
    assert np.abs(images - decoded(model, z)).max() <= 1e-5

    requests_ = [(what, body, "application/json") for what, body in bad_requests(config["latent_dim"], 300)]
    # Other bodies than JSON: MLflow's scoring server reads CSV and Parquet, which a tensor model refuses
    # with a 400 that held its stack trace and the server's paths; `make serve` answers them itself.
    row = ",".join(["0"] * config["latent_dim"])
    requests_ += [("CSV", f"{row}\n{row}\n", "text/csv"), ("Parquet", b"PAR1 junk", "application/vnd.apache.parquet"),
                  ("plain text", "0 0 0 0", "text/plain"), ("no Content-Type", "[[0, 0]]", None)]
    for what, body, content_type in requests_:
        answer = requests.post(f"{url}/invocations", data=body, timeout=120,
                               headers={"Content-Type": content_type} if content_type else {})
        assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text[:300])
        assert answer.json()["message"], what
        assert "stack_trace" not in answer.json() and "Traceback" not in answer.text, (what, answer.text[:2000])
        assert str(project) not in answer.text and "site-packages" not in answer.text, (what, answer.text[:2000])
        if content_type != "application/json":
            assert answer.status_code == 415 and "application/json" in answer.json()["message"], what
        assert alive(url), f"the server died on: {what}"
    message = requests.post(f"{url}/invocations", json={"inputs": [[0.0] * config["latent_dim"]] * 301},
                            timeout=60).json()["message"]
    assert "301 rows is more than the 300 allowed per request" in message
    assert np.abs(predict(url, z[:1]) - decoded(model, z[:1])).max() <= 1e-5   # still serving


@pytest.mark.slow
def test_make_serve_serves_the_champion_from_a_tracking_server(project, mlflow_server, monkeypatch,
                                                                tmp_path, request):
    server_url, _ = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_url)
    params = load_params(project / "params.yaml")
    client = store.connect(params.mlflow, params.paths)
    run_id = client.create_run(store.experiment_id(client, params.mlflow, params.paths)).info.run_id
    torch.manual_seed(1)
    model = VAE.from_config(params.train).eval()
    name = params.mlflow.model_name
    version, _ = log_decoder(client, run_id, model, name, {}, params.serve.max_batch)
    client.set_registered_model_alias(name, registry.CHAMPION_ALIAS, version)

    url, server = start_server(project, {"MLFLOW_TRACKING_URI": server_url}, tmp_path / "serve.log")
    request.addfinalizer(lambda: stop_process_group(server))
    assert f"serving {name} version {version}, the champion" in (tmp_path / "serve.log").read_text()
    z = np.random.default_rng(1).standard_normal((5, params.train.latent_dim)).astype(np.float32)
    assert np.abs(predict(url, z) - decoded(model, z)).max() <= 1e-5


# ---- the pieces ------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, message", [
    (np.zeros((2, 3)), r"shape \(N, 4\), got shape \(2, 3\)"),
    (np.zeros(4), r"got shape \(4,\)"),
    (np.zeros((0, 4)), "empty batch"),
    (np.zeros((11, 4)), "11 rows is more than the 10 allowed"),
    (np.array([[0, 0, np.nan, 0], [0, 0, 0, 0], [np.inf, 0, 0, 0]]), r"2 row\(s\), the first at row 0"),
    (np.array([[3e38, 0, 0, 1e39]]), "infinite"),              # finite in float64, not in float32
    (np.array([["a", "b", "c", "d"]]), "must be numbers"),
    (np.array([[0, 0, 0, None]], dtype=object), "must be numbers"),
])
def test_a_bad_batch_is_refused_as_a_bad_request(batch, message):
    with pytest.raises(MlflowException, match=message) as error:
        latent_batch(batch, latent_dim=4, max_batch=10)
    assert error.value.get_http_status_code() == 400


def test_a_good_batch_comes_back_as_float32():
    import pandas as pd

    z = latent_batch(pd.DataFrame(np.ones((10, 4), np.int64)), latent_dim=4, max_batch=10)
    assert z.dtype == np.float32 and z.shape == (10, 4) and z.flags.c_contiguous


def test_only_the_champion_is_served(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(PipelineError, match=r"no version of model 'decoder' \(params.yaml mlflow.model_name\)"):
        registry.served_version(client, "decoder")
    client.create_registered_model("decoder")
    for _ in range(2):
        client.create_model_version("decoder", tmp_path.as_uri())
    with pytest.raises(PipelineError, match="no version of model 'decoder' is champion yet; `make run` names one"):
        registry.served_version(client, "decoder")              # not the newest: an experiment's, a sweep's
    client.set_registered_model_alias("decoder", registry.CHAMPION_ALIAS, "1")
    assert registry.served_version(client, "decoder") == "1"


def test_the_port_comes_from_the_environment_else_params(monkeypatch):
    params = load_params()
    monkeypatch.delenv(PORT_ENV, raising=False)
    assert port(params.serve) == params.serve.port
    monkeypatch.setenv(PORT_ENV, "5999")
    assert port(params.serve) == 5999
    monkeypatch.setenv(PORT_ENV, "http")
    with pytest.raises(PipelineError, match=f"env {PORT_ENV}: 'http' is not a port"):
        port(params.serve)


def test_the_registered_decoder_loads_and_runs_on_the_cpu_where_cuda_is_present(tmp_path, monkeypatch):
    """No GPU here: torch is told that CUDA is there. MLflow's own loader of the pt2 graph then
    picks CUDA and refuses a graph exported on the CPU; the registered pyfunc stays on the CPU."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("serve", (tmp_path / "artifacts").as_uri())).info.run_id
    model = VAE(latent_dim=3, hidden_dims=[16]).eval()
    version, _ = log_decoder(client, run_id, model, "decoder", {}, max_batch=100)
    local = mlflow.artifacts.download_artifacts(f"models:/decoder/{version}", dst_path=str(tmp_path / "model"))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(MlflowException, match="can't be loaded on 'cuda' device"):
        mlflow.pyfunc.load_model(f"{local}/artifacts/{DECODER_ARTIFACT}")
    z = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    images = mlflow.pyfunc.load_model(f"models:/decoder/{version}").predict(z)
    assert images.shape == (7, IMAGE_SIZE, IMAGE_SIZE) and np.abs(images - decoded(model, z)).max() <= 1e-6
