"""`make mlflow-ui`: MLflow's UI over the project's embedded store (store.default_tracking_uri, in the
project's home: the main checkout of a worktree), its artifacts and the page of the training runs."""
from pathlib import Path

from vae_pipeline.files import ROOT, home_path
from vae_pipeline.params import load_params
from vae_pipeline.tracking.store import default_tracking_uri


def artifact_root(root: Path = ROOT) -> Path:
    """Where the embedded store keeps its artifacts: paths.tracking_artifacts in the project's home."""
    return home_path(load_params(Path(root) / "params.yaml")["paths"]["tracking_artifacts"], root)


def runs_page(root: Path = ROOT) -> str:
    """The page of MLflow's UI, relative to the UI's address, listing the experiment's training runs.

    MLflow 3.17's UI opens an experiment in its GenAI view (traces, judges) unless the browser
    has chosen "Model training" in the sidebar: it does not read the experiment's kind tag
    (tried in headless Chromium). The `workflowType` query opens the runs.
    """
    import mlflow  # imported here: importing mlflow takes seconds

    name = load_params(Path(root) / "params.yaml")["mlflow"]["experiment_name"]
    experiment = mlflow.MlflowClient(default_tracking_uri(root)).get_experiment_by_name(name)
    page = f"#/experiments/{experiment.experiment_id}/runs" if experiment else "#/experiments"
    return f"{page}?workflowType=machine_learning"
