"""The `vae-pipeline` flow: every DVC stage of dvc.yaml as a Prefect task, run through DVC.

`make run` (`python -m flows.pipeline`) runs it on Prefect's local API. Each task
runs `dvc repro --single-item <stage>` in the project, so DVC still decides what
is stale: an unchanged stage is skipped and dvc.lock stays the record of what
produced what. dvc.yaml stays the one definition of the DAG: the stage list is
read from it at run time, so a stage added there gets its task without a change
here.

  - the stages run one after another, upstream first, in dvc.yaml's order
    otherwise; a stage's output goes to the Prefect log;
  - params.yaml is checked before any stage runs: bad params fail at once;
  - only the download retries (a mirror may be down for a moment); any other
    failure (a NaN loss, exit code 2 from the stage) fails the run at once;
  - one pipeline per workspace: a second one waits for the first (with a
    message), then fails clearly, instead of tripping over DVC's lock midway;
  - at the end, a markdown artifact `vae-pipeline`: what ran, the metrics
    (reports/metrics/*.json), the report's path and the MLflow run.
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

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from vae_pipeline.files import ROOT, PipelineError
from vae_pipeline.tracking import RUN_TAGS_ENV, training_run
from vae_pipeline.params import load_params

LOCK_FILE = ".dvc/tmp/vae-pipeline.lock"        # in the project; .dvc/tmp is git-ignored by DVC


def stage_env(run_tags: dict) -> dict:
    """The environment of a DVC subprocess: the venv's python first on PATH (dvc.yaml runs
    `python -m stages.X`), telemetry off, and the run tags for MLflow."""
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            RUN_TAGS_ENV: json.dumps(run_tags)}


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
    """`dvc repro --single-item <stage>`: runs the stage if DVC finds it stale, else skips it."""
    logger = get_run_logger()
    started = time.perf_counter()
    code, lines = run_logged([sys.executable, "-m", "dvc", "repro", "--single-item", stage],
                             Path(project), stage_env(run_tags), logger)
    if code != 0:
        raise failure(f"stage '{stage}'", code, lines)
    ran = any(line.startswith(f"Running stage '{stage}'") for line in lines)
    # DVC's run cache: the same stage with the same deps and params ran before; outputs restored.
    restored = any(line.startswith(f"Stage '{stage}' is cached") for line in lines)
    return {"stage": stage, "ran": ran, "restored": restored,
            "seconds": round(time.perf_counter() - started, 1)}


def stage_order(project: Path) -> list[str]:
    """The stages of dvc.yaml, each after the stages it depends on, in dvc.yaml's order otherwise."""
    from dvc.repo import Repo      # imported here: DVC is only needed once the flow runs

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
    return ordered


@contextlib.contextmanager
def workspace_lock(project: Path, wait_seconds: float, logger):
    """Hold the project's pipeline lock: one pipeline per workspace, as DVC's own lock allows one
    `dvc repro`. A second pipeline waits up to `wait_seconds`, then fails with a clear message."""
    path = project / LOCK_FILE
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


def read_metrics(project: Path, params: dict) -> dict:
    """Every JSON in the metrics folder (reports/metrics/*.json): {file stem: {name: value}}."""
    folder = (project / params["paths"]["train_metrics"]).parent
    metrics = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    return {name: values for name, values in metrics.items() if isinstance(values, dict)}  # not tables


def mlflow_run_id(project: Path, params: dict) -> str | None:
    """The MLflow run that trained the current model, if the train stage recorded one."""
    record = training_run(params, project)
    return record["run_id"] if record else None


def summary(project: Path, params: dict, results: list[dict]) -> str:
    """The markdown of the run's artifact."""
    lines = [f"# vae-pipeline in `{project}`", "", "| stage | result | seconds |", "| --- | --- | ---: |"]
    outcome = {(True, False): "ran", (False, True): "restored from DVC's run cache",
               (False, False): "skipped: up to date"}
    lines += [f"| {r['stage']} | {outcome[r['ran'], r['restored']]} | {r['seconds']} |" for r in results]
    lines += ["", "## Metrics", "", "| metric | value |", "| --- | ---: |"]
    for name, values in read_metrics(project, params).items():
        lines += [f"| {name}.{key} | {value:.6g} |" for key, value in values.items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)]
    report = project / params["paths"]["report"]
    run_id = mlflow_run_id(project, params)
    lines += ["", f"**Report:** `{report}`" + ("" if report.exists() else " (not built)"),
              "", f"**MLflow run:** `{run_id}`" if run_id else "**MLflow run:** not recorded"]
    return "\n".join(lines) + "\n"


@flow(name="vae-pipeline")
def pipeline(project: str | None = None, run_tags: dict | None = None) -> list[dict]:
    """Run dvc.yaml's stages in `project` (default: this project), one task each.

    `run_tags` are added to the MLflow runs the stages start (with this flow run's id).
    Returns, per stage in the order run: {"stage", "ran", "restored" (from DVC's run cache), "seconds"}.
    """
    logger = get_run_logger()
    root = Path(project) if project else ROOT
    params = load_params(root / "params.yaml")     # bad params stop here, before any stage
    settings = params["prefect"]
    tags = {**(run_tags or {}), "prefect_flow_run_id": str(flow_run.id),
            "prefect_flow_run_name": flow_run.name}
    results = []
    with workspace_lock(root, settings["lock_wait_seconds"], logger):
        for stage in stage_order(root):
            options = {"name": stage, "task_run_name": stage}
            if stage == "download":
                # Only the download talks to the network; params were checked above, so what is
                # left to fail is a source, which may be back a little later.
                options.update(retries=settings["download_retries"],
                               retry_delay_seconds=settings["retry_delay_seconds"])
            results.append(run_stage.with_options(**options)(stage, str(root), tags))
    ran = [r["stage"] for r in results if r["ran"] or r["restored"]]
    logger.info("stages run or restored: %s", ", ".join(ran) if ran else "none, every stage is up to date")
    create_markdown_artifact(key="vae-pipeline", markdown=summary(root, params, results),
                             description="What ran, the metrics, the report and the MLflow run")
    return results


def main() -> None:
    from flows.local_api import run_on_local_api

    run_on_local_api(pipeline)


if __name__ == "__main__":
    main()
