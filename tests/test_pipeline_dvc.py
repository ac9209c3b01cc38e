"""End to end: `dvc repro` in a fresh copy of the project on the tiny config."""
import json

import pandas as pd
import pytest
import yaml

from tests.conftest import run_in

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_every_stage_then_nothing(project):
    first = run_in(project, "dvc", "repro")
    for stage in ("download", "train", "embed", "latent_map", "report", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout

    metrics = json.loads((project / "reports/metrics/train.json").read_text())
    assert metrics["epochs"] == 2 and 0 < metrics["test_loss"] < 600
    history = pd.read_csv(project / "reports/metrics/train.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["train_loss"].iloc[1] < history["train_loss"].iloc[0]
    train = pd.read_parquet(project / "data/embeddings/train.parquet")
    assert train.shape == (2000, 4 + 4 + 1) and train["label"].between(0, 9).all()
    assert len(pd.read_parquet(project / "data/embeddings/test.parquet")) == 500
    assert (project / "models/vae.safetensors").exists()

    second = run_in(project, "dvc", "repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
    assert run_in(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."

    evaluation = json.loads((project / "reports/metrics/eval.json").read_text())
    assert evaluation["iwae_nll"] <= evaluation["neg_elbo"] and 0 <= evaluation["knn_accuracy"] <= 1

    # Changing beta makes the model and everything made from it stale; download stays.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["beta"] = 4.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run_in(project, "dvc", "repro")
    ran = sorted(line.split("'")[1] for line in third.stdout.splitlines() if line.startswith("Running stage"))
    assert ran == ["embed", "evaluate", "latent_map", "report", "train"]


def test_same_params_and_seed_give_the_same_metrics(project):
    run_in(project, "dvc", "repro", "train")
    first = (project / "reports/metrics/train.json").read_text()
    run_in(project, "dvc", "repro", "--force", "--single-item", "train")
    second = json.loads((project / "reports/metrics/train.json").read_text())
    first = json.loads(first)
    for key in ("train_loss", "test_loss", "test_kl", "test_loss_mu"):
        assert first[key] == second[key]
