"""A sweep in MLflow: a parent run "sweep <name>", each point's training run its child.

flows/sweep.py opens the parent before the points, and when they are done marks FAILED every
child whose worker died mid-point (Dask ran the point again elsewhere), then closes the parent
with the counts and the sweep's page.
"""
import json
from pathlib import Path

from vae_pipeline.params import Pipeline
from vae_pipeline.tracking import store


def start_parent_run(client, params: Pipeline, name: str, sweep, commit: str, tags: dict) -> str:
    """The sweep's MLflow run "sweep <name>" in the experiment of `params` (its mlflow and paths sections),
    its params the `sweep` section's: every point's training run is its child."""
    from mlflow.entities import Param, RunTag

    run = client.create_run(store.experiment_id(client, params.mlflow, params.paths), run_name=f"sweep {name}")
    grid_params = {f"sweep.{key}": json.dumps(value) if isinstance(value, list) else str(value)
                   for key, value in sweep.model_dump().items()}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in grid_params.items()],
                     tags=[RunTag(k, v) for k, v in {**tags, "git.commit": commit,
                                                     "mlflow.source.git.commit": commit,
                                                     "mlflow.source.name": "flows.sweep"}.items()])
    return run.info.run_id


def close_dead_attempts(client, parent_id: str, results: list[dict], logger) -> list[str]:
    """Mark FAILED every child run of the parent that is still running: an attempt whose worker died
    (its point ran again elsewhere, or failed). Returns their run ids."""
    from mlflow.entities import RunStatus

    done = {r["mlflow_run_id"] for r in results}
    children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000)
    dead = [run for run in children if run.info.run_id not in done
            and run.info.status in (RunStatus.to_string(RunStatus.RUNNING), RunStatus.to_string(RunStatus.SCHEDULED))]
    for run in dead:
        point = run.data.tags.get("sweep.point", "?")
        logger.warning("MLflow run %s (point %s, on %s pid %s) never finished: its worker died; marked FAILED",
                       run.info.run_id, point, run.data.tags.get("sweep.attempt.host"),
                       run.data.tags.get("sweep.attempt.pid"))
        client.set_tag(run.info.run_id, "sweep.attempt.outcome", "worker lost; the point ran again")
        client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in dead]


def finish_parent_run(client, parent_id: str, results: list[dict], failed: list[str], dead: list[str],
                      files: list[Path]) -> None:
    """One entry per point on the parent: the counts, once, and the sweep's page and table."""
    store.log_metrics(client, parent_id, {"points_done": len(results), "points_failed": len(failed),
                                             "attempts_lost": len(dead)})
    for path in files:
        client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id, status="FAILED" if failed else "FINISHED")
