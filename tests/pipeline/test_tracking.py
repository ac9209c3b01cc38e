"""MLflow tracking against real stores: the embedded SQLite file, and `mlflow server` over HTTP."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import BUILD_RUN_TAGS, copy_project, free_port, run_in
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import project_home
from vae_pipeline.params import load_params
from vae_pipeline.tracking import runs, store

EPOCH_METRICS = ["train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl", "seconds"]


@pytest.fixture(autouse=True)
def tracking_env_restored():
    """mlflow.set_tracking_uri (open_store) also exports MLFLOW_TRACKING_URI, which every later
    test's subprocesses would inherit: put the variable back as it was after each test."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def open_store(project):
    """A client on the project's embedded store, and the run record train wrote."""
    import mlflow

    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri), store.training_run(load_params(project / "params.yaml").paths, project)


def test_tracking_uri_env_then_params_then_embedded(monkeypatch):
    params = load_params()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = project_home()   # the checkout itself, or the main checkout of a git worktree (test_run_modes.py)
    assert store.tracking_uri(params.mlflow, params.paths) == f"sqlite:///{home}/mlflow.db"
    mlflow = params.mlflow.model_copy(update={"tracking_uri": "sqlite:///other/runs.db"})  # relative: anchored
    assert store.tracking_uri(mlflow, params.paths) == f"sqlite:///{home}/other/runs.db"  # at the project's home
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.tracking_uri(mlflow, params.paths) == "http://127.0.0.1:5999"


def test_credentials_never_appear_in_messages(monkeypatch):
    params = load_params()
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{port}")
    with pytest.raises(PipelineError) as error:
        store.connect(params.mlflow, params.paths)
    assert f"http://alice:***@127.0.0.1:{port} is unreachable" in str(error.value)
    assert "s3cret" not in str(error.value)


def test_unwritable_sqlite_folder_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/no/such/folder/mlflow.db")
    with pytest.raises(PipelineError, match="folder .*no/such/folder is missing"):
        store.connect(load_params().mlflow, load_params().paths)


def test_run_tags_from_env(monkeypatch):
    monkeypatch.setenv("VAE_RUN_TAGS", '{"prefect_flow_run_id": "abc", "sweep": 3}')
    assert runs.extra_tags() == {"prefect_flow_run_id": "abc", "sweep": "3"}
    monkeypatch.setenv("VAE_RUN_TAGS", "[1, 2]")
    with pytest.raises(PipelineError, match="VAE_RUN_TAGS: expected a JSON object"):
        runs.extra_tags()


def test_flat_params_name_every_train_key():
    flat = runs.flat_params(load_params())
    assert flat["data.dataset"] == "mnist" and flat["data.binarize"] == "none" and flat["train.beta"] == "1.0"
    assert flat["train.hidden_dims"] == "[400]"
    assert {k for k in flat if k.startswith("train.")} == {f"train.{k}" for k in load_params().train.model_dump()}


def test_resumed_training_continues_its_run_other_unfinished_runs_fail(monkeypatch, tmp_path):
    params = load_params()
    params = params.model_copy(update={
        "paths": params.paths.model_copy(update={"raw_dir": str(tmp_path / "raw"),
                                                  "checkpoint_dir": str(tmp_path / "checkpoints")}),
        # these runs never finish: no monitor left behind
        "mlflow": params.mlflow.model_copy(update={"system_metrics_interval": None})})
    (tmp_path / "raw" / "mnist").mkdir(parents=True)
    (tmp_path / "raw" / "mnist" / "train-images-idx3-ubyte").write_bytes(b"not really")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = store.connect(params.mlflow, params.paths)
    row = dict(zip(["epoch"] + EPOCH_METRICS, [1, 5.0, 4.0, 1.0, 6.0, 5.0, 1.0, 0.5]))

    first = runs.start_training_run(client, params, torch.device("cpu"), "key-a", [])
    runs.log_epoch(client, first, row)
    # Killed after epoch 1, resumed from its checkpoint: the same run goes on.
    assert runs.start_training_run(client, params, torch.device("cpu"), "key-a", [row]) == first
    # Epoch 2 was checkpointed but its log failed (the store was down): the resume logs it, once.
    row_2 = {**row, "epoch": 2}
    assert runs.start_training_run(client, params, torch.device("cpu"), "key-a", [row, row_2]) == first
    assert sorted(m.step for m in client.get_metric_history(first, "test_loss")) == [1, 2]
    # Other params (another checkpoint key): a fresh run that logs the restored epochs; the old one failed.
    second = runs.start_training_run(client, params, torch.device("cpu"), "key-b", [row])
    assert second != first and client.get_run(first).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(second, "test_loss")] == [1]
    assert client.get_run(second).data.tags["data.sha256.train-images-idx3-ubyte"] == \
        hashlib.sha256(b"not really").hexdigest()


