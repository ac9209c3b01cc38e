"""The `sweep` flow: train the VAE over a grid of beta x latent_dim, the points fanned out on Dask.

`make sweep` (`python -m flows.sweep`) reads the grid from params.yaml's `sweep`
section; `python -m flows.sweep -S 'sweep.beta=[1,4]' -S sweep.epochs=1` changes it for one
sweep, as `dvc exp run -S` does (flows/sweep_args.py). Each point is a Prefect task on a
Dask worker (prefect-dask) that runs a recipe (flows/sweep_point.py): it clones the
sweep's git commit, pulls the inputs from a DVC remote, runs the point as a DVC experiment
(`dvc exp run -S ...`) and pushes it (`dvc exp push`). The same code runs in two places:

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
import json
import logging
import os
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
from flows import sweep_args
from flows.dvc_runner import metrics_files, run_logged, stage_env, workspace_lock
from flows.sweep_args import sweep_settings
from flows.sweep_git import dvc, pull_experiments, push_commit, sweep_commit
from vae_pipeline import environment
from vae_pipeline.errors import PipelineError, exit_code, redact_uri
from vae_pipeline.files import ROOT
from vae_pipeline.outputs import read_train_metrics
from vae_pipeline.pages.sweep import table_rows, write_report
from vae_pipeline.params import SPEED_ONLY
from vae_pipeline.settings import STACK_DVC_REMOTE, Settings, Sweep
from vae_pipeline.tracking import store
from vae_pipeline.tracking.runs import RUN_TAGS_ENV
from vae_pipeline.tracking.sweeps import close_dead_attempts, finish_parent_run, start_parent_run
from vae_pipeline.tracking.ui import run_link

# The workers never import the project: the point runner travels with each task, by value.
cloudpickle.register_pickle_by_value(flows.sweep_point)

STACK = "stack"                          # sweep.scheduler for the team stack's Dask scheduler
# The environment of a point's commands, by name (the worker imports nothing of the project): the
# variables it sets (telemetry off) and the names of those it reads or fills.
POINT_ENV = {"set": environment.TELEMETRY_OFF, "git_user": environment.STACK_GIT_USER,
             "git_password": environment.STACK_GIT_PASSWORD, "run_tags": RUN_TAGS_ENV,
             "secrets": list(environment.SECRET_VALUES)}


def target(project: Path, settings: Sweep) -> dict:
    """Where the points get the project from and put their results: {git_url, dvc_remote, push}."""
    if settings.scheduler is None:
        # This machine: the points clone the project itself, and its DVC cache is their remote
        # (a DVC 3 cache and a local remote have the same layout), so nothing is copied twice.
        return {"git_url": str(project), "dvc_remote": {"name": "sweep-cache", "url": dvc(project, "cache", "dir")},
                "push": False}
    git_url = os.environ.get(environment.STACK_GIT_URL)
    if not git_url:
        raise PipelineError(f"params.yaml sweep.scheduler is {settings.scheduler!r}, so the points run on "
                            f"other machines and clone the stack's git server, but env {environment.STACK_GIT_URL} "
                            "is not set; `source .stack/env` (the stack host) or the worker kit's env first")
    return {"git_url": git_url, "push": True, "dvc_remote": {
        "name": STACK_DVC_REMOTE, "url": dvc(project, "config", f"remote.{STACK_DVC_REMOTE}.url")}}


def scheduler_address(settings: Sweep) -> str | None:
    """The Dask scheduler: None (a local cluster), the stack's (env VAE_STACK_DASK_ADDRESS; its TLS
    certificates come from the DASK_DISTRIBUTED__COMM__TLS__* variables), or the address given."""
    if settings.scheduler != STACK:
        return settings.scheduler
    address = os.environ.get(environment.STACK_DASK_ADDRESS)
    if not address:
        raise PipelineError(f"params.yaml sweep.scheduler is 'stack' but env {environment.STACK_DASK_ADDRESS} "
                            "is not set; `source .stack/env` first")
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


def put_shared_stages(project: Path, params: Settings, stages: list[str], where: dict, logger) -> None:
    """Run the shared stages in the project (DVC skips them when up to date) and, for the stack,
    push their outputs and run cache to its remote, where the points pull them from."""
    if not stages:
        return
    with workspace_lock(project, params.prefect, logger):
        code, lines = run_logged([sys.executable, "-m", "dvc", "repro", *stages], project, stage_env({}), logger)
        if code != 0:
            raise PipelineError(f"the shared stages {stages} failed in {project}:\n  " + "\n  ".join(lines[-5:]))
    if where["push"]:
        code, lines = run_logged([sys.executable, "-m", "dvc", "push", "--run-cache", "-r",
                                  where["dvc_remote"]["name"], *stages], project, stage_env({}), logger)
        if code != 0:
            raise PipelineError(f"dvc push of the shared stages to remote '{where['dvc_remote']['name']}' "
                                "failed:\n  " + "\n  ".join(lines[-5:]))


def point_name(point: dict) -> str:
    return f"beta={point['train.beta']:g} latent={point['train.latent_dim']}"


def exp_name(point: dict) -> str:
    """The point's DVC experiment, a git ref name: its beta and latent size (b0p5-z2). Short, so that
    `make exps` fits 120 columns (with the sweep's name in it, 136); the sweep is in the MLflow tags
    and reports/sweep.json. The same point swept again on the same commit replaces it."""
    return f"b{point['train.beta']:g}-z{point['train.latent_dim']}".replace(".", "p")


def reproduce_command(point: dict) -> str:
    """The `dvc exp run` that trains this point in the project (params SPEED_ONLY change speed only)."""
    return "dvc exp run " + " ".join(f"-S {key}={value}" for key, value in point.items()
                                     if key not in SPEED_ONLY)


def recipe(point: dict, sweep_name: str, commit: str, where: dict, settings: Sweep, params: Settings,
           tags: dict, uri: str, figures: list[str]) -> dict:
    """What a worker needs to run `point` (flows/sweep_point.py): no credential in it."""
    return {"git_url": where["git_url"], "commit": commit,
            "ref": f"sweep/{sweep_name}" if where["push"] else None,
            "stage": settings.stage, "overrides": point, "exp_name": exp_name(point),
            "dvc_remote": where["dvc_remote"],
            "tags": {**tags, "sweep.point": point_name(point)},
            # A URI with a password in it stays out: the worker's own env names the store then.
            "tracking_uri": uri if redact_uri(uri) == uri else None,
            "metrics_files": figures,
            "run_record": params.paths.run_record,
            "env": POINT_ENV}


def figure_files(project: Path, params: Settings) -> list[str]:
    """The files a worker sends back: the DVC metrics files (dvc.yaml's) and the train stage's detail."""
    found = [str(path.relative_to(project)) for path in metrics_files(project)]
    return found + [params.paths.train_detail]


def point_metrics(result: dict, project: Path, params: Settings) -> dict:
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
        metrics["train"] = read_train_metrics(copy / params.paths.train_metrics, copy / params.paths.train_detail)
        return metrics


def grid(settings: Sweep) -> list[dict]:
    """The points of the sweep: every beta with every latent size, as params.yaml overrides."""
    return [{"train.beta": beta, "train.latent_dim": latent_dim, "train.epochs": settings.epochs,
             "train.threads": settings.threads}
            for latent_dim in settings.latent_dim for beta in settings.beta]


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


def dask_runner(settings: Sweep) -> DaskTaskRunner:
    """The sweep's task runner: a Dask scheduler (sweep.scheduler: an address, or `stack`), else a
    local cluster of sweep.n_workers processes running one point at a time each."""
    address = scheduler_address(settings)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.n_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": DASHBOARD})


@flow(name="sweep", task_runner=DaskTaskRunner(cluster_kwargs={"dashboard_address": DASHBOARD}))
def sweep(project: str | None = None, overrides: dict | None = None) -> list[dict]:
    """Train every point of params.yaml's sweep grid of `project` (default: this project), with
    `overrides` ({"sweep.epochs": 1, ...}: the -S of flows/sweep_args.py) applied.

    Run it with the task runner its params ask for: `sweep.with_options(task_runner=dask_runner(...))`.
    Returns the points' results; writes reports/sweep.html and reports/sweep.json.
    """
    logger = get_run_logger()
    started = time.time()
    root = Path(project).resolve() if project else ROOT
    params = sweep_settings(root, overrides)
    settings = params.sweep
    name = flow_run.name
    commit = sweep_commit(root, params.paths)
    where = target(root, settings)
    points = grid(settings)
    uri = store.tracking_uri(params.mlflow, params.paths, root)
    client = store.connect(params.mlflow.model_copy(update={"tracking_uri": uri}), params.paths)
    tags = {"sweep": name, "prefect_flow_run_id": str(flow_run.id)}
    parent_id = start_parent_run(client, params, name, settings, commit, tags)
    logger.info("%d points of commit %s, %d epochs each, stage '%s'; MLflow: %s, parent run %s; git: %s",
                len(points), commit[:12], settings.epochs, settings.stage, redact_uri(uri), parent_id,
                redact_uri(where["git_url"]))

    shared = shared_stages(root, settings.stage, set(points[0]))
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
    timing = {"commit": commit, "mlflow_parent_run_id": parent_id, "prefect_flow_run_id": str(flow_run.id),
              "shared_stages": shared, "attempts_lost": dead, "seconds": round(time.time() - started, 1),
              "points_seconds": round(time.time() - dispatched, 1)}
    page, data = write_report(root, params.paths, settings.epochs, name, results, failed, timing)
    finish_parent_run(client, parent_id, results, failed, dead, [page, data])
    by_size = sorted(results, key=lambda r: (r["latent_dim"], r["beta"]))
    create_table_artifact(key="sweep-points", table=table_rows(by_size),
                          description=f"The points of sweep {name}: one row per point, its host and figures")
    parent = client.get_run(parent_id)
    create_link_artifact(key="mlflow-run", link=run_link(uri, parent.info.experiment_id, parent_id),
        link_text=f"MLflow run sweep {name}", description="The sweep's parent run: a child run per point")
    logger.info("%d of %d points done in %.0f s; %s", len(results), len(points), time.time() - started, page)
    if failed:
        raise PipelineError(f"{len(failed)} of {len(points)} sweep points failed:\n  " + "\n  ".join(failed))
    return results


def checked(argv: list[str]) -> tuple[dict, Settings]:
    """The -S overrides of `argv` and the settings they give, once everything a sweep refuses has been
    checked (bad settings, uncommitted inputs, a stack not sourced): before Prefect starts, so that a
    refusal is its one line (a refusal inside the flow comes after Prefect's traceback of it)."""
    from flows.local_api import check_api

    overrides = sweep_args.overrides(sweep_args.parse(argv))
    params = sweep_settings(ROOT, overrides)
    if os.environ.get("PREFECT_API_URL"):          # named first, as every flow names it
        check_api(os.environ["PREFECT_API_URL"])
    sweep_commit(ROOT, params.paths)
    scheduler_address(params.sweep)
    target(ROOT, params.sweep)
    return overrides, params


def main(argv: list[str]) -> None:
    from flows.local_api import run_on_local_api

    ready = []
    code = exit_code(lambda: ready.append(checked(argv)))
    if code:
        sys.exit(code)
    overrides, params = ready[0]
    # Dask's start-up and shutdown chatter at INFO drowns the points' logs (workers read the env).
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    run_on_local_api(lambda: sweep.with_options(task_runner=dask_runner(params.sweep))(overrides=overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
