"""Benchmark: the default pipeline end to end, through `dvc repro` and through the Prefect flow,
against the article's training script alone in the same run.

    python -m benchmarks.pipeline [--skip-dvc] [--skip-prefect] [--skip-article] [--cold | --fresh-clone]
                                  [--against REV]

Each half runs in a scratch copy of the project (its tracked files and the new ones git would
track: what a fresh clone holds) with the default params, except that the download reads this
project's data/raw folder through a file:// source (the download is cached: no network). Compile
caches are this project's, as in any run after the first: numba's (.numba_cache/) and Prefect's
local API database (params.yaml prefect.home). With --cold both are new and empty, as in a fresh
clone's first run. With --fresh-clone, numba's cache is this project's but each scratch copy has
its own new Prefect home, as a fresh clone's first `make run` has. With --against REV, the
Prefect half runs first on the project as it was at git revision REV (its own code: `git
archive`), then on this one: before and after, in one run. Printed per half: each stage's start
and wall time (from the moment DVC announces it to the flow's "Finished" line for its task, or
to the next stage under `dvc repro`), the whole run, the critical path (the slowest chain of
dvc.yaml's DAG), the stage time that ran beside another stage (the flow runs independent arms at
once), a no-op rerun, and the peak memory of the largest process. Then the article's script
alone (benchmarks/article.py: its 15-epoch loop and its whole process) and the ratio of the
flow's whole run to its loop. Last, the start-up cost of each stage: the seconds `import
stages.NAME` takes in a fresh Python.
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import machine, median
from flows.dvc_runner import stage_graph
from vae_pipeline.environment import TELEMETRY_OFF
from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.files import ROOT, copy_checkout, project_path
from vae_pipeline.settings import load_settings

STAGE_LINE = re.compile(r"Running stage '([^']+)'")
TASK_END = re.compile(r"Task run '([^']+)' - Finished in state")   # the flow's log: a stage's task ended


def environment(caches: dict | None = None) -> dict:
    """The Makefile's: the venv's python first on PATH (dvc.yaml runs `python -m ...`), telemetry off;
    `caches`: NUMBA_CACHE_DIR and PREFECT_HOME, else each scratch project has its own, empty."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), **TELEMETRY_OFF,
           "PYTHONUNBUFFERED": "1"}  # lines arrive when printed: their arrival times the stages
    for name in ("NUMBA_CACHE_DIR", "PREFECT_HOME"):
        env.pop(name, None)
    return {**env, **(caches or {})}


def scratch_project(parent: Path, params: dict, revision: str | None = None) -> Path:
    """A copy of the project as a fresh clone has it (of git `revision`, else of the working tree),
    its download pointed at our raw files."""
    copy = parent / "project"
    if revision:
        copy.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    else:
        copy_checkout(ROOT, copy)
    raw = ROOT / params.paths.raw_dir / params.data.dataset
    settings = yaml.safe_load((copy / "params.yaml").read_text())
    settings["data"]["sources"] = [f"file://{raw}"]
    (copy / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=copy, check=True, capture_output=True)
    return copy


