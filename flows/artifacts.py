"""The Prefect artifacts a flow run leaves: where to look next, and the figures.

  - link `mlflow-run`: the MLflow run that trained the current model: its page in
    MLflow's UI when tracking is a server, else its `runs:/<id>` URI (an embedded
    SQLite store has no address; `make mlflow-ui` serves it);
  - link `report`: the report (params paths.report) as a file:// URL;
  - table `metrics`: the final figures of the DVC metrics files (dvc.yaml `metrics`), one row each.
The pipeline flow and the retrain flow both publish them (the retrain's pipeline is a
subflow: its artifacts are its own flow run's).
"""
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from flows.dvc_runner import read_metrics
from vae_pipeline.settings import Settings
from vae_pipeline.tracking.store import training_run
from vae_pipeline.tracking.ui import run_link


def metric_rows(project: Path) -> list[dict]:
    """Every number of the metrics files: [{"metric": "<file>.<key>", "value": number}, ...]."""
    return [{"metric": f"{name}.{key}", "value": value}
            for name, values in read_metrics(project).items() for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


def publish(project: Path, params: Settings) -> None:
    """Create the flow run's link and table artifacts (see the module docstring)."""
    logger = get_run_logger()
    record = training_run(params.paths, project)
    if record is None:
        logger.warning("no MLflow run recorded for the model: no `mlflow-run` link")
    else:
        create_link_artifact(key="mlflow-run", link=run_link(record["tracking_uri"], record["experiment_id"],
                                                             record["run_id"]),
                             link_text=f"MLflow run {record['run_id']} ({record.get('model_uri', 'not registered')})",
                             description="The MLflow run that trained the current model")
    report = project / params.paths.report
    if report.exists():
        create_link_artifact(key="report", link=report.resolve().as_uri(), link_text=str(report),
                             description="The report: one self-contained page")
    create_table_artifact(key="metrics", table=metric_rows(project),
                          description="The final figures of the metrics files")
