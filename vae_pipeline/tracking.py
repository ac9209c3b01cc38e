"""MLflow, in one place: one run per trained model; later stages attach to it.

Where runs go, the first that is set:
  1. env MLFLOW_TRACKING_URI          e.g. http://127.0.0.1:5000 (an `mlflow server`)
  2. params.yaml mlflow.tracking_uri
  3. sqlite:///<project>/mlflow.db, artifacts in <project>/mlartifacts/ (both git-ignored)

Every call goes through an MlflowClient with an explicit run id, never the
fluent `mlflow.start_run`: inside a Prefect task running in another thread the
fluent "active run" is not there, and mlflow silently opens a second run.

The train stage calls, in order:
    client = connect(params)                                  # fails here if the URI is unreachable
    run_id = start_training_run(client, params, device, key, history)   # also logs the data set as
                                                              # an input and starts the system metrics
    log_epoch(client, run_id, row)                            # once per epoch, one batched request
    finish_training_run(client, run_id, params, model, metrics)
and records the run in paths.run_record, under the hash of the model's files.
Later stages call attach_to_training_run(params, metrics=..., artifacts=[...]); the
evaluate stage's figures go to the logged model too (model_metrics=...), so
`mlflow.search_logged_models` can rank the models by them.

The run record is kept out of the model folder: a run id is new on every
training, so inside models/ it would give identical weights a new hash in
dvc.lock and rerun everything downstream. It is no DVC output either (git-ignored,
like mlflow.db). Keyed by the model's hash, it also names the right run when DVC
restores an earlier model from its run cache.

Env VAE_RUN_TAGS (a JSON object) adds tags to the run, e.g. the Prefect flow run id.
"""
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
from pathlib import Path

import requests

from vae_pipeline.datasets import FILES, expected_checksums, raw_dir
from vae_pipeline.files import ROOT, PipelineError, project_path, sha256_file, write_json
from vae_pipeline.params import PARAMS_FILE
from vae_pipeline.provenance import git_provenance
# torch is imported in the functions that need it (the train stage's): latent_map and report
# attach to the run without paying its ~1.5 s import.

log = logging.getLogger("tracking")

RUN_FILE = "mlflow_run.json"          # in paths.checkpoint_dir: the run of an unfinished training
RUN_TAGS_ENV = "VAE_RUN_TAGS"
CHAMPION_ALIAS = "champion"           # the registered version in use: `make serve` serves it, retrains move it
# The experiment is one of model training, not a GenAI app: MLflow 3's tag for what kind it is.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def default_tracking_uri(root: Path = ROOT) -> str:
    """The embedded store: an SQLite file in the project (its artifacts go to <root>/mlartifacts)."""
    return f"sqlite:///{Path(root) / 'mlflow.db'}"


def tracking_uri(params: dict, root: Path = ROOT) -> str:
    """The tracking URI: env MLFLOW_TRACKING_URI, else mlflow.tracking_uri, else the project's SQLite file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"]
    if not uri:
        return default_tracking_uri(root)
    # A relative SQLite path would depend on the current directory: anchor it at the project.
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(root) / uri.removeprefix('sqlite:///')}"
    return uri


def masked(uri: str) -> str:
    """The URI with any user:password replaced by ***, safe to print."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def check_reachable(uri: str, timeout: float) -> None:
    """Raise PipelineError (naming the URI, never its credentials) unless a store answers there."""
    if uri.startswith(("http://", "https://")):
        # The MLflow client retries a dead server for minutes; one plain request says it at once.
        try:
            answer = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as e:
            raise PipelineError(f"MLflow tracking server {masked(uri)} is unreachable "
                                f"({type(e).__name__}); start it or set MLFLOW_TRACKING_URI / "
                                "params.yaml mlflow.tracking_uri") from None
        if answer.status_code != 200:
            raise PipelineError(f"MLflow tracking server {masked(uri)}: /health answered "
                                f"HTTP {answer.status_code}")
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PipelineError(f"MLflow tracking store {masked(uri)}: folder {folder} is missing "
                                "or not writable")


