"""The `vae-pipeline` flow: every DVC stage of dvc.yaml as a Prefect task, run through DVC.

`make run` (`python -m flows.pipeline`) runs it on Prefect's local API. Each task
runs `dvc repro --single-item <stage>` in the project, so DVC still decides what
is stale: an unchanged stage is skipped and dvc.lock stays the record of what
produced what. dvc.yaml stays the one definition of the DAG: the stage list is
read from it at run time, so a stage added there gets its task without a change
here.

  - each stage starts as soon as the stages it reads from are done, so the
    independent arms of the DAG run at once (DVC runs them one at a time): after
    embed, the latent map and the evaluation; a stage's output goes to the
    Prefect log; a failed stage stops what is downstream of it, the other arm
    ends whole;
  - params.yaml is checked before any stage runs: bad params fail at once;
  - only the download retries (a mirror may be down for a moment); any other
    failure (a NaN loss, exit code 2 from the stage) fails the run at once;
  - one pipeline per workspace: a second one waits for the first (with a
    message), then fails clearly, instead of tripping over DVC's lock midway;
  - then the champion gate (flows/gate.py): the first version registered becomes
    the model in use (`champion`), a later one only when it beats it; the retrain
    flow runs the pipeline without it and gates on its own;
  - at the end, a markdown artifact `vae-pipeline`: what ran, the metrics
    (the DVC metrics files), the report's path and the MLflow run; and link
    artifacts to the MLflow run and the report, and a table of the metrics
    (flows/artifacts.py).

The DVC calls, the stage order and the workspace lock are flows/dvc_runner.py's
(the retrain and sweep flows use them too).
"""
import importlib
import threading
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.artifacts import metric_rows, publish
from flows.dvc_runner import mlflow_run_id, run_stages, workspace_lock
from flows.gate import gate_champion
from vae_pipeline.files import ROOT
from vae_pipeline.settings import Settings, load_settings
from vae_pipeline.tracking import elsewhere


def summary(project: Path, params: Settings, results: list[dict]) -> str:
    """The markdown of the run's artifact."""
    lines = [f"# vae-pipeline in `{project}`", "", "| stage | result | seconds |", "| --- | --- | ---: |"]
    outcome = {(True, False): "ran", (False, True): "restored from DVC's run cache",
               (False, False): "skipped: up to date"}
    lines += [f"| {r['stage']} | {outcome[r['ran'], r['restored']]} | {r['seconds']} |" for r in results]
    lines += ["", "## Metrics", "", "| metric | value |", "| --- | ---: |"]
    lines += [f"| {row['metric']} | {row['value']:.6g} |" for row in metric_rows(project)]
    report = project / params.paths.report
    run_id = mlflow_run_id(project, params.paths)
    lines += ["", f"**Report:** `{report}`" + ("" if report.exists() else " (not built)"),
              "", f"**MLflow run:** `{run_id}`" if run_id else "**MLflow run:** not recorded"]
    return "\n".join(lines) + "\n"


def import_in_background(module: str) -> threading.Thread:
    """Import `module` in a thread: the flow process only waits while its stages run."""
    thread = threading.Thread(target=importlib.import_module, args=(module,), daemon=True)
    thread.start()
    return thread


@flow(name="vae-pipeline")
def pipeline(project: str | None = None, run_tags: dict | None = None, gate: bool = True) -> list[dict]:
    """Run dvc.yaml's stages in `project` (default: this project), one task each, then (with `gate`) the
    champion gate.

    `run_tags` are added to the MLflow runs the stages start (with this flow run's id).
    Returns, per stage in the order the stages ended: {"stage", "ran", "restored" (from DVC's run cache), "seconds",
    "started", "ended" (epoch seconds)}.
    """
    logger = get_run_logger()
    root = Path(project) if project else ROOT
    params = load_settings(root / "params.yaml")     # bad params stop here, before any stage
    settings = params.prefect
    tags = {**(run_tags or {}), "prefect_flow_run_id": str(flow_run.id),
            "prefect_flow_run_name": flow_run.name}
    # Only the download talks to the network; params were checked above, so what is left to fail
    # there is a source, which may be back a little later.
    # The champion gate at the end reads the MLflow store: importing MLflow there would add 2-3 s
    # after the last stage; imported while the stages run, it costs no wall time.
    mlflow_imported = import_in_background("mlflow.store.tracking.sqlalchemy_store") if gate else None
    retry = {"download": {"retries": settings.download_retries,
                          "retry_delay_seconds": settings.retry_delay_seconds}}
    with workspace_lock(root, settings, logger):
        results = run_stages(root, tags, retry)
    ran = [r["stage"] for r in results if r["ran"] or r["restored"]]
    if not ran and (advice := elsewhere.advice(params, root)):
        # Up to date, but the model's run is in another store: nothing reaches the one now set.
        logger.warning("stages run or restored: none, every stage is up to date, so nothing was logged; %s",
                       advice)
    else:
        logger.info("stages run or restored: %s", ", ".join(ran) if ran else "none, every stage is up to date")
    if gate:
        mlflow_imported.join()       # no second import of it from this thread meanwhile
        gate_champion(str(root))
    create_markdown_artifact(key="vae-pipeline", markdown=summary(root, params, results),
                             description="What ran, the metrics, the report and the MLflow run")
    publish(root, params)
    return results


def main() -> None:
    from flows.local_api import run_on_local_api

    run_on_local_api(pipeline)


if __name__ == "__main__":
    main()
