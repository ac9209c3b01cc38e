"""The retrain flow: the champion gate on a real MLflow store, the served deployment on a real
Prefect server, and a pipeline flow run retried from the stage that crashed."""
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.gate import gate_markdown
from flows.local_api import free_port
from flows.retrain import DESCRIPTION
from tests.conftest import VENV_BIN, copy_project, downstream, dvc_stages, pipeline_env, run_in, stop_process_group
from vae_pipeline.errors import PipelineError
from vae_pipeline.ml.data import dataset_checksums
from vae_pipeline.params import Pipeline, load_params
from vae_pipeline.tracking import runs, store
from vae_pipeline.tracking.champion import champion_gate, metric_key
from vae_pipeline.tracking.registry import CHAMPION_ALIAS as ALIAS
from vae_pipeline.tracking.store import DATA_SHA256_TAG

# ---- the gate, on real registered versions (no training needed) -----------------------------


@pytest.fixture
def registry(tmp_path):
    """A SQLite model registry in tmp, and register(neg_elbo, test_loss, **sections): a version whose
    run holds the params, data checksums and figures a training of params.yaml + sections would log."""
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("decoder")

    def register(neg_elbo: float | None, test_loss: float = 100.0, iwae_samples: int = 50, **sections) -> str:
        params = load_params().model_dump()
        for section, values in sections.items():
            params[section].update(values)
        params = Pipeline.of(params)
        run = client.create_run(experiment, tags={DATA_SHA256_TAG + name: sha256
                                                  for name, sha256 in dataset_checksums(params.data).items()})
        client.log_batch(run.info.run_id, params=[Param(key, value)
                                                   for key, value in runs.flat_params(params).items()])
        figures = {"test_loss": test_loss, metric_key("iwae_samples"): iwae_samples}
        if neg_elbo is not None:
            figures |= {metric_key("neg_elbo"): neg_elbo, metric_key("iwae_nll"): neg_elbo - 2}
        store.log_metrics(client, run.info.run_id, figures)
        client.set_terminated(run.info.run_id)
        (tmp_path / run.info.run_id).mkdir()
        return str(client.create_model_version("decoder", (tmp_path / run.info.run_id).as_uri(),
                                               run_id=run.info.run_id).version)
    return client, register


def champion(client) -> str:
    return str(client.get_model_version_by_alias("decoder", ALIAS).version)


def test_the_gate_compares_like_with_like_and_moves_only_for_a_real_improvement(registry):
    client, register = registry
    first = register(neg_elbo=100.0)
    result = champion_gate(client, "decoder", first, margin=0.5, metric="neg_elbo")
    assert result["promoted"] and result["champion"] is None and champion(client) == first

    challengers = [   # (what it is, its version, what the decision must name)
        # A smaller beta lowers the training loss by construction; the beta = 1 ELBO is no better.
        ("lower beta", register(neg_elbo=100.2, test_loss=80.0, train={"beta": 0.25}), "does not beat"),
        ("other data set", register(neg_elbo=60.0, data={"dataset": "fashion-mnist"}), "data.dataset"),
        ("other pixels", register(neg_elbo=60.0, data={"binarize": "static"}), "data.binarize"),
        ("other likelihood", register(neg_elbo=60.0, train={"likelihood": "gaussian"}), "train.likelihood"),
        ("better by less than the margin", register(neg_elbo=99.6), "does not beat"),
    ]
    for what, version, named in challengers:
        result = champion_gate(client, "decoder", version, margin=0.5, metric="neg_elbo")
        assert not result["promoted"] and champion(client) == first, what
        assert named in result["decision"] and "champion kept" in result["decision"], (what, result["decision"])
        assert result["champion"]["value"] == 100.0
    assert "not comparable" in champion_gate(client, "decoder", challengers[1][1], 0.5, "neg_elbo")["decision"]

    # The champion itself again (nothing retrained): kept, not "promoted".
    assert not champion_gate(client, "decoder", first, margin=0.5, metric="neg_elbo")["promoted"]

    better = register(neg_elbo=99.0)                   # beats it by 1 >= 0.5
    result = champion_gate(client, "decoder", better, margin=0.5, metric="neg_elbo")
    assert result["promoted"] and champion(client) == better and "promoted" in result["decision"]
    markdown = gate_markdown(result)
    assert "| challenger | " + better + " | 99 | mnist | none | bernoulli |" in markdown
    assert "| champion before | " + first + " | 100 |" in markdown and "neg_elbo" in markdown


def test_the_iwae_gate_compares_only_estimates_with_the_same_number_of_draws(registry):
    client, register = registry
    first = register(neg_elbo=100.0, iwae_samples=50)
    champion_gate(client, "decoder", first, margin=0.5, metric="iwae_nll")
    result = champion_gate(client, "decoder", register(neg_elbo=90.0, iwae_samples=5000), 0.5, "iwae_nll")
    assert not result["promoted"] and "evaluate.iwae_samples 5000" in result["decision"]
    assert champion_gate(client, "decoder", register(neg_elbo=90.0), 0.5, "iwae_nll")["promoted"]


def test_a_champion_without_the_figure_stays_and_a_challenger_without_it_is_an_error(registry):
    client, register = registry
    old = register(neg_elbo=None)                      # trained before the evaluate stage attached it
    client.set_registered_model_alias("decoder", ALIAS, old)
    result = champion_gate(client, "decoder", register(neg_elbo=50.0), 0.5, "neg_elbo")
    assert not result["promoted"] and champion(client) == old and "has no 'eval_neg_elbo'" in result["decision"]
    with pytest.raises(PipelineError, match="has no 'eval_neg_elbo' metric"):
        champion_gate(client, "decoder", register(neg_elbo=None), 0.5, "neg_elbo")