def connect(params: dict):
    """An MlflowClient for the tracking URI, after checking that the store can be read and written.

    Called before any work is spent (the train stage calls it first of all): a store
    that is unreachable, an SQLite file that is not a database or is damaged, or a store
    that answers but refuses writes fails here, in seconds, naming the store, instead of
    after the last epoch. The write is one experiment tag (check_writable).

    Also makes the URI mlflow's process-wide default: `mlflow.pytorch.log_model`
    and the model registry read it from there.
    """
    import mlflow  # imported here: importing mlflow takes seconds, and only tracking needs it

    uri = tracking_uri(params)
    check_reachable(uri, params["mlflow"]["connect_timeout"])
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow also exports the URI to os.environ; keep the caller's environment as it was, so a
    # process that trains in-process (a flow, a test) does not pass this store to its children.
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files, short logs
    try:
        with sqlite_open_lock(uri):
            check_sqlite_file(uri)             # before mlflow opens it: it would try to build its tables in it
            client = mlflow.MlflowClient(uri)  # opens the store: a new SQLite file gets its tables
            client.search_experiments(max_results=1)
            check_writable(client, params)
    except PipelineError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0].replace(uri, masked(uri))
        raise PipelineError(f"{store_name(uri)}: MLflow tracking store is unusable: {reason}") from None
    return client


def store_name(uri: str) -> str:
    """The store as a message names it: the database file of a sqlite:/// URI, else the URI, masked."""
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else masked(uri)


def check_sqlite_file(uri: str) -> None:
    """For a sqlite:/// store whose file exists: it is an SQLite database and no page of it is damaged.

    SQLite's own check (PRAGMA quick_check) reads every page once: milliseconds for a
    project's store, seconds for one of a gigabyte. A damaged page would otherwise surface
    only when mlflow first touches it, e.g. the model registry's at the end of a training.
    """
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        return   # a new store: mlflow creates it
    advice = "move it aside to start a new store, or restore it from a backup"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True,
                                                timeout=20)) as db:
            found = [row[0] for row in db.execute("PRAGMA quick_check")]
    except sqlite3.Error as e:
        raise PipelineError(f"{path}: not a usable SQLite database ({e}); {advice}") from None
    if found != ["ok"]:
        problems = [line for line in "\n".join(found).splitlines() if line and not line.startswith("***")]
        raise PipelineError(f"{path}: damaged SQLite database (PRAGMA quick_check found {len(problems)} "
                            f"problems, first: {problems[0] if problems else found[0]}); {advice}")


# The tag check_writable sets on the experiment: a write that changes nothing anyone reads.
STORE_CHECK_TAG = "vae_pipeline.store_writable"


