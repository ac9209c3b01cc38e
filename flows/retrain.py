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
  3. runs the `vae-pipeline` flow (flows/pipeline.py) without its own gate: DVC
     reruns only what is stale, and the evaluate stage registers the new model's
     version in MLflow;
  4. the champion gate (flows/gate.py; vae_pipeline/tracking/champion.py, the policy): the
     version the pipeline left (paths.run_record) takes the `champion` alias only
     when it beats the champion on params retrain.gate_metric by retrain.margin,
     the two models alike. The decision and both figures go to a markdown
     artifact `champion`, to paths.champion (JSON), and the flow run carries the
     pipeline's links and metrics table (flows/artifacts.py).
"""
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish
from flows.dvc_runner import failure, run_logged, stage_env, workspace_lock
from flows.gate import gate_champion
from flows.pipeline import pipeline
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.settings import Prefect, load_settings

# The description of the flow's deployments: `python -m flows.schedule` and `make deploy` (prefect.yaml
# names none) take it from the flow.
DESCRIPTION = "Re-check the data, rerun what DVC finds stale, gate the champion alias"


@task(cache_policy=NO_CACHE, name="recheck-data")
def recheck_data(project: str, settings: Prefect) -> dict:
    """Download again and check the checksums, through DVC so that dvc.lock stays the record.
    `settings`: params.yaml's `prefect` section (the workspace lock)."""
    logger = get_run_logger()
    root = Path(project)
    started = time.perf_counter()
    with workspace_lock(root, settings, logger):
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


@flow(name="retrain", description=DESCRIPTION)
def retrain(project: str | None = None, seed: int | None = None) -> dict:
    """Re-check the data, rerun what is stale (with `seed`, else params retrain.seed: a
    challenger on that seed), gate the champion.

    Returns the gate's decision (see champion_gate).
    """
    logger = get_run_logger()
    root = Path(project) if project else ROOT
    params = load_settings(root / "params.yaml")          # bad params stop here
    recheck_data(str(root), params.prefect)
    seed = seed if seed is not None else params.retrain.seed
    if seed is not None and set_seed(root, seed):
        logger.info("train.seed set to %d in params.yaml: the train stage is stale", seed)
    pipeline(project=str(root), run_tags={"retrain": "true"}, gate=False)
    result = gate_champion(str(root))
    params = load_settings(root / "params.yaml")
    if result is None:
        raise PipelineError(f"{params.paths.run_record}: no registered version recorded for the model in "
                            f"{params.paths.model_dir}; retrain it (dvc repro --force train)")
    publish(root, params)
    return result


def main() -> None:
    """`python -m flows.retrain [SEED]`: one retrain now, on Prefect's local API."""
    from flows.local_api import run_on_local_api

    args = sys.argv[1:]
    if len(args) > 1 or args and not args[0].isdigit():
        print("usage: python -m flows.retrain [SEED]   (SEED: an integer >= 0)", file=sys.stderr)
        sys.exit(2)
    run_on_local_api(lambda: print(retrain(seed=int(args[0]) if args else None)["decision"]))


if __name__ == "__main__":
    main()
