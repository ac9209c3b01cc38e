"""The MLflow tracking store: where runs go, checked before any work is spent; the run record.

Where runs go, the first that is set:
  1. env MLFLOW_TRACKING_URI          e.g. http://127.0.0.1:5000 (an `mlflow server`)
  2. params.yaml mlflow.tracking_uri  (a relative sqlite:/// path lies in the project's home)
  3. the embedded store: the SQLite file paths.tracking_store, its artifacts in paths.tracking_artifacts
The home (files.project_home) is the main checkout for every way DVC runs a stage: one store, one record.

Calls go through an MlflowClient with an explicit run id, never the fluent `mlflow.start_run` (in a
Prefect task's thread the fluent "active run" is not there: mlflow would silently open a second).

The run record (params.yaml paths.run_record) maps the hash of the model's files to the run that
trained them and, once evaluated, their registered version. Out of models/ (a run id is new on every
training: it would give identical weights a new hash in dvc.lock) and no DVC output (git-ignored, like
the store), it names the right run when DVC restores a model from its run cache or an experiment.

Beside it: runs.py (a training's run), registry.py, champion.py (the gate), sweeps.py, ui.py.
"""
import contextlib
import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
from pathlib import Path

import requests

from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.files import ROOT, home_path, locked, project_path, sha256_file, write_json
from vae_pipeline.ml.data import FILES, dataset_checksums, dataset_dir
from vae_pipeline.params import Data, MLflow, Paths, Pipeline, load_params

log = logging.getLogger("tracking")

# The experiment is one of model training, not a GenAI app: MLflow 3's tag for what kind it is.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# Names the stages write and the champion gate reads: eval_<figure>, a tag data.sha256.<file> per data file.
EVAL_METRIC_PREFIX, DATA_SHA256_TAG = "eval_", "data.sha256."


def default_tracking_uri(root: Path = ROOT, paths: Paths | None = None) -> str:
    """sqlite:///<home>/<paths.tracking_store>: the embedded store of the project at `root` (paths: its own)."""
    paths = paths if paths is not None else load_params(Path(root) / "params.yaml").paths
    return f"sqlite:///{home_path(paths.tracking_store, root)}"


def tracking_uri(mlflow: MLflow, paths: Paths, root: Path = ROOT) -> str:
    """The tracking URI: env MLFLOW_TRACKING_URI, else mlflow.tracking_uri, else the project's SQLite file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.tracking_uri
    if not uri:
        return default_tracking_uri(root, paths)
    # A relative SQLite path would depend on the current directory: anchor it at the project's home.
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{home_path(uri.removeprefix('sqlite:///'), root)}"
    return uri


def artifact_location(uri: str, mlflow: MLflow, paths: Paths) -> str | None:
    """The artifact root of a new experiment in the store at `uri`; None: the store's own (a server's).

    A SQLite store has none (mlflow would use ./mlruns in the current directory): its artifacts lie
    where paths.tracking_artifacts lies from paths.tracking_store (the embedded store's: there).
    """
    if not uri.startswith("sqlite:///"):
        return None
    store_folder = home_path(paths.tracking_store).parent
    beside = os.path.relpath(home_path(paths.tracking_artifacts), store_folder)
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", mlflow.experiment_name)
    return (Path(uri.removeprefix("sqlite:///")).parent / beside / slug).resolve().as_uri()


def check_reachable(uri: str, timeout: float) -> None:
    """Raise PipelineError (naming the URI, never its credentials) unless a store answers there."""
    if uri.startswith(("http://", "https://")):
        # The MLflow client retries a dead server for minutes; one plain request says it at once.
        try:
            answer = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as e:
            raise PipelineError(f"MLflow tracking server {redact_uri(uri)} is unreachable "
                                f"({type(e).__name__}); start it or set MLFLOW_TRACKING_URI / "
                                "params.yaml mlflow.tracking_uri") from None
        if answer.status_code != 200:
            raise PipelineError(f"MLflow tracking server {redact_uri(uri)}: /health answered "
                                f"HTTP {answer.status_code}")
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PipelineError(f"MLflow tracking store {redact_uri(uri)}: folder {folder} is missing "
                                "or not writable")


def connect(mlflow_section: MLflow, paths: Paths):
    """An MlflowClient for the tracking URI, after checking that the store can be read and written.

    Called before any work is spent: a store that is unreachable, damaged, or refuses writes fails
    here, in seconds, naming the store, not after the last epoch. Also makes the URI mlflow's
    process-wide default: `mlflow.pyfunc.log_model` and the model registry read it from there.
    """
    import mlflow  # imported here: importing mlflow takes seconds, and only tracking needs it

    uri = tracking_uri(mlflow_section, paths)
    check_reachable(uri, mlflow_section.connect_timeout)
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
            check_writable(client, mlflow_section, paths)
    except PipelineError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0].replace(uri, redact_uri(uri))
        raise PipelineError(f"{store_name(uri)}: MLflow tracking store is unusable: {reason}") from None
    return client


def store_name(uri: str) -> str:
    """The store as a message names it: the database file of a sqlite:/// URI, else the URI, masked."""
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else redact_uri(uri)


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


def check_writable(client, mlflow: MLflow, paths: Paths, tries: int = 3) -> None:
    """Write to the store once: set STORE_CHECK_TAG on the experiment (created on first use).

    A store that reads but cannot be written (a full disk, a read-only file) fails here. Several
    trainings starting together all insert the tag the first time and all but one may be refused
    (a UNIQUE constraint); their next try updates it, so a failure counts only after `tries` tries.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(1, tries + 1):
        try:
            client.set_experiment_tag(experiment_id(client, mlflow, paths), STORE_CHECK_TAG, "true")
            return
        except MlflowException:
            if attempt == tries:
                raise
            time.sleep(0.5 * attempt)


@contextlib.contextmanager
def sqlite_open_lock(uri: str):
    """For a SQLite store, an exclusive lock on the database's folder (other stores: none).

    Opening a new store makes mlflow create its tables: several trainings starting at once would all
    do it, and all but one fail ("table ... already exists"), sometimes leaving the file half-built.
    Later writes need no lock: mlflow has SQLite wait up to 20 s for a busy database.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (seconds of imports: not under the lock)

    with locked(Path(uri.removeprefix("sqlite:///")).parent):
        yield


def experiment_id(client, mlflow: MLflow, paths: Paths) -> str:
    """The experiment mlflow.experiment_name (created on first use; its artifacts: artifact_location)."""
    from mlflow.exceptions import MlflowException

    name = mlflow.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if not EXPERIMENT_KIND.items() <= experiment.tags.items():   # made before the tag was set
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, mlflow, paths),
                                        tags=EXPERIMENT_KIND)
    except MlflowException:  # created meanwhile by a parallel run
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


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


