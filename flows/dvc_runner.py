"""Running DVC for the flows: each stage as a Prefect task, in dependency order, one pipeline
per workspace, and what the stages left behind (metrics, the MLflow run).

Every flow runs the stages only through DVC (`dvc repro` in a subprocess), so DVC
decides what is stale and dvc.lock stays the record of what produced what.
"""
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from vae_pipeline.environment import TELEMETRY_OFF
from vae_pipeline.errors import PipelineError
from vae_pipeline.params import Paths
from vae_pipeline.settings import Prefect
from vae_pipeline.tracking.runs import RUN_TAGS_ENV
from vae_pipeline.tracking.store import training_run


def stage_env(run_tags: dict) -> dict:
    """The environment of a DVC subprocess: the venv's python first on PATH (dvc.yaml runs
    `python -m stages.X`), telemetry off, and the run tags for MLflow."""
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            **TELEMETRY_OFF, RUN_TAGS_ENV: json.dumps(run_tags)}


def run_logged(cmd: list[str], cwd: Path, env: dict, logger) -> tuple[int, list[str]]:
    """Run `cmd`, sending each line of its output (stdout and stderr) to `logger` as it comes."""
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1) as process:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                lines.append(line)
    return process.returncode, lines


def failure(what: str, code: int, lines: list[str]) -> Exception:
    """The exception for a failed DVC call: PipelineError when the stage itself exited 2
    (bad input, NaN loss: rerunning gives the same), RuntimeError otherwise."""
    stage_code = next((int(m.group(1)) for line in lines if (m := re.search(r"exited with (\d+)", line))),
                      None)
    errors = [line for line in lines if line.lower().startswith(("error", "warning: error"))]
    message = f"{what} failed (dvc exit code {code}, stage exit code {stage_code}):\n  " + \
        "\n  ".join(errors[-5:] or lines[-5:])
    return PipelineError(message) if stage_code == 2 else RuntimeError(message)


# DVC decides what to skip: Prefect must never skip a stage from a cache of its own.
@task(cache_policy=NO_CACHE)
def run_stage(stage: str, project: str, run_tags: dict) -> dict:
    """`dvc repro --single-item <stage>`: runs the stage if DVC finds it stale, else skips it.

    Stages of parallel arms run at once: DVC holds its repository lock only while it checks and
    records a stage, not while the stage's command runs, and `--wait-for-lock` makes a second
    `dvc repro` wait for that moment instead of failing with "Unable to acquire lock".
    """
    logger = get_run_logger()
    started = time.time()
    code, lines = run_logged([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage],
                             Path(project), stage_env(run_tags), logger)
    if code != 0:
        raise failure(f"stage '{stage}'", code, lines)
    ran = any(line.startswith(f"Running stage '{stage}'") for line in lines)
    # DVC's run cache: the same stage with the same deps and params ran before; outputs restored.
    restored = any(line.startswith(f"Stage '{stage}' is cached") for line in lines)
    ended = time.time()
    return {"stage": stage, "ran": ran, "restored": restored, "seconds": round(ended - started, 1),
            "started": started, "ended": ended}


def stage_graph(project: Path) -> dict[str, set[str]]:
    """Each stage of dvc.yaml -> the stages it reads from, each stage after those, in dvc.yaml's
    order otherwise."""
    from dvc.repo import Repo  # imported here: DVC is only needed once the flow runs

    def address(stage) -> str:     # as `dvc repro` takes it in the project: `name`, or `sub/dvc.yaml:name`
        where = Path(stage.path).relative_to(project.resolve())
        return stage.name if str(where) == "dvc.yaml" else f"{where}:{stage.name}"

    with Repo(str(project)) as repo:
        graph = repo.index.graph   # an edge goes from a stage to a stage it depends on
        upstream = {address(stage): {address(dep) for dep in graph.successors(stage)} for stage in graph}
        file_order = [address(stage) for stage in repo.index.stages]
    ordered = []
    while len(ordered) < len(file_order):
        ordered.append(next(name for name in file_order
                            if name not in ordered and upstream[name] <= set(ordered)))
    return {name: upstream[name] for name in ordered}


def stage_order(project: Path) -> list[str]:
    """The stages of dvc.yaml, each after the stages it depends on, in dvc.yaml's order otherwise."""
    return list(stage_graph(project))


def run_stages(project: Path, run_tags: dict, options: dict | None = None) -> list[dict]:
    """Every stage of dvc.yaml as a task, each started as soon as the stages it reads from are done:
    independent arms of the DAG run at once. `options`: stage -> task options (e.g. retries).

    A failed stage stops the stages downstream of it (Prefect does not start a task whose upstream
    failed); the other arms run to their end, so their outputs are whole and recorded in dvc.lock.
    Then the first failure is raised. Returns run_stage's results in the order the stages ended.
    """
    from prefect.futures import wait

    futures = {}
    for stage, upstream in stage_graph(project).items():
        futures[stage] = run_stage.with_options(name=stage, task_run_name=stage, **(options or {}).get(stage, {})) \
            .submit(stage, str(project), run_tags, wait_for=[futures[name] for name in upstream])
    wait(list(futures.values()))
    failed = [stage for stage, future in futures.items()
              if future.state.is_failed() or future.state.is_crashed() or future.state.is_cancelled()]
    if failed:
        not_run = [stage for stage, future in futures.items()
                   if not future.state.is_completed() and stage not in failed]
        cause = futures[failed[0]]
        if not_run:
            get_run_logger().error("not run, downstream of a failed stage: %s", ", ".join(not_run))
        cause.result()   # raises the failed stage's own error
    return sorted((future.result() for future in futures.values()), key=lambda r: r["ended"])


@contextlib.contextmanager
def workspace_lock(project: Path, settings: Prefect, logger):
    """Hold the project's pipeline lock (params prefect.lock_file): one pipeline per workspace, as DVC's
    own lock allows one `dvc repro`. A second pipeline waits up to prefect.lock_wait_seconds, then fails
    with a clear message. `settings`: params.yaml's `prefect` section."""
    path, wait_seconds = project / settings.lock_file, settings.lock_wait_seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + wait_seconds
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                if time.monotonic() >= deadline:
                    raise PipelineError(
                        f"another pipeline (pid {holder}) is running in {project} and still holds "
                        f"{path} after {wait_seconds:g} s; let it finish (or stop it) and run again") from None
                if not waiting:
                    logger.warning("another pipeline (pid %s) is running in %s; waiting up to %g s for it",
                                   holder, project, wait_seconds)
                    waiting = True
                time.sleep(0.5)
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def metrics_files(project: Path) -> list[Path]:
    """The DVC metrics files of the project's stages (dvc.yaml `metrics`), in dvc.yaml's order.
    The detail beside them (e.g. paths.eval_detail) is a plain output: not one of these."""
    from dvc.repo import Repo  # imported here: DVC is only needed once the flow runs

    with Repo(str(project)) as repo:
        return [Path(out.fs_path) for stage in repo.index.stages for out in stage.outs if out.metric]


def read_metrics(project: Path) -> dict:
    """The figures of the DVC metrics files that exist: {file stem: {name: value}}."""
    metrics = {path.stem: json.loads(path.read_text()) for path in metrics_files(project) if path.exists()}
    return {name: values for name, values in metrics.items() if isinstance(values, dict)}


def mlflow_run_id(project: Path, paths: Paths) -> str | None:
    """The MLflow run that trained the current model, if the train stage recorded one."""
    record = training_run(paths, project)
    return record["run_id"] if record else None
