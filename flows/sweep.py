"""The `sweep` flow: train the VAE over a grid of beta x latent_dim, the points fanned out on Dask.

`make sweep` (`python -m flows.sweep`) reads the grid from params.yaml's `sweep`
section. Each point is a Prefect task on a Dask worker (prefect-dask): a local
cluster by default, or the Dask scheduler at `sweep.scheduler` to spread the
points over more machines (their workers must see the project at the same path).

DVC allows one `dvc repro` per workspace at a time, so every point works in its
own copy of the project (what a clone holds, sharing the project's DVC cache),
with params.yaml set for the point, and runs `dvc repro <sweep.stage>` there; the
copy is removed afterwards. Each point records the `dvc exp run -S ...` that
reproduces it in the project, logs to the project's MLflow store with a `sweep`
tag, and the sweep writes reports/sweep.html: the rate-distortion picture (KL
against reconstruction, one point per run) and a table.
"""
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

from flows.dvc_runner import failure, mlflow_run_id, read_metrics, run_logged, stage_env
from vae_pipeline import tracking
from vae_pipeline.artifacts import read_train_metrics
from vae_pipeline.files import ROOT, PipelineError, atomic_path, copy_checkout, write_json
from vae_pipeline.params import SPEED_ONLY, load_params


def dvc_cache_dir(project: Path) -> str:
    """The project's DVC cache: the points share it, so none downloads the data again and a point
    trained before with the same code, data and params is restored from DVC's run cache."""
    found = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=project,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise PipelineError(f"{project}: `dvc cache dir` failed: {found.stderr.strip()}")
    return found.stdout.strip()


def copy_project(project: Path, dest: Path, cache_dir: str) -> None:
    """Copy what a clone of `project` holds into `dest`, its DVC cache set to `cache_dir`."""
    copy_checkout(project, dest)
    # DVC needs a git repository (or core.no_scm); an empty one is enough for `dvc repro`.
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    (dest / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache_dir}\n")


def reproduce_command(point: dict) -> str:
    """The `dvc exp run` that trains this point in the project (params SPEED_ONLY change speed only)."""
    return "dvc exp run " + " ".join(f"-S {key}={value}" for key, value in point.items()
                                     if key not in SPEED_ONLY)


# Every point trains: Prefect must never skip one from a cache of its own.
@task(cache_policy=NO_CACHE)
def run_point(project: str, point: dict, stage: str, run_tags: dict, tracking_uri: str, cache_dir: str) -> dict:
    """Train and evaluate one grid point in a fresh copy of the project; return its figures."""
    logger = get_run_logger()
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="vae-sweep-"))
    logger.info("point %s in %s", point, workdir)
    copy_project(Path(project), workdir, cache_dir)

    point_params = yaml.safe_load((workdir / "params.yaml").read_text())
    for key, value in point.items():
        section, name = key.split(".")
        point_params[section][name] = value
    (workdir / "params.yaml").write_text(yaml.safe_dump(point_params, sort_keys=False))

    env = {**stage_env({**run_tags, "sweep_point": json.dumps(point)}), "MLFLOW_TRACKING_URI": tracking_uri}
    code, lines = run_logged([sys.executable, "-m", "dvc", "repro", stage], workdir, env, logger)
    if code != 0:
        raise failure(f"point {point} (kept in {workdir})", code, lines)
    result = {
        "beta": point["train.beta"], "latent_dim": point["train.latent_dim"],
        "epochs": point["train.epochs"],
        # The page shows the train stage's detail too (test_loss_mu): its two files, read checked.
        "metrics": {**read_metrics(workdir), "train": read_train_metrics(
            *(workdir / point_params["paths"][key] for key in ("train_metrics", "train_detail")))},
        "mlflow_run_id": mlflow_run_id(workdir, point_params),
        "command": reproduce_command(point),
        "restored": any(line.startswith(f"Stage '{stage}' is cached") for line in lines),
        "workdir": str(workdir), "started": started, "seconds": round(time.time() - started, 1),
    }
    shutil.rmtree(workdir)
    return result