# ---- the run record: which run trained the model on disk; later stages attach to it ----------

def data_input(paths: Paths, data: Data):
    """The data set as an MLflow run input (an mlflow.entities.DatasetInput, context `training`).

    Named data.dataset. Its digest is the SHA-256 of the pinned checksums listed as
    `sha256sum` prints them, so in the raw folder `sha256sum train-images-idx3-ubyte
    train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte | sha256sum`
    gives it, cut to the 36 characters MLflow stores. The profile holds each file's checksum.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE

    checksums = dataset_checksums(data)
    listing = "".join(f"{checksums[name]}  {name}\n" for name in FILES)
    dataset = Dataset(name=data.dataset,
                      digest=hashlib.sha256(listing.encode()).hexdigest()[:MAX_DATASET_DIGEST_SIZE],
                      source_type="local", source=json.dumps({"uri": dataset_dir(paths, data).as_uri()}),
                      profile=json.dumps({"sha256": {name: checksums[name] for name in FILES}}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def model_key(model_dir: Path) -> str:
    """The SHA-256 of a model folder: of each file's name and SHA-256, in name order."""
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(model_dir)}\0{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def record_path(paths: Paths, root: Path = ROOT) -> Path:
    """paths.run_record, in the home of the project at `root`."""
    return home_path(paths.run_record, root)


def run_records(paths: Paths, root: Path = ROOT) -> dict[str, dict]:
    """paths.run_record: {model_key: the record of the run that trained that model}; {} when missing."""
    path = record_path(paths, root)
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


def training_run(paths: Paths, root: Path = ROOT) -> dict | None:
    """The run that trained the model now in paths.model_dir (of the project at `root`), or None."""
    model_dir = Path(root) / paths.model_dir
    if not model_dir.is_dir():
        return None
    return run_records(paths, root).get(model_key(model_dir))


REGISTRATION = ("model_name", "model_version", "model_uri", "model_id")   # what registering adds to a record


def add_run_record(paths: Paths, record: dict) -> None:
    """Make `record` the record of the model in paths.model_dir (the train stage's staged folder, or the
    model in place). Only ever added to, under a lock: two experiments finishing at once keep both."""
    key = model_key(project_path(paths.model_dir))
    path = record_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):
        write_json(path, {**run_records(paths), key: record})


def recorded_run(client, paths: Paths) -> dict | None:
    """The record of the run that trained the current model, checked to be in the client's store;
    None (with a warning) when none is recorded (trained before tracking existed, or elsewhere)."""
    record = training_run(paths)
    if record is None:
        log.warning("%s records no MLflow run for the model in %s (trained before tracking existed, "
                    "or elsewhere): nothing attached to MLflow", paths.run_record, paths.model_dir)
        return None
    try:
        client.get_run(record["run_id"])
    except Exception:
        raise PipelineError(f"MLflow run {record['run_id']} (from {paths.run_record}, logged to "
                            f"{record['tracking_uri']}) is not in {redact_uri(client.tracking_uri)}; "
                            "point MLFLOW_TRACKING_URI at the store the model was trained with, "
                            "or retrain") from None
    return record


def attach_to_training_run(params: Pipeline, metrics: dict | None = None, artifacts: list[Path] = (),
                           artifact_dir: str | None = None, step: int = 0) -> str | None:
    """Log a later stage's metrics and files to the run that trained the current model.

    metrics: name -> number, logged at `step` in one request (a rerun adds a point, it never
    conflicts). artifacts: files or folders, stored under `artifact_dir` in the run. Params are
    never logged here: they belong to the training. Returns the run id, or None (see recorded_run).
    `params`: the stage's config (this reads its mlflow and paths sections).
    """
    client = connect(params.mlflow, params.paths)
    record = recorded_run(client, params.paths)
    if record is None:
        return None
    run_id = record["run_id"]
    log_metrics(client, run_id, metrics or {}, step)
    for path in map(Path, artifacts):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_dir)
        elif path.exists():
            client.log_artifact(run_id, str(path), artifact_dir)
        else:
            raise PipelineError(f"{path}: missing, cannot attach it to MLflow run {run_id}")
    log.info("attached %d metrics, %d artifacts to MLflow run %s", len(metrics or {}), len(artifacts), run_id)
    return run_id
