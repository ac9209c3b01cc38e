"""The `retrain` flow: re-check the data, rerun what DVC finds stale, and gate the champion.

Served on a cron schedule by `python -m flows.schedule` (or put on a work pool with
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
     takes the `champion` alias only when the evaluate stage's figure named in
     params retrain.gate_metric (the beta = 1 negative ELBO or the IWAE estimate:
     the same measure whatever train.beta was) beats the champion's by at least
     retrain.margin, and only between models of the same data files, pixel
     treatment (data.binarize) and likelihood; the first version becomes
     champion. (The training's test_loss weighs the KL by train.beta: a smaller
     beta would win by construction.) The decision and both figures go to a
     markdown artifact `champion`, to paths.champion (JSON), and the flow run
     carries the pipeline's links and metrics table (flows/artifacts.py).
"""
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish
from flows.dvc_runner import failure, run_logged, stage_env, workspace_lock
from flows.pipeline import pipeline
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT, write_json
from vae_pipeline.settings import load_settings
from vae_pipeline.tracking import registry, store

ALIAS = registry.CHAMPION_ALIAS
# Two models are compared only when their runs agree on these params: the same data set, the same
# pixel treatment and the same likelihood, else their figures are nats of different things.
LIKE_FOR_LIKE = ("data.dataset", "data.binarize", "train.likelihood")


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


def metric_key(metric: str) -> str:
    """The run metric of the evaluate stage's figure `metric` (params retrain.gate_metric)."""
    return f"eval_{metric}"


def entry(client, model_name: str, version: str, metric: str) -> dict:
    """What the gate knows of a version: its run, its figure (None when the run has none),
    and what must match to compare it (LIKE_FOR_LIKE, the data files' checksums, and for
    the IWAE estimate its number of draws)."""
    run = client.get_run(client.get_model_version(model_name, version).run_id)
    alike = {key: run.data.params.get(key) for key in LIKE_FOR_LIKE}
    alike |= {key: value for key, value in run.data.tags.items() if key.startswith("data.sha256.")}
    if metric == "iwae_nll":
        alike["evaluate.iwae_samples"] = run.data.metrics.get("eval_iwae_samples")
    return {"version": str(version), "run_id": run.info.run_id,
            "value": run.data.metrics.get(metric_key(metric)), "alike": alike}


def champion_gate(client, model_name: str, version: str, margin: float, metric: str) -> dict:
    """Move the `champion` alias to `version` if its `metric` beats the champion's by at least
    `margin`, both models being alike (see entry); otherwise the champion stays.

    Returns the decision: {"decision", "promoted", "model_name", "metric", "margin",
    "challenger": {version, run_id, value, alike}, "champion": the same or None (before the gate)}.
    """
    from mlflow.exceptions import MlflowException

    new = entry(client, model_name, version, metric)
    if new["value"] is None:
        raise PipelineError(f"MLflow run {new['run_id']} (version {version} of {model_name}) has no "
                            f"'{metric_key(metric)}' metric: the evaluate stage attaches it; run the "
                            "whole pipeline (make run)")
    try:
        old = entry(client, model_name, client.get_model_version_by_alias(model_name, ALIAS).version, metric)
    except MlflowException:                 # no alias yet: the first version becomes champion
        old = None
    differences = [] if old is None else [f"{key} {new['alike'][key]} vs {old['alike'][key]}"
                                          for key in new["alike"] if new["alike"][key] != old["alike"].get(key)]

    promoted = False
    if old is None:
        promoted, decision = True, f"no champion yet: version {version} becomes champion"
    elif old["version"] == new["version"]:
        decision = f"version {version} is already the champion (no new model)"
    elif old["value"] is None:
        decision = (f"champion version {old['version']} has no '{metric_key(metric)}' (trained before the "
                    "evaluate stage attached it): nothing to compare with, champion kept; move the alias "
                    "by hand if the new version should serve (docs/serving.md)")
    elif differences:
        decision = (f"version {version} is not comparable with champion version {old['version']} ("
                    + "; ".join(differences) + "): champion kept")
    elif old["value"] - new["value"] >= margin:
        promoted = True
        decision = (f"version {version} beats champion version {old['version']} on {metric} by "
                    f"{old['value'] - new['value']:.4g} >= margin {margin:g}: promoted")
    else:
        decision = (f"version {version} does not beat champion version {old['version']} on {metric} by "
                    f"the margin {margin:g} (difference {old['value'] - new['value']:.4g}): champion kept")
    if promoted:
        client.set_registered_model_alias(model_name, ALIAS, str(version))
    return {"decision": decision, "promoted": promoted, "model_name": model_name, "metric": metric,
            "margin": margin, "challenger": new, "champion": old}