def check_writable(client, params: dict, tries: int = 3) -> None:
    """Write to the store once: set STORE_CHECK_TAG on the experiment (created on first use).

    A store that reads but cannot be written (a full disk, a read-only file or account)
    fails here rather than when the training's results are logged. The first time, several
    trainings starting together all insert the tag and all but one may be refused (a
    server's UNIQUE constraint); their next try finds it and updates it, so a failure counts
    only after `tries` tries.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(1, tries + 1):
        try:
            client.set_experiment_tag(experiment_id(client, params), STORE_CHECK_TAG, "true")
            return
        except MlflowException:
            if attempt == tries:
                raise
            time.sleep(0.5 * attempt)


@contextlib.contextmanager
def sqlite_open_lock(uri: str):
    """For a SQLite store, hold an exclusive lock on the folder of the database file.

    Opening a new SQLite store makes mlflow create its tables. Several trainings
    starting at once would all do it together, and all but one fail ("table ...
    already exists", "duplicate column name"), sometimes leaving the file
    half-built. Under this lock one process creates the tables and the others find
    them. Later writes need no lock: mlflow has SQLite wait up to 20 s for a busy
    database (tests/test_concurrency.py: eight writers at once lose nothing).
    The folder is locked, not a lock file, so nothing is left beside the database.
    Other stores: no lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (seconds of imports: not under the lock)

    folder = os.open(Path(uri.removeprefix("sqlite:///")).parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released on close, or when the process dies
        yield
    finally:
        os.close(folder)


def experiment_id(client, params: dict) -> str:
    """The experiment named in params (created on first use)."""
    from mlflow.exceptions import MlflowException

    name = params["mlflow"]["experiment_name"]
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if not EXPERIMENT_KIND.items() <= experiment.tags.items():   # made before the tag was set
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    # A SQLite store has no artifact root of its own (mlflow would use ./mlruns in the current
    # directory): keep the artifacts beside the database file.
    location = None
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / slug).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # created meanwhile by a parallel run
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def ui_runs_page(uri: str, params: dict) -> str:
    """The page of MLflow's UI, relative to the UI's address, listing the experiment's training runs
    in the store at `uri`.

    MLflow 3.17's UI opens an experiment in its GenAI view (traces, judges) unless
    the browser has chosen "Model training" in the sidebar: it does not read the
    experiment's kind tag (tried in headless Chromium). The `workflowType` query opens the runs.
    """
    import mlflow  # imported here: importing mlflow takes seconds

    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(params["mlflow"]["experiment_name"])
    page = f"#/experiments/{experiment.experiment_id}/runs" if experiment else "#/experiments"
    return f"{page}?workflowType=machine_learning"


def flat_params(params: dict) -> dict[str, str]:
    """The params that shape the model, flattened: data.dataset, data.binarize and every train.* key."""
    flat = {"data.dataset": params["data"]["dataset"], "data.binarize": params["data"]["binarize"]}

    def add(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}.{key}", item)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)

    add("train", params["train"])
    return flat


def git_state(params: dict) -> dict[str, str]:
    """The git provenance (vae_pipeline.provenance) as run tags."""
    git = git_provenance(params)
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


def run_tags(params: dict, device) -> dict[str, str]:
    import torch
    data = raw_dir(params)
    tags = {
        "mlflow.source.name": "stages.train",
        "device": str(device),
        "threads": str(torch.get_num_threads()),
        "torch.version": torch.__version__,
        **git_state(params),
        **{f"data.sha256.{f.name}": sha256_file(f) for f in sorted(data.iterdir()) if f.is_file()},
        **extra_tags(),
    }
    if "git.commit" in tags and tags["git.commit"] != "unknown":
        tags["mlflow.source.git.commit"] = tags["git.commit"]
    return tags


def data_input(params: dict):
    """The data set as an MLflow run input (an mlflow.entities.DatasetInput, context `training`).

    Named data.dataset. Its digest is the SHA-256 of the pinned checksums listed as
    `sha256sum` prints them, so in the raw folder `sha256sum train-images-idx3-ubyte
    train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte | sha256sum`
    gives it, cut to the 36 characters MLflow stores. The profile holds each file's checksum.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE

    checksums = expected_checksums(params)
    listing = "".join(f"{checksums[name]}  {name}\n" for name in FILES)
    dataset = Dataset(name=params["data"]["dataset"],
                      digest=hashlib.sha256(listing.encode()).hexdigest()[:MAX_DATASET_DIGEST_SIZE],
                      source_type="local", source=json.dumps({"uri": raw_dir(params).as_uri()}),
                      profile=json.dumps({"sha256": {name: checksums[name] for name in FILES}}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def log_data_input(client, run_id: str, params: dict) -> None:
    """Log the data set (data_input) as an input of the run: MLflow's Dataset column shows it."""
    from mlflow.exceptions import MlflowException

    # MLflow's SQL store looks the data set up, then inserts it when missing: two trainings of one
    # experiment starting together can both miss it, and the second insert breaks the unique key
    # (seen with eight writers on the stack's PostgreSQL). Once the other row exists, a retry finds it.
    datasets, attempts = [data_input(params)], 3
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


def start_system_metrics(client, run_id: str, params: dict) -> None:
    """Sample CPU, memory, disk and network every mlflow.system_metrics_interval seconds into the
    run's `system/*` metrics (MLflow's system metrics; null: off). BENCHMARKS.md measures the cost."""
    interval = params["mlflow"]["system_metrics_interval"]
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


def served_version(client, name: str) -> tuple[str, bool]:
    """The version of registered model `name` in use: the champion, else the newest (then False)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version), True
    except MlflowException:              # no such alias, or no such model
        pass
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise PipelineError(f"MLflow model registry at {masked(client.tracking_uri)}: no version of "
                            f"model '{name}' (params.yaml mlflow.model_name); train one first (make run)")
    return str(max(int(v.version) for v in versions)), False


def log_metrics(client, run_id: str, metrics: dict, step: int = 0, model_id: str | None = None,
                dataset=None) -> None:
    """Every numeric value of `metrics` at `step`, in one request.

    With `model_id` they are the logged model's metrics too; with `dataset` (an
    mlflow.entities.Dataset) they say which data set they were measured on.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    on = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset else {}
    batch = [Metric(key, float(value), now, step, model_id=model_id, **on) for key, value in metrics.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_epoch(client, run_id: str, row: dict) -> None:
    """One epoch's history row (train/test loss, recon, KL, seconds) with step = epoch."""
    log_metrics(client, run_id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def start_training_run(client, params: dict, device, key: str, history: list[dict]) -> str:
    """A run for this training: params, tags, and the epochs a resumed checkpoint already holds.

    A training killed and resumed from its checkpoint (same `key`) carries on in
    the same run; any other unfinished run is closed as FAILED. Every other
    training gets a fresh run, so a rerun never changes a logged param.
    """
    from mlflow.entities import Param, RunTag

    open_file = project_path(params["paths"]["checkpoint_dir"]) / RUN_FILE
    previous = json.loads(open_file.read_text()) if open_file.exists() else None
    if previous and previous.get("tracking_uri") == masked(client.tracking_uri):
        try:
            if history and previous.get("key") == key:
                run_id = previous["run_id"]
                client.update_run(run_id, status="RUNNING")
                start_system_metrics(client, run_id, params)
                # An epoch checkpointed while its log failed (the store was down) is logged now.
                metric = next(name for name in history[0] if name != "epoch")
                logged = {point.step for point in client.get_metric_history(run_id, metric)}
                for row in history:
                    if int(row["epoch"]) not in logged:
                        log_epoch(client, run_id, row)
                log.info("MLflow run %s resumed (%s)", run_id, masked(client.tracking_uri))
                return run_id
            client.set_terminated(previous["run_id"], status="FAILED")
        except Exception:  # the run was deleted meanwhile: start a fresh one
            pass

    t = params["train"]
    run = client.create_run(experiment_id(client, params),
                            run_name=f"{params['data']['dataset']}-z{t['latent_dim']}-beta{t['beta']}")
    run_id = run.info.run_id
    client.log_batch(run_id,
                     params=[Param(k, v) for k, v in flat_params(params).items()],
                     tags=[RunTag(k, v) for k, v in run_tags(params, device).items()])
    for row in history:  # epochs done before a resume, when the old run is gone
        log_epoch(client, run_id, row)
    log_data_input(client, run_id, params)
    start_system_metrics(client, run_id, params)
    write_json(open_file, {"run_id": run_id, "key": key, "tracking_uri": masked(client.tracking_uri)})
    log.info("MLflow run %s in experiment '%s' (%s)", run_id, params["mlflow"]["experiment_name"],
             masked(client.tracking_uri))
    return run_id


def finish_training_run(client, run_id: str, params: dict, model, metrics: dict) -> dict:
    """Final figures, artifacts, the registered decoder; then record the run in paths.run_record.

    Returns the record written there, under the hash of the model's files (model_key).
    """
    paths = params["paths"]
    model_dir = project_path(paths["model_dir"])
    # Not again what log_epoch logged, nor what is a param (epochs) or a tag (threads).
    logged = client.get_run(run_id).data.metrics.keys() | params["train"].keys()
    log_metrics(client, run_id, {k: v for k, v in metrics.items() if k not in logged},
                step=params["train"]["epochs"])
    for path in sorted(model_dir.glob("vae.*")):
        client.log_artifact(run_id, str(path), "model")
    for path in (project_path(paths[key]) for key in ("train_metrics", "train_detail", "train_history")):
        client.log_artifact(run_id, str(path), "metrics")
    for path in (PARAMS_FILE, ROOT / "dvc.lock"):
        if path.exists():
            client.log_artifact(run_id, str(path))
    from vae_pipeline.mlflow_decoder import log_decoder  # imported here: it imports torch

    name = params["mlflow"]["model_name"]
    version, model_id = log_decoder(client, run_id, model, name, flat_params(params),
                                    params["serve"]["max_batch"])
    stop_system_metrics(run_id)

    run = client.get_run(run_id)
    record = {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "experiment_name": params["mlflow"]["experiment_name"],
        "tracking_uri": masked(client.tracking_uri),
        "model_name": name,
        "model_version": version,
        "model_uri": f"models:/{name}/{version}",
        "model_id": model_id,
    }
    record_training_run(params, record)
    client.set_terminated(run_id, status="FINISHED")
    (project_path(paths["checkpoint_dir"]) / RUN_FILE).unlink(missing_ok=True)
    log.info("MLflow run %s finished; decoder registered as %s", run_id, record["model_uri"])
    return record


def model_key(model_dir: Path) -> str:
    """The SHA-256 of a model folder: of each file's name and SHA-256, in name order."""
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(model_dir)}\0{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def run_records(params: dict, root: Path = ROOT) -> dict[str, dict]:
    """paths.run_record: {model_key: the record of the run that trained that model}; {} when missing."""
    path = Path(root) / params["paths"]["run_record"]   # an absolute path stays as it is
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: unreadable run record ({e}); delete it (later stages then "
                            "attach nothing to MLflow until the next training)") from None
    if not isinstance(records, dict):
        raise PipelineError(f"{path}: expected a JSON object of run records; delete it")
    return records


def record_training_run(params: dict, record: dict) -> None:
    """Record `record` as the run that trained the model now in paths.model_dir."""
    key = model_key(project_path(params["paths"]["model_dir"]))
    write_json(project_path(params["paths"]["run_record"]), {**run_records(params), key: record})


def training_run(params: dict, root: Path = ROOT) -> dict | None:
    """The run that trained the model now in paths.model_dir (of the project at `root`), or None."""
    model_dir = Path(root) / params["paths"]["model_dir"]
    if not model_dir.is_dir():
        return None
    return run_records(params, root).get(model_key(model_dir))


def attach_to_training_run(params: dict, metrics: dict | None = None, artifacts: list[Path] = (),
                           artifact_dir: str | None = None, step: int = 0,
                           model_metrics: dict | None = None) -> str | None:
    """Log a later stage's metrics and files to the run that trained the current model.

    metrics: name -> number, logged at `step` in one request (a rerun adds a
    point, it never conflicts). model_metrics: the same, and the logged model's
    metrics too, measured on the data set (data_input). artifacts: files or folders, stored under
    `artifact_dir` in the run. Params are never logged here: they belong to
    the training. Returns the run id, or None (with a warning) when no run is
    recorded for the model (trained before tracking existed, or in another workspace).
    """
    record = training_run(params)
    if record is None:
        log.warning("%s records no MLflow run for the model in %s (trained before tracking existed, "
                    "or elsewhere): nothing attached to MLflow", params["paths"]["run_record"],
                    params["paths"]["model_dir"])
        return None
    client = connect(params)
    run_id = record["run_id"]
    try:
        client.get_run(run_id)
    except Exception:
        raise PipelineError(f"MLflow run {run_id} (from {params['paths']['run_record']}, logged to "
                            f"{record['tracking_uri']}) is not in {masked(client.tracking_uri)}; "
                            "point MLFLOW_TRACKING_URI at the store the model was trained with, "
                            "or retrain") from None
    log_metrics(client, run_id, metrics or {}, step)
    if model_metrics:
        # A run recorded before the logged model's id was kept: its metrics go on the run alone.
        model_id = record.get("model_id")
        log_metrics(client, run_id, model_metrics, step, model_id=model_id,
                    dataset=data_input(params).dataset if model_id else None)
    for path in map(Path, artifacts):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_dir)
        elif path.exists():
            client.log_artifact(run_id, str(path), artifact_dir)
        else:
            raise PipelineError(f"{path}: missing, cannot attach it to MLflow run {run_id}")
    log.info("attached %d metrics, %d artifacts to MLflow run %s",
             len(metrics or {}) + len(model_metrics or {}), len(artifacts), run_id)
    return run_id
