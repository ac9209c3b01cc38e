"""The champion gate as a flow step: which registered version is in use after a pipeline ran.

Both flows end with it: `make run` (the `vae-pipeline` flow) and the `retrain` flow. The
version the pipeline left (the run record, paths.run_record) takes the `champion` alias
when the policy says so (vae_pipeline/tracking/champion.py): the first version registered
becomes champion, a later one only when it beats the champion. Nothing else moves the
alias: a `dvc repro`, a `dvc exp run` or a sweep point registers versions, never serves one.
The decision goes to the log, to paths.champion (JSON) and to the flow run's markdown
artifact `champion`.
"""
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from vae_pipeline.files import write_json
from vae_pipeline.settings import load_settings
from vae_pipeline.tracking import elsewhere, store
from vae_pipeline.tracking.champion import LIKE_FOR_LIKE, champion_gate
from vae_pipeline.tracking.registry import CHAMPION_ALIAS


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


@task(cache_policy=NO_CACHE, name="champion-gate", task_run_name="champion-gate")
def gate_champion(project: str) -> dict | None:
    """Gate the version the pipeline left in `project`; return the decision (champion_gate's), or None
    (with a warning) when no registered version is recorded for its model: one pulled from a DVC remote,
    say, whose run record stayed in the checkout that trained it."""
    root = Path(project)
    params = load_settings(root / "params.yaml")
    record = store.training_run(params.paths, root)
    if record is None or not record.get("model_version"):
        get_run_logger().warning(
            "%s: no registered version recorded for the model in %s (trained in another checkout, or not "
            "evaluated): no champion gate, the champion stays as it is", params.paths.run_record,
            params.paths.model_dir)
        return None
    if elsewhere.logged_elsewhere(params, root):    # its version is another store's (make run said so)
        get_run_logger().warning("%s: the model's MLflow run is in %s, not in the store now set: no champion "
                                 "gate, the champion stays as it is", params.paths.run_record,
                                 record["tracking_uri"])
        return None
    # The stages ran in `root`: its own default store, which is this checkout's only when root is ROOT.
    mlflow = params.mlflow.model_copy(update={"tracking_uri": store.tracking_uri(params.mlflow, params.paths, root)})
    settings = params.retrain
    result = champion_gate(store.connect(mlflow, params.paths), record["model_name"], record["model_version"],
                           settings.margin, settings.gate_metric)
    get_run_logger().info(result["decision"])
    write_json(root / params.paths.champion, result)
    create_markdown_artifact(key=CHAMPION_ALIAS, markdown=gate_markdown(result),
                             description="The champion gate: decision, challenger and champion figures")
    return result