@pytest.mark.slow
def test_pipeline_runs_are_tracked_registered_and_compared(built_project, tmp_path):
    import mlflow

    # The run's built project: a `dvc repro` with VAE_RUN_TAGS and system metrics every second
    # (tests/conftest.py BUILD_ENV); a copy of it, as this test trains again.
    project = copy_project(built_project, tmp_path)
    client, record = open_store(project)
    run = client.get_run(record["run_id"])
    params = yaml.safe_load((project / "params.yaml").read_text())

    # Params: every train key, flattened, and the data set.
    assert run.data.params["train.beta"] == "1.0" and run.data.params["data.dataset"] == "mnist"
    assert run.data.params["train.epochs"] == "2"
    assert {k for k in run.data.params if k.startswith("train.")} == {f"train.{k}" for k in params["train"]}
    # Tags: git, data checksums, device, torch, VAE_RUN_TAGS.
    tags = run.data.tags
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] == "false"  # dvc.lock changes don't count
    assert tags["data.sha256.train-images-idx3-ubyte"] == params["data"]["sha256"]["train-images-idx3-ubyte"]
    assert tags["device"] == "cpu" and tags["threads"] == "1" and tags["torch.version"] == torch.__version__
    assert BUILD_RUN_TAGS.items() <= tags.items()
    # One point per epoch, step = epoch; final figures; the later stages' figures.
    for name in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2], name
    assert {"test_loss_mu", "best_test_loss", "train_seconds"} <= run.data.metrics.keys()
    assert not {"epochs", "threads"} & run.data.metrics.keys()  # a param and a tag, not figures
    assert 1 <= run.data.metrics["eval_active_units"] <= 4 and run.data.metrics["eval_mean_posterior_var"] > 0
    # The map's figure, attached by the report stage (the latent_map stage logs nothing).
    map_metrics = json.loads((project / params["paths"]["map_metrics"]).read_text())
    assert run.data.metrics["map_trustworthiness"] == map_metrics["trustworthiness"]
    assert run.info.status == "FINISHED" and run.info.experiment_id == record["experiment_id"]
    # Artifacts: weights, config, params.yaml, metrics.
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    files |= {f.path for folder in ("model", "metrics") for f in client.list_artifacts(run.info.run_id, folder)}
    assert {"params.yaml", "model/vae.safetensors", "model/vae.json", "metrics/train.csv"} <= files
    assert (project / "mlartifacts").is_dir()

    # The registered decoder turns latent vectors into 28x28 images, with no pickle allowed.
    assert record["model_uri"] == "models:/vae-decoder/1"
    version = client.get_model_version("vae-decoder", "1")
    assert version.run_id == run.info.run_id
    pyfunc = mlflow.pyfunc.load_model(record["model_uri"])
    images = pyfunc.predict(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    assert images.shape == (5, 28, 28) and 0 <= images.min() and images.max() <= 1

    # MLflow 3's views: the experiment opens on training runs, the data set is the run's input
    # (its digest from the pinned checksums), the evaluate figures rank the logged models,
    # system metrics were sampled during training.
    experiment = client.get_experiment(run.info.experiment_id)
    assert store.EXPERIMENT_KIND.items() <= experiment.tags.items()
    [data] = run.inputs.dataset_inputs
    typed = load_params(project / "params.yaml")
    digest = store.data_input(typed.paths, typed.data).dataset.digest
    assert data.dataset.name == "mnist" and data.dataset.digest == digest
    assert json.loads(data.dataset.profile)["sha256"] == params["data"]["sha256"]
    assert {m.model_id for m in run.outputs.model_outputs} == {record["model_id"]}
    logged = client.get_logged_model(record["model_id"])
    model_metrics = {m.key: m for m in logged.metrics}
    assert model_metrics["eval_neg_elbo"].value == run.data.metrics["eval_neg_elbo"]
    assert model_metrics["eval_neg_elbo"].dataset_digest == data.dataset.digest
    assert not any(key.startswith("eval_seconds") for key in model_metrics)   # times: the run's only
    assert [m.model_id for m in mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], order_by=[{"field_name": "metrics.eval_neg_elbo"}],
        output_format="list")] == [record["model_id"]]
    assert "system/cpu_utilization_percentage" in run.data.metrics

    # Another beta: a second run and, once evaluated, a second model version; rerunning train is never
    # a conflict, and the same weights trained again are the version registered for them.
    params["train"]["beta"] = 4.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_in(project, "dvc", "repro", "evaluate")
    client, second = open_store(project)
    assert second["run_id"] != record["run_id"] and second["model_version"] == "2"
    run_in(project, "dvc", "repro", "--force", "--single-item", "train")
    client, third = open_store(project)
    assert third["run_id"] != second["run_id"] and third["model_version"] == "2"
    assert client.get_run(second["run_id"]).data.tags["git.dirty"] == "true"  # params.yaml edited
    runs = mlflow.search_runs(experiment_names=["vae-pipeline"])
    assert len(runs) == 3 and set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["params.train.beta"]) == ["1.0", "4.0", "4.0"]
    assert runs[[f"metrics.{m}" for m in EPOCH_METRICS]].notna().all().all()

    run_in(project, "python", "-m", "commands.compare")
    html = (project / "reports/compare.html").read_text()
    for run_id in runs["run_id"]:
        assert run_id[:8] in html
    assert "train.beta" in html and "train.latent_dim" not in html  # only the params that differ
    assert html.count("data:image/png;base64,") >= 4                # curves + one grid per run
    assert "<script src" not in html and "http" not in html.replace("http://www.w3.org", "")


@pytest.mark.slow
def test_pipeline_logs_to_a_real_server_over_http(project, mlflow_server, monkeypatch):
    import mlflow

    url, folder = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    run_in(project, "dvc", "repro")
    record = store.training_run(load_params(project / "params.yaml").paths, project)
    assert record["tracking_uri"] == url and record["model_uri"] == "models:/vae-decoder/1"
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()

    mlflow.set_tracking_uri(url)
    runs = mlflow.search_runs(experiment_names=["vae-pipeline"])
    assert list(runs["run_id"]) == [record["run_id"]] and runs["status"][0] == "FINISHED"
    assert runs[[f"metrics.{m}" for m in EPOCH_METRICS + ["eval_active_units"]]].notna().all().all()
    # The artifacts went through the server into its own folder.
    assert list((folder / "artifacts").rglob("vae.safetensors"))

    image = mlflow.pyfunc.load_model(record["model_uri"]).predict(np.zeros((1, 4), np.float32))
    assert image.shape == (1, 28, 28) and 0 <= image.min() and image.max() <= 1
