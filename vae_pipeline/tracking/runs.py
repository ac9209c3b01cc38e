"""A training's MLflow run: one run per trained model, from its first epoch to its final figures.

The train stage calls, in order:
    client = connect(params.mlflow, params.paths)             # tracking/store.py: fails here if unreachable
    run_id = start_training_run(client, params, device, key, history)   # also logs the data set as
                                                              # an input and starts the system metrics
    log_epoch(client, run_id, row)                            # once per epoch, one batched request
    finish_training_run(client, run_id, params, metrics)
and the run is recorded in paths.run_record under the hash of the model's files (store.add_run_record).
The evaluate stage later registers the decoder on this run (registry.register_decoder).

The store and the run record are the project's, in its home (files.project_home): a training in a
temporary copy of `dvc exp run --temp` or of the queue, or in a git worktree, logs there too. The
run of an unfinished training (RUN_FILE) stays with its checkpoint in the checkout that trains
(paths.checkpoint_dir): only a rerun there resumes it, and two trainings at once (the queue's `-j 2`,
a worktree beside the main checkout) each keep their own instead of closing the other's run.

Env VAE_RUN_TAGS (a JSON object) adds tags to the run, e.g. the Prefect flow run id.
"""
import json
import logging
import os

from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.files import ROOT, project_path, sha256_file, write_json
from vae_pipeline.ml.data import dataset_dir
from vae_pipeline.params import PARAMS_FILE, MLflow, Paths, Pipeline
from vae_pipeline.provenance import git_provenance
from vae_pipeline.tracking.store import (
    DATA_SHA256_TAG,
    REGISTRATION,
    add_run_record,
    data_input,
    experiment_id,
    log_metrics,
    model_key,
    run_records,
)

# torch is imported in the functions that need it: importing this module costs no torch import.

log = logging.getLogger("tracking")

RUN_FILE = "open_run.json"            # in paths.checkpoint_dir: the MLflow run of an unfinished training
RUN_TAGS_ENV = "VAE_RUN_TAGS"


def flat_params(params: Pipeline) -> dict[str, str]:
    """The params that shape the model, flattened: data.dataset, data.binarize and every train.* key
    (the whole config: they are of two sections)."""
    flat = {"data.dataset": params.data.dataset, "data.binarize": params.data.binarize}

    def add(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}.{key}", item)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)

    add("train", params.train.model_dump())
    return flat


def git_state(paths: Paths) -> dict[str, str]:
    """The git provenance (vae_pipeline.provenance) as run tags."""
    git = git_provenance(paths)
    return {"git.commit": git["commit"] if git["dirty"] is not None else "unknown",
            "git.dirty": "unknown" if git["dirty"] is None else str(git["dirty"]).lower()}


def extra_tags() -> dict[str, str]:
    """Tags from env VAE_RUN_TAGS, a JSON object (set by the Prefect flows)."""
    text = os.environ.get(RUN_TAGS_ENV, "").strip()
    if not text:
        return {}
    try:
        tags = json.loads(text)
    except json.JSONDecodeError as e:
        raise PipelineError(f"env {RUN_TAGS_ENV}: not valid JSON ({e})") from None
    if not isinstance(tags, dict):
        raise PipelineError(f"env {RUN_TAGS_ENV}: expected a JSON object of tags, got {type(tags).__name__}")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()}


def run_tags(params: Pipeline, device) -> dict[str, str]:
    """The run's tags: device, versions, git state, each data file's SHA-256 (the paths and data sections)."""
    import torch
    data = dataset_dir(params.paths, params.data)
    tags = {
        "mlflow.source.name": "stages.train",
        "device": str(device),
        "threads": str(torch.get_num_threads()),
        "torch.version": torch.__version__,
        **git_state(params.paths),
        **{f"{DATA_SHA256_TAG}{f.name}": sha256_file(f) for f in sorted(data.iterdir()) if f.is_file()},
        **extra_tags(),
    }
    if "git.commit" in tags and tags["git.commit"] != "unknown":
        tags["mlflow.source.git.commit"] = tags["git.commit"]
    return tags


def log_data_input(client, run_id: str, params: Pipeline) -> None:
    """Log the data set (data_input) as an input of the run: MLflow's Dataset column shows it."""
    from mlflow.exceptions import MlflowException

    # MLflow's SQL store looks the data set up, then inserts it when missing: two trainings of one
    # experiment starting together can both miss it, and the second insert breaks the unique key
    # (seen with eight writers on the stack's PostgreSQL). Once the other row exists, a retry finds it.
    datasets, attempts = [data_input(params.paths, params.data)], 3
    for attempt in range(1, attempts + 1):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as e:
            if attempt == attempts or "unique constraint" not in str(e).lower():
                raise


# The system metrics monitor of each training run in this process: started by start_training_run,
# stopped by finish_training_run (a crashed training's stops with the process: it is a daemon thread).
_monitors = {}


