"""The `sweep` flow: train the VAE over a grid of beta x latent_dim, the points fanned out on Dask.

`make sweep` (`python -m flows.sweep`) reads the grid from params.yaml's `sweep`
section. Each point is a Prefect task on a Dask worker (prefect-dask) that runs a
recipe (flows/sweep_point.py): it clones the sweep's git commit, pulls the inputs
from a DVC remote, runs the point as a DVC experiment (`dvc exp run -S ...`) and
pushes it (`dvc exp push`). The same code runs in two places:

  - local (sweep.scheduler null): a local Dask cluster; the points clone the
    project itself (a path) and use its DVC cache as their remote;
  - the team stack (sweep.scheduler `stack`, or a Dask address): the workers may sit
    on other machines with only the venv and the worker kit; they clone from the
    stack's git server (the sweep pushes its commit there as branch sweep/<name>),
    use the stack's DVC remote and log to the stack's MLflow server.

Before the points, the sweep runs the stages they share (those upstream of
sweep.stage that no override touches: the download) in the project and puts them,
with DVC's run cache, where the points pull from: they are done once, not per point.
MLflow gets a parent run "sweep <name>" and each point's training run is its child.
A worker that dies in the middle of a point leaves its child run RUNNING; Dask runs
the point again elsewhere, and the sweep then marks the dead attempt's run FAILED.
Afterwards the points are experiments of the project (`dvc exp show`), and the
sweep writes reports/sweep.html and reports/sweep.json and a Prefect table artifact.
"""
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner

import flows.sweep_point
from flows.artifacts import mlflow_run_link
from flows.dvc_runner import metrics_files, run_logged, stage_env, workspace_lock
from vae_pipeline import pages
from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.files import ROOT, atomic_path, write_json
from vae_pipeline.outputs import read_train_metrics
from vae_pipeline.params import SPEED_ONLY
from vae_pipeline.provenance import git_provenance
from vae_pipeline.settings import load_settings
from vae_pipeline.tracking import store

# The workers never import the project: the point runner travels with each task, by value.
cloudpickle.register_pickle_by_value(flows.sweep_point)

STACK = "stack"                          # sweep.scheduler for the team stack's Dask scheduler
STACK_REMOTE = "stack"                   # the stack's DVC remote (.dvc/config)
STACK_ENV = {"git_url": "VAE_STACK_GIT_URL", "dask": "VAE_STACK_DASK_ADDRESS"}   # `.stack/env`, the kit's env


def dvc(project: Path, *args: str) -> str:
    """Run `dvc <args>` in `project`; its output, or PipelineError naming the command."""
    found = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                           env=stage_env({}))
    if found.returncode != 0:
        raise PipelineError(f"{project}: `dvc {' '.join(args)}` failed: {found.stderr.strip()[-1500:]}")
    return found.stdout.strip()


def sweep_commit(project: Path, params: dict) -> str:
    """The commit every point runs: the project's HEAD, refused when a tracked input differs from it
    (the points would silently run other code or params than the workspace holds)."""
    git = git_provenance(params, project)
    if git["dirty"] is None:
        raise PipelineError(f"{project}: a sweep runs a git commit, but {git['commit']}; commit the project first")
    if git["dirty"]:
        raise PipelineError(f"{project}: uncommitted changes to {', '.join(git['changes'])}; the sweep runs "
                            f"commit {git['commit'][:12]} on its workers: commit (or stash) them first")
    return git["commit"]


def target(project: Path, settings: dict) -> dict:
    """Where the points get the project from and put their results: {git_url, dvc_remote, push}."""
    if settings["scheduler"] is None:
        # This machine: the points clone the project itself, and its DVC cache is their remote
        # (a DVC 3 cache and a local remote have the same layout), so nothing is copied twice.
        return {"git_url": str(project), "dvc_remote": {"name": "sweep-cache", "url": dvc(project, "cache", "dir")},
                "push": False}
    git_url = os.environ.get(STACK_ENV["git_url"])
    if not git_url:
        raise PipelineError(f"params.yaml sweep.scheduler is {settings['scheduler']!r}, so the points run on "
                            f"other machines and clone the stack's git server, but env {STACK_ENV['git_url']} "
                            "is not set; `source .stack/env` (the stack host) or the worker kit's env first")
    return {"git_url": git_url, "push": True,
            "dvc_remote": {"name": STACK_REMOTE, "url": dvc(project, "config", f"remote.{STACK_REMOTE}.url")}}


