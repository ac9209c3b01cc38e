"""data.dataset: fashion-mnist through every stage to the report, on a tiny fixture, offline."""
import json

import pytest

from tests.conftest import copy_project, dvc_stages, first_build_output, run_in, stages_run
from vae_pipeline.ml.data import DATASETS

pytestmark = pytest.mark.slow


def test_fashion_mnist_runs_through_every_stage_to_the_report(built_fashion, tmp_path):
    # The tiny fixture stands in for the real files: a file:// source and its checksums (tiny_params).
    # built_fashion: data.dataset fashion-mnist, evaluate.iwae_samples 20, latent_map.trustworthiness_samples 300.
    project = built_fashion
    assert stages_run(first_build_output(project)) == sorted(dvc_stages(project))
    assert sorted(p.name for p in (project / "data/raw/fashion-mnist").iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    assert not (project / "data/raw/mnist").exists()

    metrics = json.loads((project / "reports/metrics/eval.json").read_text())
    metrics |= json.loads((project / "reports/metrics/eval_detail.json").read_text())
    assert metrics["dataset"] == "fashion-mnist" and metrics["test_images"] == 500
    assert metrics["iwae_nll"] <= metrics["neg_elbo"]
    assert abs(metrics["neg_elbo"] - metrics["recon"] - metrics["kl"]) < 1e-3
    assert sorted(metrics["knn_accuracy_per_class"]) == sorted(DATASETS["fashion-mnist"]["classes"])
    # The fixture's classes are distinct blob patterns: the latent space separates them.
    assert metrics["knn_accuracy"] > 0.5
    assert 0.5 < json.loads((project / "reports/metrics/map.json").read_text())["trustworthiness"] <= 1
    assert 0 <= metrics["active_units"] <= metrics["latent_dim"] == 4

    rows = json.loads((project / "reports/metrics/literature.json").read_text())
    assert [row["comparable"] for row in rows] == [False, False, False]
    assert "dataset: fashion-mnist here, mnist there" in rows[0]["differences"]
    # Nothing is stale (in a copy: the built project is only read).
    assert "Data and pipelines are up to date" in run_in(copy_project(project, tmp_path), "dvc", "repro").stdout

    # The report names the classes (map legend, kNN table, walk), never by digit.
    html = (project / "reports/index.html").read_text()
    for name in DATASETS["fashion-mnist"]["classes"]:
        assert html.count(name.replace("/", "\\/")) + html.count(name) >= 2, name
    assert "not comparable" in html and "dataset: fashion-mnist here, mnist there" in html
