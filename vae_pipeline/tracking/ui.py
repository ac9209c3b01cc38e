"""Pages of MLflow's UI: where a person looks at the runs.

`make mlflow-ui` (commands/mlflow_ui.py): MLflow's UI over the project's embedded store
(store.default_tracking_uri, in the project's home: the main checkout of a worktree), its
artifacts and the page of the training runs; the flows' links to a run (flows/artifacts.py).
"""
import urllib.parse
from pathlib import Path

from vae_pipeline.files import ROOT, home_path
from vae_pipeline.params import load_params
from vae_pipeline.tracking.store import default_tracking_uri


def artifact_root(root: Path = ROOT) -> Path:
    """Where the embedded store keeps its artifacts: paths.tracking_artifacts in the project's home."""
    return home_path(load_params(Path(root) / "params.yaml").paths.tracking_artifacts, root)


def runs_page(root: Path = ROOT) -> str:
    """The page of MLflow's UI, relative to the UI's address, listing the experiment's training runs.

    MLflow 3.17's UI opens an experiment in its GenAI view (traces, judges) unless the browser
    has chosen "Model training" in the sidebar: it does not read the experiment's kind tag
    (tried in headless Chromium). The `workflowType` query opens the runs.
    """
    import mlflow  # imported here: importing mlflow takes seconds

    name = load_params(Path(root) / "params.yaml").mlflow.experiment_name
    experiment = mlflow.MlflowClient(default_tracking_uri(root)).get_experiment_by_name(name)
    page = f"#/experiments/{experiment.experiment_id}/runs" if experiment else "#/experiments"
    return f"{page}?workflowType=machine_learning"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where to see a run: its page in the UI of a tracking server, else its `runs:/<id>` URI (an
    embedded SQLite store has no address; `make mlflow-ui` serves it)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return f"runs:/{run_id}"
    # No credentials in a link at all: a browser would send a masked `user:***@` as a login.
    parts = urllib.parse.urlsplit(tracking_uri)
    base = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