def scheduler_address(settings: dict) -> str | None:
    """The Dask scheduler: None (a local cluster), the stack's (env VAE_STACK_DASK_ADDRESS; its TLS
    certificates come from the DASK_DISTRIBUTED__COMM__TLS__* variables), or the address given."""
    if settings["scheduler"] != STACK:
        return settings["scheduler"]
    address = os.environ.get(STACK_ENV["dask"])
    if not address:
        raise PipelineError(f"params.yaml sweep.scheduler is 'stack' but env {STACK_ENV['dask']} is not set; "
                            "`source .stack/env` first")
    return address


def shared_stages(project: Path, stage: str, overrides: set[str]) -> list[str]:
    """The stages upstream of `stage` that no override touches (nor any stage they read from), in
    dvc.yaml's order: the same for every point, so the sweep runs them once, before the points."""
    from dvc.repo import Repo

    from flows.dvc_runner import stage_order

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    with Repo(str(project)) as repo:
        graph = repo.index.graph          # an edge goes from a stage to a stage it reads from
        by_name = {s.name: s for s in graph}
        if stage not in by_name:
            raise PipelineError(f"params.yaml sweep.stage: no stage '{stage}' in dvc.yaml")
        import networkx
        upstream = {s.name for s in networkx.descendants(graph, by_name[stage])}
        reads = {s.name: {d.name for d in networkx.descendants(graph, s)} for s in graph}

    def touched(name: str) -> bool:
        listed = {str(p) for p in stages[name].get("params", [])}
        return any(key in listed or key.split(".")[0] in listed for key in overrides)

    own = {name for name in upstream if touched(name)}
    return [name for name in stage_order(project)
            if name in upstream and name not in own and not reads[name] & own]


def put_shared_stages(project: Path, params: dict, stages: list[str], where: dict, logger) -> None:
    """Run the shared stages in the project (DVC skips them when up to date) and, for the stack,
    push their outputs and run cache to its remote, where the points pull them from."""
    if not stages:
        return
    with workspace_lock(project, params["prefect"]["lock_wait_seconds"], logger):
        code, lines = run_logged([sys.executable, "-m", "dvc", "repro", *stages], project, stage_env({}), logger)
        if code != 0:
            raise PipelineError(f"the shared stages {stages} failed in {project}:\n  " + "\n  ".join(lines[-5:]))
    if where["push"]:
        code, lines = run_logged([sys.executable, "-m", "dvc", "push", "--run-cache", "-r",
                                  where["dvc_remote"]["name"], *stages], project, stage_env({}), logger)
        if code != 0:
            raise PipelineError(f"dvc push of the shared stages to remote '{where['dvc_remote']['name']}' "
                                "failed:\n  " + "\n  ".join(lines[-5:]))


def push_commit(project: Path, git_url: str, commit: str, branch: str, logger) -> None:
    """Put the sweep's commit on the stack's git server as `branch` (credentials through the
    environment, as the workers send them: never on a command line)."""
    env = {**os.environ, **flows.sweep_point.git_auth_env(git_url)}
    logger.info("pushing commit %s to %s as %s", commit[:12], redact_uri(git_url), branch)
    pushed = subprocess.run(["git", "push", "-q", "--force", git_url, f"{commit}:refs/heads/{branch}"],
                            cwd=project, env=env, capture_output=True, text=True)
    if pushed.returncode != 0:
        message = flows.sweep_point.scrub(pushed.stderr.strip(), flows.sweep_point.secrets_of(env))
        raise PipelineError(f"git push of commit {commit[:12]} to {redact_uri(git_url)} failed: {message}")


def point_name(point: dict) -> str:
    return f"beta={point['train.beta']:g} latent={point['train.latent_dim']}"


def exp_name(sweep_name: str, point: dict) -> str:
    """The point's DVC experiment: a git ref name, unique in the sweep."""
    return f"{sweep_name}-b{point['train.beta']:g}-z{point['train.latent_dim']}".replace(".", "p")