def timed_run(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run cmd; its wall time, exit code, peak RSS of its largest process, and when each stage began."""
    started = time.perf_counter()
    starts, ends = {}, {}
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    tail = []
    for line in process.stdout:
        if match := STAGE_LINE.search(line):
            starts[match.group(1)] = time.perf_counter() - started
        elif match := TASK_END.search(line):
            ends[match.group(1)] = time.perf_counter() - started
        tail = (tail + [line.rstrip()])[-20:]
    # wait4 gives the child's resource use; ru_maxrss covers its waited-for descendants too (KiB).
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    stages = {}   # name -> (start, end): to its task's end, else (dvc repro) to the next stage's start
    for name, begin in starts.items():
        later = [t for t in starts.values() if t > begin]
        stages[name] = (begin, ends.get(name, min(later, default=seconds)))
    return {"seconds": seconds, "code": process.returncode, "peak_mb": usage.ru_maxrss / 1024,
            "stages": stages, "tail": tail}


def critical_path(stages: dict, graph: dict) -> tuple[float, list[str]]:
    """The slowest chain of stages through the DAG `graph` (stage -> upstream), by their wall times."""
    best = {}
    for name, upstream in graph.items():        # stage_graph lists each stage after its upstream
        before = max((best[u] for u in upstream if u in best), default=(0.0, []))
        if name in stages:
            before = (before[0] + stages[name][1] - stages[name][0], [*before[1], name])
        best[name] = before
    return max(best.values(), default=(0.0, []))


def beside_another(stages: dict) -> float:
    """Stage seconds that ran while another stage ran too: the sum of their times minus the time
    covered by at least one."""
    covered, reach = 0.0, float("-inf")
    for begin, end in sorted(stages.values()):
        covered += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    return sum(end - begin for begin, end in stages.values()) - covered


def report(title: str, full: dict, noop: dict, graph: dict) -> None:
    for result, what in ((full, "run"), (noop, "no-op rerun")):
        if result["code"] != 0:
            print(f"{title} {what} FAILED (exit {result['code']}):\n  " + "\n  ".join(result["tail"]))
    print(f"\n{title}: whole run {full['seconds']:.1f} s, peak memory {full['peak_mb']:.0f} MB; "
          f"no-op rerun {noop['seconds']:.1f} s")
    print("| stage | starts at | seconds |")
    print("| --- | ---: | ---: |")
    for name, (begin, end) in full["stages"].items():
        print(f"| {name} | {begin:.1f} | {end - begin:.1f} |")
    first = min((begin for begin, _ in full["stages"].values()), default=full["seconds"])
    last = max((end for _, end in full["stages"].values()), default=full["seconds"])
    print(f"| before the first stage (start-up, checks) | | {first:.1f} |")
    print(f"| after the last stage (champion gate, artifacts, exit) | | {full['seconds'] - last:.1f} |")
    seconds, path = critical_path(full["stages"], graph)
    print(f"critical path: {' -> '.join(path)}, {seconds:.1f} s; stage time run beside another stage: "
          f"{beside_another(full['stages']):.1f} s")


def article_script(env: dict) -> tuple[float, str]:
    """benchmarks/article.py in a fresh process: its loop's seconds and its line."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.article"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"benchmarks.article failed:\n{result.stderr[-2000:]}")
    line = result.stdout.strip().splitlines()[-1]
    return float(re.search(r"epochs in ([0-9.]+) s", line).group(1)), line


def startup_costs() -> None:
    """Seconds to import each stage module, and the heavy libraries, in a fresh Python (median of 3)."""
    stages = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
    modules = [f"stages.{s}" for s in stages] + ["torch", "pandas", "umap", "mlflow", "prefect", "dvc.repo"]
    print("\nStart-up: `python -c 'import M'` in a fresh process, median of 3 (Python alone: "
          f"{import_seconds('sys'):.2f} s)")
    print("| module | seconds |")
    print("| --- | ---: |")
    for module in modules:
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            print(f"| {module} | {import_seconds(module):.2f} |", flush=True)


def import_seconds(module: str) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                       env=environment({"NUMBA_CACHE_DIR": str(ROOT / ".numba_cache")}),
                       check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-dvc", action="store_true", help="no `dvc repro` half")
    parser.add_argument("--skip-prefect", action="store_true", help="no Prefect flow half")
    parser.add_argument("--skip-article", action="store_true", help="no run of the article's script")
    parser.add_argument("--cold", action="store_true", help="empty numba cache and Prefect database")
    parser.add_argument("--fresh-clone", action="store_true",
                        help="this project's numba cache, a new Prefect home in each scratch copy")
    parser.add_argument("--against", metavar="REV", help="also run the Prefect half on git revision REV, first")
    args = parser.parse_args()
    params = load_settings()
    raw = ROOT / params.paths.raw_dir / params.data.dataset
    if not raw.is_dir():
        raise PipelineError(f"{raw}: missing; run `python -m stages.download` first")
    print(f"machine: {machine()}")
    caches = None if args.cold else {"NUMBA_CACHE_DIR": str(ROOT / ".numba_cache"),
                                     "PREFECT_HOME": str(project_path(params.prefect.home))}
    if args.fresh_clone:
        del caches["PREFECT_HOME"]
    env = environment(caches)
    print("caches: " + ("cold (new and empty, a fresh clone's first run)" if args.cold else
                        "numba's warm, Prefect's home new (a fresh clone's first run on a used machine)"
                        if args.fresh_clone else
                        "warm (this project's numba cache and Prefect database, as any later run)"))
    flow = None
    if not args.skip_dvc:
        with tempfile.TemporaryDirectory(prefix="bench-dvc-") as folder:
            project = scratch_project(Path(folder), params)
            report("dvc repro", timed_run(["dvc", "repro"], project, env), timed_run(["dvc", "repro"], project, env),
                   stage_graph(project))
    for revision in ([args.against] if args.against else []) + [None]:
        if args.skip_prefect:
            break
        with tempfile.TemporaryDirectory(prefix="bench-prefect-") as folder:
            project = scratch_project(Path(folder), params, revision)
            # make run's command: the flow, and on the no-op rerun its one-line answer without Prefect.
            cmd = [sys.executable, "-m", "flows.make_run"]
            flow = timed_run(cmd, project, env)
            report(f"Prefect flow (python -m flows.make_run = make run) at {revision or 'the working tree'}", flow,
                   timed_run(cmd, project, env), stage_graph(project))
    if not args.skip_article:
        loop, line = article_script(env)
        print(f"\n{line}")
        if flow:
            print(f"make run's whole first run against the article's loop alone: {flow['seconds']:.1f} s / "
                  f"{loop:.1f} s = {flow['seconds'] / loop:.2f} (below 1: the whole pipeline is faster)")
    startup_costs()


if __name__ == "__main__":
    sys.exit(exit_code(main))
