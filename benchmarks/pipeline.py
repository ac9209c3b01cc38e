"""Benchmark: the default pipeline end to end, through `dvc repro` and through the Prefect flow.

    python -m benchmarks.pipeline [--skip-prefect] [--cold]

Each half runs in a scratch copy of the project (its tracked files and the new
ones git would track: what a fresh clone holds) with the default params, except
that the download reads this project's data/raw folder through a file:// source
(the download is cached: no network). Compile caches are this project's, as in
any run after the first: numba's (.numba_cache/) and Prefect's local API database
(params.yaml prefect.home). With --cold both are new and empty, as in a fresh clone's first
run. Printed per half: the wall time of each stage (from the moment DVC announces it to
the next), the whole run, a no-op rerun, and the peak memory of the largest process. Then
the start-up cost of each stage: the seconds `import stages.NAME` takes in a fresh Python.
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
from vae_pipeline.environment import TELEMETRY_OFF
from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.files import ROOT, copy_checkout, project_path
from vae_pipeline.settings import load_settings

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def environment(caches: dict | None = None) -> dict:
    """The Makefile's: the venv's python first on PATH (dvc.yaml runs `python -m ...`), telemetry off;
    `caches`: NUMBA_CACHE_DIR and PREFECT_HOME, else each scratch project has its own, empty."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), **TELEMETRY_OFF,
           "PYTHONUNBUFFERED": "1"}  # lines arrive when printed: their arrival times the stages
    for name in ("NUMBA_CACHE_DIR", "PREFECT_HOME"):
        env.pop(name, None)
    return {**env, **(caches or {})}


def scratch_project(parent: Path, params: dict) -> Path:
    """A copy of the project as a fresh clone has it, its download pointed at our raw files."""
    copy = parent / "project"
    copy_checkout(ROOT, copy)
    raw = ROOT / params["paths"]["raw_dir"] / params["data"]["dataset"]
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
    stage_starts = []
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    tail = []
    for line in process.stdout:
        match = STAGE_LINE.search(line)
        if match:
            stage_starts.append((match.group(1), time.perf_counter() - started))
        tail = (tail + [line.rstrip()])[-20:]
    # wait4 gives the child's resource use; ru_maxrss covers its waited-for descendants too (KiB).
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    stages = {}
    for (name, begin), (_, end) in zip(stage_starts, stage_starts[1:] + [(None, seconds)]):
        stages[name] = end - begin
    return {"seconds": seconds, "code": process.returncode, "peak_mb": usage.ru_maxrss / 1024,
            "stages": stages, "tail": tail}


def report(title: str, full: dict, noop: dict) -> None:
    for result, what in ((full, "run"), (noop, "no-op rerun")):
        if result["code"] != 0:
            print(f"{title} {what} FAILED (exit {result['code']}):\n  " + "\n  ".join(result["tail"]))
    print(f"\n{title}: whole run {full['seconds']:.1f} s, peak memory {full['peak_mb']:.0f} MB; "
          f"no-op rerun {noop['seconds']:.1f} s")
    print("| stage | seconds |")
    print("| --- | ---: |")
    for name, seconds in full["stages"].items():
        print(f"| {name} | {seconds:.1f} |")
    rest = full["seconds"] - sum(full["stages"].values())
    print(f"| before the first stage (start-up, checks) | {rest:.1f} |")


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
    parser.add_argument("--skip-prefect", action="store_true", help="only the dvc repro half")
    parser.add_argument("--cold", action="store_true", help="empty numba cache and Prefect database")
    args = parser.parse_args()
    params = load_settings()
    raw = ROOT / params["paths"]["raw_dir"] / params["data"]["dataset"]
    if not raw.is_dir():
        raise PipelineError(f"{raw}: missing; run `python -m stages.download` first")
    print(f"machine: {machine()}")
    caches = None if args.cold else {"NUMBA_CACHE_DIR": str(ROOT / ".numba_cache"),
                                     "PREFECT_HOME": str(project_path(params["prefect"]["home"]))}
    env = environment(caches)
    print("caches: " + ("cold (new and empty, a fresh clone's first run)" if args.cold else
                        "warm (this project's numba cache and Prefect database, as any later run)"))
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as folder:
        project = scratch_project(Path(folder), params)
        report("dvc repro", timed_run(["dvc", "repro"], project, env), timed_run(["dvc", "repro"], project, env))
    if args.skip_prefect:
        print("\nPrefect flow: skipped (--skip-prefect)")
    else:
        with tempfile.TemporaryDirectory(prefix="bench-prefect-") as folder:
            project = scratch_project(Path(folder), params)
            # make run's command: the flow, and on the no-op rerun its one-line answer without Prefect.
            cmd = [sys.executable, "-m", "flows.make_run"]
            report("Prefect flow (python -m flows.make_run = make run)", timed_run(cmd, project, env),
                   timed_run(cmd, project, env))
    startup_costs()


if __name__ == "__main__":
    sys.exit(exit_code(main))