def reproduce_command(point: dict) -> str:
    """The `dvc exp run` that trains this point in the project (params SPEED_ONLY change speed only)."""
    return "dvc exp run " + " ".join(f"-S {key}={value}" for key, value in point.items()
                                     if key not in SPEED_ONLY)


def recipe(point: dict, sweep_name: str, commit: str, where: dict, settings: dict, params: dict,
           tags: dict, uri: str, figures: list[str]) -> dict:
    """What a worker needs to run `point` (flows/sweep_point.py): no credential in it."""
    return {"git_url": where["git_url"], "commit": commit,
            "ref": f"sweep/{sweep_name}" if where["push"] else None,
            "stage": settings["stage"], "overrides": point, "exp_name": exp_name(sweep_name, point),
            "dvc_remote": where["dvc_remote"],
            "tags": {**tags, "sweep.point": point_name(point)},
            # A URI with a password in it stays out: the worker's own env names the store then.
            "tracking_uri": uri if redact_uri(uri) == uri else None,
            "metrics_files": figures,
            "run_record": params["paths"]["run_record"]}


def figure_files(project: Path, params: dict) -> list[str]:
    """The files a worker sends back: the DVC metrics files (dvc.yaml's) and the train stage's detail."""
    found = [str(path.relative_to(project)) for path in metrics_files(project)]
    return found + [params["paths"]["train_detail"]]


def point_metrics(result: dict, project: Path, params: dict) -> dict:
    """The point's figures: its DVC metrics files, as flows/dvc_runner.read_metrics reads them
    ({file stem: {name: value}}), with the train stage's detail beside its headline figures
    (test_loss_mu, for the page), read checked as the stages read them."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder)
        for name, text in result.pop("metrics_files").items():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_text(text)
        found = [copy / path.relative_to(project) for path in metrics_files(project)]
        metrics = {path.stem: json.loads(path.read_text()) for path in found if path.exists()}
        metrics = {name: values for name, values in metrics.items() if isinstance(values, dict)}
        metrics["train"] = read_train_metrics(*(copy / params["paths"][key] for key in ("train_metrics",
                                                                                         "train_detail")))
        return metrics


def start_parent_run(client, params: dict, name: str, settings: dict, commit: str, tags: dict) -> str:
    """The sweep's MLflow run "sweep <name>": every point's training run is its child."""
    from mlflow.entities import Param, RunTag

    run = client.create_run(store.experiment_id(client, params), run_name=f"sweep {name}")
    grid_params = {f"sweep.{key}": json.dumps(value) if isinstance(value, list) else str(value)
                   for key, value in settings.items()}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in grid_params.items()],
                     tags=[RunTag(k, v) for k, v in {**tags, "git.commit": commit,
                                                     "mlflow.source.git.commit": commit,
                                                     "mlflow.source.name": "flows.sweep"}.items()])
    return run.info.run_id


def settled(futures: list) -> Iterator[tuple[int, object]]:
    """(index, its result or its exception) for each point's future, as it finishes.

    Each is let go on the Dask scheduler once read: a finished point's result stays in its worker's
    memory while the flow holds the future, and if that worker dies Dask runs the point again
    though it was done (seen: a host killed in its second point, its first one ran twice).
    """
    index_of = {future: index for index, future in enumerate(futures)}
    for future in as_completed(futures):
        try:
            outcome = future.result()
        except Exception as e:
            outcome = e
        future.wrapped_future.release()
        yield index_of[future], outcome


def close_dead_attempts(client, parent_id: str, results: list[dict], logger) -> list[str]:
    """Mark FAILED every child run of the parent that is still running: an attempt whose worker died
    (its point ran again elsewhere, or failed). Returns their run ids."""
    from mlflow.entities import RunStatus

    done = {r["mlflow_run_id"] for r in results}
    children = client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000)
    dead = [run for run in children if run.info.run_id not in done
            and run.info.status in (RunStatus.to_string(RunStatus.RUNNING), RunStatus.to_string(RunStatus.SCHEDULED))]
    for run in dead:
        point = run.data.tags.get("sweep.point", "?")
        logger.warning("MLflow run %s (point %s, on %s pid %s) never finished: its worker died; marked FAILED",
                       run.info.run_id, point, run.data.tags.get("sweep.attempt.host"),
                       run.data.tags.get("sweep.attempt.pid"))
        client.set_tag(run.info.run_id, "sweep.attempt.outcome", "worker lost; the point ran again")
        client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in dead]


def finish_parent_run(client, parent_id: str, results: list[dict], failed: list[str], dead: list[str],
                      files: list[Path]) -> None:
    """One entry per point on the parent: the counts, once, and the sweep's page and table."""
    store.log_metrics(client, parent_id, {"points_done": len(results), "points_failed": len(failed),
                                             "attempts_lost": len(dead)})
    for path in files:
        client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id, status="FAILED" if failed else "FINISHED")


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