def tracking_uri(project: Path, params: dict) -> str:
    """Where the points log: the project's MLflow store, so all sweeps land in one place."""
    return tracking.tracking_uri(params, project)


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


def write_report(project: Path, params: dict, name: str, results: list[dict], failed: list[str]) -> Path:
    """reports/sweep.json (every point's figures) and reports/sweep.html (one self-contained page,
    from vae_pipeline/templates/sweep.html.j2)."""
    results = sorted(results, key=lambda r: (r["latent_dim"], r["beta"]))
    write_json(project / params["paths"]["sweep_results"], {"sweep": name, "points": results, "failed": failed})
    env = Environment(loader=PackageLoader("vae_pipeline", "templates"), autoescape=True)
    page = env.get_template("sweep.html.j2").render(
        name=name, results=results, failed=failed, epochs=params["sweep"]["epochs"],
        finished=time.strftime("%Y-%m-%d %H:%M"), svg=rate_distortion_svg(results) if results else "")
    path = project / params["paths"]["sweep_report"]
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def grid(settings: dict) -> list[dict]:
    """The points of the sweep: every beta with every latent size, as params.yaml overrides."""
    return [{"train.beta": beta, "train.latent_dim": latent_dim, "train.epochs": settings["epochs"],
             "train.threads": settings["threads"]}
            for latent_dim in settings["latent_dim"] for beta in settings["beta"]]


# Dask serves its status page even without bokeh: a free port, so two sweeps never collide on 8787.
DASHBOARD = "127.0.0.1:0"


def dask_runner(settings: dict) -> DaskTaskRunner:
    """The sweep's task runner: the Dask scheduler at sweep.scheduler, else a local cluster of
    sweep.n_workers processes running one point at a time each."""
    if settings["scheduler"]:
        return DaskTaskRunner(address=settings["scheduler"])
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings["n_workers"], "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": DASHBOARD})


@flow(name="sweep", task_runner=DaskTaskRunner(cluster_kwargs={"dashboard_address": DASHBOARD}))
def sweep(project: str | None = None) -> list[dict]:
    """Train every point of params.yaml's sweep grid in `project` (default: this project).

    Run it with the task runner its params ask for: `sweep.with_options(task_runner=dask_runner(...))`.
    Returns the points' results; writes reports/sweep.html and reports/sweep.json.
    """
    logger = get_run_logger()
    root = Path(project) if project else ROOT
    params = load_params(root / "params.yaml")
    settings = params["sweep"]
    tags = {"sweep": flow_run.name, "prefect_flow_run_id": str(flow_run.id)}
    uri = tracking_uri(root, params)
    cache_dir = dvc_cache_dir(root)
    points = grid(settings)
    logger.info("%d points, %d epochs each, stage '%s'; MLflow: %s", len(points), settings["epochs"],
                settings["stage"], uri.split("@")[-1])
    futures = [run_point.with_options(task_run_name=f"beta={p['train.beta']:g} latent={p['train.latent_dim']}")
               .submit(str(root), p, settings["stage"], tags, uri, cache_dir) for p in points]
    results, failed = [], []
    for point, future in zip(points, futures):
        try:
            results.append(future.result())
        except Exception as e:
            failed.append(f"{reproduce_command(point)}: {e}")
    path = write_report(root, params, flow_run.name, results, failed)
    logger.info("%d of %d points done; %s", len(results), len(points), path)
    if failed:
        raise PipelineError(f"{len(failed)} of {len(points)} sweep points failed:\n  " + "\n  ".join(failed))
    return results


def main() -> None:
    from flows.local_api import run_on_local_api

    # Dask's start-up and shutdown chatter at INFO drowns the points' logs (workers read the env).
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    run_on_local_api(lambda: sweep.with_options(task_runner=dask_runner(load_params()["sweep"]))())


if __name__ == "__main__":
    main()
