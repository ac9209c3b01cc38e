"""Where the model's MLflow run is, against the store this process would use.

A checkout's model may be recorded in another store than the one now set: trained on the
embedded store before `source .stack/env`, or pulled from a DVC remote (its run record stayed
in the checkout that trained it). `make run` then runs no stage and logs nothing, and `make
compare` and `make serve` would look in a store that has nothing of it: they say so, with the
fix, instead of "run the pipeline first". The read-only commands also refuse a missing embedded
store rather than have MLflow make an empty `mlflow.db`.
Each function takes the whole config: the store is named by its mlflow and paths sections.
"""
from pathlib import Path

from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.files import ROOT
from vae_pipeline.params import Pipeline
from vae_pipeline.tracking import store

# Trains the model again, and evaluates and registers it, in the store now set; then the gate.
RELOG = "dvc repro --force --downstream train && make run"


def logged_here(record: dict, params: Pipeline, root: Path = ROOT) -> bool:
    """Whether the run `record` names is in the store now set (env MLFLOW_TRACKING_URI, params
    mlflow.tracking_uri, else the embedded one). The record holds the URI redacted, as it is compared."""
    return record.get("tracking_uri") == redact_uri(store.tracking_uri(params.mlflow, params.paths, root))


def logged_elsewhere(params: Pipeline, root: Path = ROOT) -> dict | None:
    """The run record of the model in paths.model_dir when its run is in another store than the one
    now set; else None."""
    record = store.training_run(params.paths, root)
    return record if record and not logged_here(record, params, root) else None


def advice(params: Pipeline, root: Path = ROOT) -> str | None:
    """Where the model's runs are and what to do, when that is not the store now set; None otherwise
    (the model's run is here, or there is no model)."""
    model_dir = params.paths.model_dir
    here = store.store_name(store.tracking_uri(params.mlflow, params.paths, root))
    if record := logged_elsewhere(params, root):
        return (f"the model in {model_dir} was logged to {record['tracking_uri']} (MLflow run {record['run_id']}), "
                f"not to {here}: point MLFLOW_TRACKING_URI there, or log it here with `{RELOG}`")
    if (Path(root) / model_dir).is_dir() and store.training_run(params.paths, root) is None:
        return (f"the model in {model_dir} was trained in another checkout (pulled with DVC: no run record "
                f"here), so its runs and champion are in the store it was trained with; point "
                "MLFLOW_TRACKING_URI at it (the team stack's: `source STACK_CHECKOUT/.stack/env`)")
    return None


def require_store(params: Pipeline, root: Path = ROOT) -> None:
    """For a command that only reads MLflow: PipelineError when the store is the embedded SQLite file
    and it does not exist (MLflow would make an empty one, and the command find nothing in it)."""
    uri = store.tracking_uri(params.mlflow, params.paths, root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise PipelineError(f"{store.store_name(uri)}: no MLflow store in this checkout (nothing was logged "
                            f"here); {advice(params, root) or '`make run` logs the first run'}")
