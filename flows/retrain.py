"""The `retrain` flow: re-check the data, rerun what DVC finds stale, and gate the champion.

Served on a cron schedule by `python -m flows.serve` (or put on a work pool with
`prefect deploy`, see prefect.yaml). One retrain:
  1. re-checks the data sources: `dvc repro --force --single-item download`
     fetches the files again and checks them against the pinned checksums. Same
     bytes -> same hashes in dvc.lock -> nothing downstream is stale;
  2. with a `seed`, writes it to params.yaml's train.seed (comments kept) so the
     train stage is stale: that is the challenger. Editing params.yaml rather
     than `dvc exp run -S` keeps it plain: dvc.lock then records exactly the
     params the workspace holds, and `dvc repro` alone reproduces the result;
  3. runs the `vae-pipeline` flow (flows/pipeline.py): DVC reruns only what is
     stale, and the train stage registers a new model version in MLflow;
  4. the champion gate: the version the pipeline left (paths.run_record)
     takes the `champion` alias only when its test loss beats the champion's by
     at least params retrain.margin; the first version becomes champion.
     The decision and both figures go to a markdown artifact `champion` and
     to paths.champion (JSON).
"""
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_runner import failure, run_logged, stage_env, workspace_lock
from flows.pipeline import pipeline
from vae_pipeline import tracking
from vae_pipeline.files import ROOT, PipelineError, write_json
from vae_pipeline.params import load_params

ALIAS = "champion"
LOSS = "test_loss"          # the figure the gate compares (per sample, lower is better)


@task(cache_policy=NO_CACHE, name="recheck-data")
def recheck_data(project: str, lock_wait_seconds: float) -> dict:
    """Download again and check the checksums, through DVC so that dvc.lock stays the record."""
    logger = get_run_logger()
    root = Path(project)
    started = time.perf_counter()
    with workspace_lock(root, lock_wait_seconds, logger):
        code, lines = run_logged([sys.executable, "-m", "dvc", "repro", "--force", "--single-item",
                                  "download"], root, stage_env({}), logger)
    if code != 0:
        raise failure("re-checking the data sources", code, lines)
    return {"seconds": round(time.perf_counter() - started, 1)}


def set_seed(project: Path, seed: int) -> bool:
    """Write train.seed into params.yaml, keeping its comments; True if it changed."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(project / "params.yaml") as params:
        changed = params["train"]["seed"] != seed
        params["train"]["seed"] = seed
    return changed


def test_loss(client, run_id: str) -> float:
    """The run's last logged test loss."""
    metrics = client.get_run(run_id).data.metrics
    if LOSS not in metrics:
        raise PipelineError(f"MLflow run {run_id} has no '{LOSS}' metric")
    return metrics[LOSS]


def champion_gate(client, model_name: str, version: str, margin: float) -> dict:
    """Move the `champion` alias to `version` if it beats the champion by at least `margin`.

    Returns the decision: {"decision", "promoted", "model_name", "challenger": {version,
    run_id, test_loss}, "champion": {...} or None (the champion before the gate), "margin"}.
    """
    from mlflow.exceptions import MlflowException

    challenger = client.get_model_version(model_name, version)
    new = {"version": str(version), "run_id": challenger.run_id,
           "test_loss": test_loss(client, challenger.run_id)}
    try:
        current = client.get_model_version_by_alias(model_name, ALIAS)
        old = {"version": str(current.version), "run_id": current.run_id,
               "test_loss": test_loss(client, current.run_id)}
    except MlflowException:                 # no alias yet: the first version becomes champion
        old = None

    if old is None:
        promoted, decision = True, f"no champion yet: version {version} becomes champion"
    elif old["version"] == new["version"]:
        promoted, decision = False, f"version {version} is already the champion (no new model)"
    elif old["test_loss"] - new["test_loss"] >= margin and new["test_loss"] < old["test_loss"]:
        promoted = True
        decision = (f"version {version} beats champion version {old['version']} by "
                    f"{old['test_loss'] - new['test_loss']:.4g} >= margin {margin:g}: promoted")
    else:
        promoted = False
        decision = (f"version {version} does not beat champion version {old['version']} by the "
                    f"margin {margin:g} (difference {old['test_loss'] - new['test_loss']:.4g}): "
                    "champion kept")
    if promoted:
        client.set_registered_model_alias(model_name, ALIAS, str(version))
    return {"decision": decision, "promoted": promoted, "model_name": model_name,
            "challenger": new, "champion": old, "margin": margin}


def gate_markdown(result: dict) -> str:
    """The markdown of the `champion` artifact: the decision and both figures."""
    def row(who, entry):
        if entry is None:
            return f"| {who} | none | | |"
        return f"| {who} | {entry['version']} | {entry['test_loss']:.6g} | `{entry['run_id']}` |"

    return "\n".join([
        f"# Champion gate: `{result['model_name']}`", "", f"**{result['decision']}**", "",
        f"| | version | {LOSS} | MLflow run |", "| --- | --- | ---: | --- |",
        row("challenger", result["challenger"]), row("champion before", result["champion"]), "",
        f"Margin: {result['margin']:g} (the challenger's {LOSS} must be lower by at least this)", ""])


@flow(name="retrain")
def retrain(project: str | None = None, seed: int | None = None) -> dict:
    """Re-check the data, rerun what is stale (with `seed`, else params retrain.seed: a
    challenger on that seed), gate the champion.

    Returns the gate's decision (see champion_gate).
    """
    logger = get_run_logger()
    root = Path(project) if project else ROOT
    params = load_params(root / "params.yaml")          # bad params stop here
    recheck_data(str(root), params["prefect"]["lock_wait_seconds"])
    seed = seed if seed is not None else params["retrain"]["seed"]
    if seed is not None and set_seed(root, seed):
        logger.info("train.seed set to %d in params.yaml: the train stage is stale", seed)
    pipeline(project=str(root), run_tags={"retrain": "true"})

    params = load_params(root / "params.yaml")
    record = tracking.training_run(params, root)
    if record is None:
        raise PipelineError(f"{params['paths']['run_record']}: no MLflow run recorded for the model in "
                            f"{params['paths']['model_dir']}; retrain it (dvc repro --force train)")
    # The stages ran in `root`: its own default store, which is this checkout's only when root is ROOT.
    params["mlflow"]["tracking_uri"] = tracking.tracking_uri(params, root)
    client = tracking.connect(params)
    result = champion_gate(client, record["model_name"], record["model_version"], params["retrain"]["margin"])
    logger.info(result["decision"])
    write_json(root / params["paths"]["champion"], result)
    create_markdown_artifact(key=ALIAS, markdown=gate_markdown(result),
                             description="The champion gate: decision, challenger and champion test loss")
    return result


def main() -> None:
    """`python -m flows.retrain [SEED]`: one retrain now, on Prefect's local API."""
    from flows.local_api import run_on_local_api

    seed = int(sys.argv[1]) if len(sys.argv) > 1 else None
    run_on_local_api(lambda: print(retrain(seed=seed)["decision"]))


if __name__ == "__main__":
    main()
