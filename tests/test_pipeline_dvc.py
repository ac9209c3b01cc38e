"""End to end: `dvc repro` in a fresh copy of the project on the tiny config."""
import json

import pandas as pd
import pytest
import yaml

from tests.conftest import downstream, dvc_stages, run_in, set_params, stages_run
from vae_pipeline.params import load_params
from vae_pipeline.tracking import training_run

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_every_stage_then_nothing(project):
    first = run_in(project, "dvc", "repro")
    assert stages_run(first.stdout) == sorted(dvc_stages(project))

    metrics = json.loads((project / "reports/metrics/train.json").read_text())
    detail = json.loads((project / "reports/metrics/train_detail.json").read_text())
    assert detail["epochs"] == 2 and 0 < detail["test_loss"] < 600 and 0 < metrics["test_kl"] < detail["test_loss"]
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
    eval_detail = json.loads((project / "reports/metrics/eval_detail.json").read_text())
    assert evaluation["iwae_nll"] <= eval_detail["neg_elbo"] and 0 <= evaluation["knn_accuracy"] <= 1

    # Changing beta makes the model and everything made from it stale; download stays.
    set_params(project, train={"beta": 4.0})
    third = run_in(project, "dvc", "repro")
    assert stages_run(third.stdout) == downstream("train", project)
    assert "download" not in downstream("train", project)


def output_bytes(project, lock: dict) -> dict:
    """Every file of every output dvc.lock records (outs, metrics, plots): {path: bytes}."""
    files = {}
    for name, entry in lock["stages"].items():
        for out in entry.get("outs", []):
            path = project / out["path"]
            found = [f for f in (sorted(path.rglob("*")) if path.is_dir() else [path]) if f.is_file()]
            assert found, f"stage {name}: output {out['path']} holds no file"
            files |= {str(f.relative_to(project)): f.read_bytes() for f in found}
    return files


def test_a_forced_rerun_changes_nothing(project):
    """`dvc repro --force` twice, same params, same machine: the same dvc.lock, every output byte for byte."""
    runs = []
    for _ in range(2):
        forced = run_in(project, "dvc", "repro", "--force")
        assert stages_run(forced.stdout) == sorted(dvc_stages(project))   # every stage really ran again
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        record = training_run(load_params(project / "params.yaml"), project)
        runs.append((lock, output_bytes(project, lock), record["run_id"]))
    (first_lock, first_files, first_run), (second_lock, second_files, second_run) = runs
    assert first_files.keys() == second_files.keys()
    assert [path for path in first_files if first_files[path] != second_files[path]] == []
    assert first_lock == second_lock
    # Each training is a new MLflow run: its id is recorded outside the outputs.
    assert first_run != second_run
