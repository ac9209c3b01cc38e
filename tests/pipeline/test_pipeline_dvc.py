"""End to end: `dvc repro` on the tiny config. The first build is the run's built_project (tests/conftest.py);
then, in a copy of it, again, forced, and what a change makes stale."""
import json
import re

import pandas as pd
import pytest
import yaml

from tests.conftest import (
    copy_project,
    downstream,
    dvc_stages,
    first_build_output,
    run_in,
    set_params,
    stages_run,
    stages_with_param,
)
from vae_pipeline.params import load_params
from vae_pipeline.tracking.store import training_run

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_every_stage_then_nothing(built_project, tmp_path):
    assert stages_run(first_build_output(built_project)) == sorted(dvc_stages(built_project))
    project = copy_project(built_project, tmp_path)

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

    # A rerun that changes nothing changes nothing: `dvc repro --force`, same params, same machine,
    # gives the same dvc.lock and every output byte for byte, in a new MLflow run.
    lock, paths = yaml.safe_load((project / "dvc.lock").read_text()), load_params(project / "params.yaml").paths
    files, run_id = output_bytes(project, lock), training_run(paths, project)["run_id"]
    forced = run_in(project, "dvc", "repro", "--force")
    assert stages_run(forced.stdout) == sorted(dvc_stages(project))   # every stage really ran again
    forced_lock = yaml.safe_load((project / "dvc.lock").read_text())
    forced_files = output_bytes(project, forced_lock)
    assert forced_files.keys() == files.keys()
    assert [path for path in files if files[path] != forced_files[path]] == []
    assert forced_lock == lock
    assert training_run(paths, project)["run_id"] != run_id   # (outside the outputs)

    evaluation = json.loads((project / "reports/metrics/eval.json").read_text())
    eval_detail = json.loads((project / "reports/metrics/eval_detail.json").read_text())
    assert evaluation["iwae_nll"] <= eval_detail["neg_elbo"] and 0 <= evaluation["knn_accuracy"] <= 1

    # Changing beta makes the stages that read it stale, train first: DVC reruns them and what is made
    # from them (a real rerun after a train param change: test_explorer.py's 2-D latent space).
    set_params(project, train={"beta": 4.0})
    stale = sorted(re.findall(r"^(\w+):", run_in(project, "dvc", "status").stdout, re.M))
    assert "train" in stale and stale == stages_with_param("train.beta", project)
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