# ---- the served deployment on a real Prefect server ------------------------------------------

def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:   # its own session: the finalizer stops it and its children
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for(check, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {timeout:.0f} s; log:\n{log.read_text()[-3000:]}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def prefect_server(tmp_path, request):
    """`prefect server start` on 127.0.0.1 and a free port, PREFECT_HOME in tmp; yields its env."""
    port = free_port()
    env = {**pipeline_env(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = tmp_path / "server.log"
    server = start([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   tmp_path, env, log)
    request.addfinalizer(lambda: stop_process_group(server))
    wait_for(lambda: healthy(env["PREFECT_API_URL"]), 120, "prefect server", log)
    return env


@pytest.mark.slow
def test_the_served_retrain_deployment_runs_on_a_prefect_server_and_names_a_champion(
        built_project, prefect_server, tmp_path, request):
    import mlflow

    # The run's built project, its version 1 no champion yet: the retrain re-checks the data, finds
    # every stage up to date, and the gate makes that version the first champion.
    project = copy_project(built_project, tmp_path)
    env = prefect_server
    log = tmp_path / "serve.log"
    runner = start([sys.executable, "-m", "flows.schedule"], project, env, log)
    request.addfinalizer(lambda: stop_process_group(runner))

    def deployed():
        result = subprocess.run([str(VENV_BIN / "prefect"), "deployment", "inspect", "retrain/scheduled"],
                                env=env, capture_output=True, text=True, timeout=60)
        return result.returncode == 0 and result.stdout
    inspected = wait_for(deployed, 120, "the served deployment", log)
    assert "0 3 * * 1" in inspected                # the cron schedule from params.yaml
    with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/deployments/name/retrain/scheduled", timeout=30) as got:
        assert json.load(got)["description"] == DESCRIPTION     # the flow's: its one source

    started = time.monotonic()
    run = subprocess.run([str(VENV_BIN / "prefect"), "deployment", "run", "retrain/scheduled",
                          "--watch", "--watch-interval", "1", "--watch-timeout", "400"],
                         env=env, capture_output=True, text=True, timeout=450)
    seconds = time.monotonic() - started
    assert run.returncode == 0 and "COMPLETED" in run.stdout.upper(), \
        f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}\nserve log:\n{log.read_text()[-4000:]}"
    print(f"served retrain: triggered to completed in {seconds:.1f} s")

    record = store.training_run(load_params(project / "params.yaml").paths, project)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias(record["model_name"], ALIAS).version) == record["model_version"]
    decision = json.loads((project / "reports/champion.json").read_text())
    assert decision["promoted"] and decision["champion"] is None
    assert decision["challenger"]["version"] == record["model_version"]
    # Both flow runs (the retrain and its pipeline) link the MLflow run and the report.
    for key, target in (("mlflow-run", f"runs:/{record['run_id']}"), ("report", "file://")):
        inspected = subprocess.run([str(VENV_BIN / "prefect"), "artifact", "inspect", key],
                                   env=env, capture_output=True, text=True, timeout=60)
        assert inspected.stdout.count(target) == 2, inspected.stdout[-2000:]
    # dvc.lock is still the record: nothing is stale after the retrain.
    assert "up to date" in run_in(project, sys.executable, "-m", "dvc", "status").stdout


# ---- a crashed task: the flow run is retried from the stage that failed ----------------------

CRASH_ONCE = '''import os as _os, signal as _signal
if _os.path.exists(_os.environ.get("CRASH_ONCE_FILE", "/nonexistent")):
    _os.remove(_os.environ["CRASH_ONCE_FILE"])
    _os.kill(_os.getpid(), _signal.SIGKILL)    # the embed stage dies, once
'''


@pytest.mark.slow
@pytest.mark.reliability
def test_a_flow_run_whose_task_crashed_is_retried_from_the_failed_stage(project, tmp_path, monkeypatch,
                                                                       reliability):
    import mlflow

    from flows.local_api import local_api
    from flows.pipeline import pipeline

    embed = project / "stages/embed.py"
    embed.write_text(CRASH_ONCE + embed.read_text())
    marker = tmp_path / "crash-once"
    marker.touch()
    monkeypatch.setenv("CRASH_ONCE_FILE", str(marker))

    with local_api(tmp_path / "prefect-home"):
        # One flow run; Prefect retries it once after the embed task fails.
        results = pipeline.with_options(retries=1, retry_delay_seconds=0)(project=str(project))

    assert not marker.exists()                          # the crash did happen
    ran = {r["stage"]: r["ran"] for r in results}       # the retry's stages
    assert ran == {stage: stage in downstream("embed", project) for stage in dvc_stages(project)}
    # The evaluate stage, which registers, ran once in all: one registered version, not two.
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    versions = client.search_model_versions("name='vae-decoder'")
    assert len(versions) == 1
    assert "up to date" in run_in(project, sys.executable, "-m", "dvc", "status").stdout
    reliability("fault", "Prefect task crashes (embed stage SIGKILLed): flow run retried",
                "retry skipped download, train (DVC up to date); reran embed, latent_map, report; "
                f"{len(versions)} model version registered", exit_code="SIGKILL, then 0")