def write_report(project: Path, params: dict, name: str, results: list[dict], failed: list[str],
                 extra: dict | None = None) -> tuple[Path, Path]:
    """reports/sweep.json (every point's figures) and reports/sweep.html (one self-contained page,
    from vae_pipeline/pages/templates/sweep.html.j2)."""
    results = sorted(results, key=lambda r: (r["latent_dim"], r["beta"]))
    data_path = project / params["paths"]["sweep_results"]
    write_json(data_path, {"sweep": name, **(extra or {}), "points": results, "failed": failed})
    page = pages.environment().get_template("sweep.html.j2").render(
        name=name, results=results, failed=failed, epochs=params["sweep"]["epochs"],
        finished=time.strftime("%Y-%m-%d %H:%M"), svg=rate_distortion_svg(results) if results else "")
    path = project / params["paths"]["sweep_report"]
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path, data_path


def grid(settings: dict) -> list[dict]:
    """The points of the sweep: every beta with every latent size, as params.yaml overrides."""
    return [{"train.beta": beta, "train.latent_dim": latent_dim, "train.epochs": settings["epochs"],
             "train.threads": settings["threads"]}
            for latent_dim in settings["latent_dim"] for beta in settings["beta"]]


def pull_experiments(project: Path, where: dict, commit: str, names: list[str], logger) -> None:
    """Bring the points' experiments into the project, so `dvc exp show` lists them: their refs
    (DVC's refs/exps/<commit[:2]>/<commit[2:]>/<name>) fetched from the stack's git by git itself, which
    takes the credentials from the environment (`dvc exp pull` would need them in the URL, on the
    command line or in the project's git config). Local points pushed straight into the project."""
    if not where["push"] or not names:
        return
    refs = [f"refs/exps/{commit[:2]}/{commit[2:]}/{name}" for name in names]
    env = {**os.environ, **flows.sweep_point.git_auth_env(where["git_url"])}
    fetched = subprocess.run(["git", "fetch", "-q", "--force", where["git_url"], *(f"{ref}:{ref}" for ref in refs)],
                             cwd=project, env=env, capture_output=True, text=True)
    if fetched.returncode != 0:
        message = flows.sweep_point.scrub(fetched.stderr.strip(), flows.sweep_point.secrets_of(env))
        logger.warning("fetching the experiments from %s failed (they stay there): %s",
                       redact_uri(where["git_url"]), message)


@contextlib.contextmanager
def flow_seen_by_workers():
    """While the points are submitted, the flow run context that Prefect sends with each task names a
    stand-in flow (flows/sweep_point.stand_in_flow) instead of this module's, which a worker without
    the project could not unpickle. Prefect serializes the context at submission, so it is put back
    right after."""
    context = FlowRunContext.get()
    real = context.flow
    context.flow = flows.sweep_point.stand_in_flow(real.name)
    try:
        yield
    finally:
        context.flow = real


# Dask serves its status page even without bokeh: a free port, so two sweeps never collide on 8787.
DASHBOARD = "127.0.0.1:0"


def dask_runner(settings: dict) -> DaskTaskRunner:
    """The sweep's task runner: a Dask scheduler (sweep.scheduler: an address, or `stack`), else a
    local cluster of sweep.n_workers processes running one point at a time each."""
    address = scheduler_address(settings)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings["n_workers"], "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": DASHBOARD})