def start_system_metrics(client, run_id: str, mlflow: MLflow) -> None:
    """Sample CPU, memory, disk and network every mlflow.system_metrics_interval seconds into the
    run's `system/*` metrics (MLflow's system metrics; null: off). BENCHMARKS.md measures the cost."""
    interval = mlflow.system_metrics_interval
    if not interval or run_id in _monitors:
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" lines
    # resume_logging: a resumed training carries on after the steps its run already holds.
    _monitors[run_id] = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True,
                                             tracking_uri=client.tracking_uri)
    _monitors[run_id].start()


def stop_system_metrics(run_id: str) -> None:
    """Stop the run's system metrics monitor, logging what it sampled last."""
    monitor = _monitors.pop(run_id, None)
    if monitor is not None:
        monitor.finish()


def log_epoch(client, run_id: str, row: dict) -> None:
    """One epoch's history row (train/test loss, recon, KL, seconds) with step = epoch."""
    log_metrics(client, run_id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def start_training_run(client, params: Pipeline, device, key: str, history: list[dict]) -> str:
    """A run for this training: params, tags, and the epochs a resumed checkpoint already holds.

    A training killed and resumed from its checkpoint (same `key`) carries on in
    the same run; any other unfinished run is closed as FAILED. Every other
    training gets a fresh run, so a rerun never changes a logged param.
    """
    from mlflow.entities import Param, RunTag

    open_file = project_path(params.paths.checkpoint_dir) / RUN_FILE
    previous = json.loads(open_file.read_text()) if open_file.exists() else None
    if previous and previous.get("tracking_uri") == redact_uri(client.tracking_uri):
        try:
            if history and previous.get("key") == key:
                run_id = previous["run_id"]
                client.update_run(run_id, status="RUNNING")
                start_system_metrics(client, run_id, params.mlflow)
                # An epoch checkpointed while its log failed (the store was down) is logged now.
                metric = next(name for name in history[0] if name != "epoch")
                logged = {point.step for point in client.get_metric_history(run_id, metric)}
                for row in history:
                    if int(row["epoch"]) not in logged:
                        log_epoch(client, run_id, row)
                log.info("MLflow run %s resumed (%s)", run_id, redact_uri(client.tracking_uri))
                return run_id
            client.set_terminated(previous["run_id"], status="FAILED")
        except Exception:  # the run was deleted meanwhile: start a fresh one
            pass

    t = params.train
    run = client.create_run(experiment_id(client, params.mlflow, params.paths),
                            run_name=f"{params.data.dataset}-z{t.latent_dim}-beta{t.beta}")
    run_id = run.info.run_id
    client.log_batch(run_id,
                     params=[Param(k, v) for k, v in flat_params(params).items()],
                     tags=[RunTag(k, v) for k, v in run_tags(params, device).items()])
    for row in history:  # epochs done before a resume, when the old run is gone
        log_epoch(client, run_id, row)
    log_data_input(client, run_id, params)
    start_system_metrics(client, run_id, params.mlflow)
    write_json(open_file, {"run_id": run_id, "key": key, "tracking_uri": redact_uri(client.tracking_uri)})
    log.info("MLflow run %s in experiment '%s' (%s)", run_id, params.mlflow.experiment_name,
             redact_uri(client.tracking_uri))
    return run_id


def finish_training_run(client, run_id: str, params: Pipeline, metrics: dict) -> dict:
    """Final figures and artifacts; then record the run in paths.run_record, under the hash of the
    files in paths.model_dir (a staged folder: the train stage moves the model in afterwards; the
    record of a model that never moves in names nothing). Returns the record.

    The decoder is registered once evaluated: by the evaluate stage (registry.register_decoder).
    """
    paths = params.paths
    model_dir = project_path(paths.model_dir)
    # Not again what log_epoch logged, nor what is a param (epochs) or a tag (threads).
    logged = client.get_run(run_id).data.metrics.keys() | params.train.keys()
    log_metrics(client, run_id, {k: v for k, v in metrics.items() if k not in logged},
                step=params.train.epochs)
    for path in sorted(model_dir.glob("vae.*")):
        client.log_artifact(run_id, str(path), "model")
    for path in map(project_path, (paths.train_metrics, paths.train_detail, paths.train_history)):
        client.log_artifact(run_id, str(path), "metrics")
    for path in (PARAMS_FILE, ROOT / "dvc.lock"):
        if path.exists():
            client.log_artifact(run_id, str(path))
    stop_system_metrics(run_id)

    run = client.get_run(run_id)
    # The same weights as a model registered before (a forced rerun): that version is this model.
    earlier = run_records(paths).get(model_key(model_dir), {})
    record = {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "experiment_name": params.mlflow.experiment_name,
        "tracking_uri": redact_uri(client.tracking_uri),
        **{key: earlier[key] for key in REGISTRATION if key in earlier},
    }
    add_run_record(paths, record)
    client.set_terminated(run_id, status="FINISHED")
    (project_path(paths.checkpoint_dir) / RUN_FILE).unlink(missing_ok=True)
    log.info("MLflow run %s finished", run_id)
    return record
