"""The sweep's page (reports/sweep.html), its data (reports/sweep.json) and its Prefect table.

One row per point: its params, its figures, the host that ran it. The picture is the rate
against the distortion, one line per latent size, drawn as inline SVG.
"""
import io
import time
from pathlib import Path

from vae_pipeline import pages
from vae_pipeline.files import atomic_path, write_json


def table_rows(results: list[dict]) -> list[dict]:
    """The Prefect table artifact: one row per point."""
    return [{"beta": r["beta"], "latent_dim": r["latent_dim"], "epochs": r["epochs"],
             "test_loss": r["metrics"]["train"]["test_loss"], "test_kl": r["metrics"]["train"]["test_kl"],
             "test_recon": r["metrics"]["train"]["test_recon"], "host": r["host"], "address": r["address"],
             "seconds": r["seconds"], "experiment": r["exp_name"], "mlflow_run_id": r["mlflow_run_id"]}
            for r in results]


def rate_distortion_svg(results: list[dict]) -> str:
    """KL (rate) against reconstruction loss (distortion), one line per latent size, points by beta."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for latent_dim in sorted({r["latent_dim"] for r in results}):
        runs = sorted((r for r in results if r["latent_dim"] == latent_dim), key=lambda r: r["beta"])
        kl = [r["metrics"]["train"]["test_kl"] for r in runs]
        recon = [r["metrics"]["train"]["test_recon"] for r in runs]
        ax.plot(kl, recon, "o-", label=f"latent {latent_dim}")
        for r, x, y in zip(runs, kl, recon):
            ax.annotate(f"β={r['beta']:g}, z={latent_dim}", (x, y), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    ax.set_xlabel("rate: KL(q(z|x) ‖ p(z)) per test image (nats)")
    ax.set_ylabel("distortion: reconstruction loss per test image")
    ax.set_title("Rate–distortion of the sweep (test set)")
    ax.grid(alpha=0.3)
    ax.legend()
    svg = io.StringIO()
    fig.savefig(svg, format="svg", bbox_inches="tight")
    return svg.getvalue()[svg.getvalue().index("<svg"):]     # drop the XML prologue: inline SVG


def write_report(project: Path, paths, epochs: int, name: str, results: list[dict], failed: list[str],
                 extra: dict | None = None) -> tuple[Path, Path]:
    """paths.sweep_results (every point's figures) and paths.sweep_report (one self-contained page, from
    vae_pipeline/pages/runs/templates/sweep.html.j2) of the config's Paths section; `epochs`: sweep.epochs."""
    results = sorted(results, key=lambda r: (r["latent_dim"], r["beta"]))
    data_path = project / paths.sweep_results
    write_json(data_path, {"sweep": name, **(extra or {}), "points": results, "failed": failed})
    page = pages.environment("vae_pipeline.pages.runs").get_template("sweep.html.j2").render(
        name=name, results=results, failed=failed, epochs=epochs,
        finished=time.strftime("%Y-%m-%d %H:%M"), svg=rate_distortion_svg(results) if results else "")
    path = project / paths.sweep_report
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path, data_path