@flow(name="sweep", task_runner=DaskTaskRunner(cluster_kwargs={"dashboard_address": DASHBOARD}))
def sweep(project: str | None = None) -> list[dict]:
    """Train every point of params.yaml's sweep grid of `project` (default: this project).

    Run it with the task runner its params ask for: `sweep.with_options(task_runner=dask_runner(...))`.
    Returns the points' results; writes reports/sweep.html and reports/sweep.json.
    """
    logger = get_run_logger()
    started = time.time()
    root = Path(project).resolve() if project else ROOT
    params = load_settings(root / "params.yaml")
    settings = params["sweep"]
    name = flow_run.name
    commit = sweep_commit(root, params)
    where = target(root, settings)
    points = grid(settings)
    uri = store.tracking_uri(params, root)
    client = store.connect({**params, "mlflow": {**params["mlflow"], "tracking_uri": uri}})
    tags = {"sweep": name, "prefect_flow_run_id": str(flow_run.id)}
    parent_id = start_parent_run(client, params, name, settings, commit, tags)
    logger.info("%d points of commit %s, %d epochs each, stage '%s'; MLflow: %s, parent run %s; git: %s",
                len(points), commit[:12], settings["epochs"], settings["stage"], redact_uri(uri), parent_id,
                redact_uri(where["git_url"]))

    shared = shared_stages(root, settings["stage"], set(points[0]))
    put_shared_stages(root, params, shared, where, logger)
    if where["push"]:
        push_commit(root, where["git_url"], commit, f"sweep/{name}", logger)
    dispatched = time.time()
    tags = {**tags, "mlflow.parentRunId": parent_id}
    figures = figure_files(root, params)
    run_point = flows.sweep_point.point_task()
    with flow_seen_by_workers():
        futures = [run_point.with_options(task_run_name=point_name(p))
                   .submit(recipe(p, name, commit, where, settings, params, tags, uri, figures)) for p in points]
    done, failed = {}, []
    for index, outcome in settled(futures):
        point = points[index]
        if isinstance(outcome, Exception):
            failed.append(f"{reproduce_command(point)}: {outcome}")
            continue
        done[index] = {"beta": point["train.beta"], "latent_dim": point["train.latent_dim"],
                       "epochs": point["train.epochs"], **outcome, "metrics": point_metrics(outcome, root, params),
                       "command": reproduce_command(point)}
    results = [done[index] for index in sorted(done)]       # in the grid's order
    dead = close_dead_attempts(client, parent_id, results, logger)
    pull_experiments(root, where, commit, [r["exp_name"] for r in results], logger)
    timing = {"commit": commit, "mlflow_parent_run_id": parent_id, "prefect_flow_run_id": str(flow_run.id), "shared_stages": shared,
              "attempts_lost": dead, "seconds": round(time.time() - started, 1),
              "points_seconds": round(time.time() - dispatched, 1)}
    page, data = write_report(root, params, name, results, failed, timing)
    finish_parent_run(client, parent_id, results, failed, dead, [page, data])
    create_table_artifact(key="sweep-points", table=table_rows(sorted(results, key=lambda r: (r["latent_dim"], r["beta"]))),
                          description=f"The points of sweep {name}: one row per point, its host and figures")
    parent = client.get_run(parent_id)
    create_link_artifact(key="mlflow-run", link=mlflow_run_link(
        {"tracking_uri": uri, "experiment_id": parent.info.experiment_id, "run_id": parent_id}),
        link_text=f"MLflow run sweep {name}", description="The sweep's parent run: a child run per point")
    logger.info("%d of %d points done in %.0f s; %s", len(results), len(points), time.time() - started, page)
    if failed:
        raise PipelineError(f"{len(failed)} of {len(points)} sweep points failed:\n  " + "\n  ".join(failed))
    return results


def main() -> None:
    from flows.local_api import run_on_local_api

    # Dask's start-up and shutdown chatter at INFO drowns the points' logs (workers read the env).
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    run_on_local_api(lambda: sweep.with_options(task_runner=dask_runner(load_settings()["sweep"]))())


if __name__ == "__main__":
    main()
