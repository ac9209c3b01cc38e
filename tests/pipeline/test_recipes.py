"""A recipe (flows/recipe.py) run for real on the tiny project: `python -m flows.recipe NAME train` is the
DVC experiment recipe-NAME, its params set by DVC (params.yaml is not edited by hand), its training an
MLflow run with the recipe's values; a bad recipe runs nothing."""
import json

import mlflow
import pytest
import yaml

from flows.recipe import EXPERIMENT_PREFIX
from tests.conftest import run_in

pytestmark = pytest.mark.slow

# A tiny recipe of the options the paper's recipes use: short, on the tiny data set.
TINY = {"data": {"binarize": "dynamic"},
        "train": {"hidden_dims": [16, 16], "activation": "tanh", "lr_schedule": "burda", "lr": 0.002,
                  "max_minutes": None, "validation_split": 0.1, "patience": 3}}


def test_a_recipe_is_its_own_dvc_experiment_and_mlflow_run(project):
    (project / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (project / "recipes" / "typo.yaml").write_text("train:\n  activaton: tanh\n")
    run_in(project, "git", "add", "recipes")
    run_in(project, "git", "commit", "-qm", "tiny recipes")
    committed = (project / "params.yaml").read_text()

    bad = run_in(project, "python", "-m", "flows.recipe", "typo", "train", check=False)
    assert bad.returncode == 2 and "recipes/typo.yaml: invalid params" in bad.stderr
    assert "unknown key 'train.activaton'" in bad.stderr and "Running stage" not in bad.stdout
    assert run_in(project, "dvc", "exp", "list", "--name-only").stdout.split() == []

    ran = run_in(project, "python", "-m", "flows.recipe", "tiny", "train")
    assert "Running stage 'train'" in ran.stdout
    assert f"{EXPERIMENT_PREFIX}tiny" in run_in(project, "dvc", "exp", "list", "--name-only").stdout.split()
    # DVC set the recipe's values in the workspace, every other key as committed.
    params = yaml.safe_load((project / "params.yaml").read_text())
    expected = yaml.safe_load(committed)
    for section, values in TINY.items():
        expected[section].update(values)
    assert params == expected
    assert json.loads((project / "models" / "vae.json").read_text())["activation"] == "tanh"

    client = mlflow.MlflowClient(f"sqlite:///{project / params['paths']['tracking_store']}")
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment_name"])
    [run] = client.search_runs([experiment.experiment_id])
    assert {key: run.data.params[key] for key in ("train.activation", "train.lr_schedule", "data.binarize")} == \
        {"train.activation": "tanh", "train.lr_schedule": "burda", "data.binarize": "dynamic"}
    assert "validation_loss" in run.data.metrics and "kept_epoch" in run.data.metrics
