"""Command compare: the training runs of the MLflow experiment, side by side.

`python -m commands.compare` (or `make compare`) writes paths.compare_report, one
self-contained HTML page (images inline as base64, no scripts, no links out;
its template is vae_pipeline/pages/runs/templates/compare.html.j2):
  - the params that differ between the runs, and every run's final metrics;
  - loss, reconstruction and KL per epoch, the runs overlaid (test solid, train dashed);
  - 64 samples of the prior N(0, I) decoded by each run's model, the same z for all.
It reads only MLflow (the newest mlflow.compare_max_runs finished runs). It is a
command, not a DVC stage, so `dvc status` never depends on what MLflow holds.
"""
import base64
import io
import logging
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

from vae_pipeline import pages
from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.files import atomic_path, project_path
from vae_pipeline.ml.data import IMAGE_SIZE
from vae_pipeline.ml.model import load_model
from vae_pipeline.settings import Settings, load_settings
from vae_pipeline.tracking import elsewhere, store

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

log = logging.getLogger("compare")
CURVES = [("loss", "Loss per sample"), ("recon", "Reconstruction"), ("kl", "KL")]
GRID = 8  # prior samples: GRID x GRID images per run


def png_base64(figure_or_array) -> str:
    buffer = io.BytesIO()
    if isinstance(figure_or_array, np.ndarray):
        Image.fromarray(figure_or_array).save(buffer, format="PNG")
    else:
        figure_or_array.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure_or_array)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def finished_runs(client, params: Settings) -> list:
    name = params.mlflow.experiment_name
    experiment = client.get_experiment_by_name(name)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=params.mlflow.compare_max_runs)
    if not runs:
        raise PipelineError(f"MLflow experiment '{name}' at {redact_uri(client.tracking_uri)} has no "
                            f"finished run; {elsewhere.advice(params) or '`make run` logs one'}")
    return runs[::-1]


def prior_grid(client, run_id: str) -> np.ndarray:
    """GRID x GRID prior samples decoded by the run's model, as one uint8 image (2x upscaled)."""
    with tempfile.TemporaryDirectory() as tmp:
        model, config = load_model(Path(client.download_artifacts(run_id, "model", tmp)))
    z = torch.randn(GRID * GRID, config["latent_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = model.decode(z).reshape(GRID, GRID, IMAGE_SIZE, IMAGE_SIZE).numpy()
    grid = images.transpose(0, 2, 1, 3).reshape(GRID * IMAGE_SIZE, GRID * IMAGE_SIZE)
    return (np.kron(grid, np.ones((2, 2))) * 255).round().astype(np.uint8)


def curves_figure(client, runs: list):
    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for run in runs:
        for ax, (name, title) in zip(axes, CURVES):
            for split, style in (("test", "-"), ("train", "--")):
                points = sorted((m.step, m.value) for m in client.get_metric_history(run["id"], f"{split}_{name}"))
                if points:
                    ax.plot(*zip(*points), style, color=run["color"],
                            label=f"{run['label']} {split}" if name == "loss" else None)
            ax.set(title=title, xlabel="epoch")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def run(params: Settings) -> Path:
    elsewhere.require_store(params)         # not an empty mlflow.db made by reading
    client = store.connect(params.mlflow, params.paths)
    colors = plt.get_cmap("tab10").colors
    runs = []
    for i, found in enumerate(finished_runs(client, params)):
        run_id = found.info.run_id
        runs.append({
            "id": run_id,
            "label": f"{found.info.run_name} ({run_id[:8]})",
            "color": matplotlib.colors.to_hex(colors[i % len(colors)]),
            "params": found.data.params,
            "metrics": {k: f"{v:.4g}" for k, v in found.data.metrics.items()},
            "grid": png_base64(prior_grid(client, run_id)),
        })
    keys = sorted(set().union(*(r["params"] for r in runs)))
    differing = [k for k in keys if len({r["params"].get(k) for r in runs}) > 1]
    html = pages.environment("vae_pipeline.pages.runs").get_template("compare.html.j2").render(
        experiment=params.mlflow.experiment_name, store=redact_uri(client.tracking_uri),
        runs=runs, differing=differing, param_rows=differing if len(runs) > 1 else keys,
        metric_rows=sorted(set().union(*(r["metrics"] for r in runs))),
        curves=png_base64(curves_figure(client, runs)), grid=GRID)
    path = project_path(params.paths.compare_report)
    with atomic_path(path) as tmp:
        tmp.write_text(html)
    log.info("%s: %d runs compared", path, len(runs))
    return path


if __name__ == "__main__":
    from vae_pipeline.errors import main

    main(lambda: run(load_settings()))
