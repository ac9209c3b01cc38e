"""Pages of MLflow's UI: where a person looks at the runs (the flows' links, `make mlflow-ui`)."""
import urllib.parse


def runs_page(client, experiment_name: str) -> str:
    """The page of MLflow's UI, relative to the UI's address, listing the experiment's training runs.

    MLflow 3.17's UI opens an experiment in its GenAI view (traces, judges) unless the
    browser has chosen "Model training" in the sidebar: it does not read the experiment's
    kind tag (tried in headless Chromium). The `workflowType` query opens the runs.
    """
    experiment = client.get_experiment_by_name(experiment_name)
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
