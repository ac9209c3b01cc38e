"""The champion policy: which registered version of the decoder serves (the `champion` alias).

After a retrain (flows/retrain.py), the version the pipeline left takes the alias only when
the evaluate stage's figure named in params retrain.gate_metric (the beta = 1 negative ELBO
or the IWAE estimate: the same measure whatever train.beta was) beats the champion's by at
least retrain.margin, and only between models of the same data files, pixel treatment
(data.binarize) and likelihood; the first version becomes champion. (The training's
test_loss weighs the KL by train.beta: a smaller beta would win by construction.)
"""
from vae_pipeline.errors import PipelineError
from vae_pipeline.tracking.registry import CHAMPION_ALIAS
from vae_pipeline.tracking.store import DATA_SHA256_TAG, EVAL_METRIC_PREFIX

# Two models are compared only when their runs agree on these params: the same data set, the same
# pixel treatment and the same likelihood, else their figures are nats of different things.
LIKE_FOR_LIKE = ("data.dataset", "data.binarize", "train.likelihood")


def metric_key(metric: str) -> str:
    """The run metric of the evaluate stage's figure `metric` (params retrain.gate_metric)."""
    return EVAL_METRIC_PREFIX + metric


def entry(client, model_name: str, version: str, metric: str) -> dict:
    """What the gate knows of a version: its run, its figure (None when the run has none),
    and what must match to compare it (LIKE_FOR_LIKE, the data files' checksums, and for
    the IWAE estimate its number of draws)."""
    run = client.get_run(client.get_model_version(model_name, version).run_id)
    alike = {key: run.data.params.get(key) for key in LIKE_FOR_LIKE}
    alike |= {key: value for key, value in run.data.tags.items() if key.startswith(DATA_SHA256_TAG)}
    if metric == "iwae_nll":
        alike["evaluate.iwae_samples"] = run.data.metrics.get(metric_key("iwae_samples"))
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
        old = entry(client, model_name, client.get_model_version_by_alias(model_name, CHAMPION_ALIAS).version,
                    metric)
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
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, str(version))
    return {"decision": decision, "promoted": promoted, "model_name": model_name, "metric": metric,
            "margin": margin, "challenger": new, "champion": old}
