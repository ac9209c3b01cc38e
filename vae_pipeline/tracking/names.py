"""Names in the tracking store that one module writes and another reads: each defined once.

The writers are stages (they log through tracking/), the readers the champion gate
(tracking/champion.py) and the docs (docs/mlflow.md lists them). A stage imports this small module
rather than the gate's, so a change to the gate reruns no stage.
"""
# The evaluate stage's figures on the training run and on its logged model: eval_<name>, e.g. eval_neg_elbo.
EVAL_METRIC_PREFIX = "eval_"
# A training run's tag per data file: data.sha256.<file name> = its SHA-256 (tracking/runs.py run_tags).
DATA_SHA256_TAG = "data.sha256."