def gate_markdown(result: dict) -> str:
    """The markdown of the `champion` artifact: the decision, both figures and what was matched."""
    def row(who, entry):
        if entry is None:
            return f"| {who} | none |" + " |" * (2 + len(LIKE_FOR_LIKE))
        value = "none" if entry["value"] is None else f"{entry['value']:.6g}"
        return (f"| {who} | {entry['version']} | {value} | "
                + " | ".join(str(entry["alike"].get(key)) for key in LIKE_FOR_LIKE) + f" | `{entry['run_id']}` |")

    return "\n".join([
        f"# Champion gate: `{result['model_name']}`", "", f"**{result['decision']}**", "",
        f"| | version | {result['metric']} | " + " | ".join(LIKE_FOR_LIKE) + " | MLflow run |",
        "| --- | --- | ---: |" + " --- |" * (len(LIKE_FOR_LIKE) + 1),
        row("challenger", result["challenger"]), row("champion before", result["champion"]), "",
        f"Margin: {result['margin']:g} nats per test image (the challenger's {result['metric']} must be lower "
        "by at least this, the two models alike: same data files, pixel treatment and likelihood)", ""])


@flow(name="retrain")
def retrain(project: str | None = None, seed: int | None = None) -> dict:
    """Re-check the data, rerun what is stale (with `seed`, else params retrain.seed: a
    challenger on that seed), gate the champion.

    Returns the gate's decision (see champion_gate).
    """
    logger = get_run_logger()
    root = Path(project) if project else ROOT
    params = load_settings(root / "params.yaml")          # bad params stop here
    recheck_data(str(root), params["prefect"]["lock_wait_seconds"])
    seed = seed if seed is not None else params["retrain"]["seed"]
    if seed is not None and set_seed(root, seed):
        logger.info("train.seed set to %d in params.yaml: the train stage is stale", seed)
    pipeline(project=str(root), run_tags={"retrain": "true"})

    params = load_settings(root / "params.yaml")
    record = store.training_run(params, root)
    if record is None:
        raise PipelineError(f"{params['paths']['run_record']}: no MLflow run recorded for the model in "
                            f"{params['paths']['model_dir']}; retrain it (dvc repro --force train)")
    # The stages ran in `root`: its own default store, which is this checkout's only when root is ROOT.
    params["mlflow"]["tracking_uri"] = store.tracking_uri(params, root)
    client = store.connect(params)
    settings = params["retrain"]
    result = champion_gate(client, record["model_name"], record["model_version"], settings["margin"],
                           settings["gate_metric"])
    logger.info(result["decision"])
    write_json(root / params["paths"]["champion"], result)
    create_markdown_artifact(key=ALIAS, markdown=gate_markdown(result),
                             description="The champion gate: decision, challenger and champion figures")
    publish(root, params)
    return result


def main() -> None:
    """`python -m flows.retrain [SEED]`: one retrain now, on Prefect's local API."""
    from flows.local_api import run_on_local_api

    seed = int(sys.argv[1]) if len(sys.argv) > 1 else None
    run_on_local_api(lambda: print(retrain(seed=seed)["decision"]))


if __name__ == "__main__":
    main()
