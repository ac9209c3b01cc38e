"""The reliability report, and helpers for tests that damage things for real.

Tests marked `reliability` record one row each with the `reliability` fixture:
what was tried, what the pipeline did (exit code, the first line of its error)
and which stray files it left. `make reliability` (pytest -m reliability)
prints the rows as a table at the end, each with its test's result; plain
`pytest` runs the same tests and prints one summary line.
"""
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import run_in
from vae_pipeline.params import load_params
from vae_pipeline.tracking.runs import RUN_FILE

PROPERTY = "reliability"             # the rows travel in the test reports' user_properties, so that
KIND_ORDER = ["bad input", "damaged output", "fuzz", "fault", "attack", "secret", "concurrency"]
failed_tests: set[str] = set()
rows: list[dict] = []                 # every row of this session, gathered from the reports

# Checks of issue 8 that land with other work; their rows show as pending until then.
PENDING = [
]


@pytest.fixture
def reliability(request):
    """record(kind, case, outcome, exit_code, stray): add this test's row to the report."""
    def record(kind: str, case: str, outcome: str, exit_code="-", stray=()):
        row = {"test": request.node.nodeid, "kind": kind, "case": case, "outcome": outcome,
               "exit": str(exit_code), "stray": ", ".join(map(str, stray)) or "none"}
        request.node.user_properties.append((PROPERTY, row))
    return record


def pytest_runtest_logreport(report):
    # `pytest -n 2` (pytest-xdist) runs the tests in worker processes; their reports, user_properties
    # included, come back to this one, so the rows are read from the reports, never from a fixture.
    if report.failed:
        failed_tests.add(report.nodeid)
    if report.when == "teardown":        # the last report of a test holds all its properties
        rows.extend(value for name, value in report.user_properties if name == PROPERTY)


def pytest_terminal_summary(terminalreporter, config):
    if not rows:
        return
    bad = sum(row["test"] in failed_tests for row in rows)
    if "reliability" not in (config.option.markexpr or ""):
        terminalreporter.write_line(f"reliability: {len(rows)} checks, {bad} failed "
                                    "(`make reliability` prints the table)")
        return
    ordered = sorted(rows, key=lambda r: KIND_ORDER.index(r["kind"]) if r["kind"] in KIND_ORDER else 99)
    table = [(r["kind"], r["case"], short(r["outcome"], 90), r["exit"], r["stray"],
              "FAILED" if r["test"] in failed_tests else "ok") for r in ordered]
    table += [(kind, case, outcome, "", "", "pending") for kind, case, outcome in PENDING]
    header = ("kind", "what was tried", "what the pipeline did", "exit", "stray files", "result")
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    terminalreporter.section("reliability report")
    for row in [header, tuple("-" * w for w in widths), *table]:
        terminalreporter.write_line(" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    terminalreporter.write_line(f"{len(rows)} checks: {len(rows) - bad} ok, {bad} failed; "
                                f"{sum(r['stray'] != 'none' for r in rows)} left stray files; "
                                f"{len(PENDING)} pending")


def short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


# --- helpers for the tests -------------------------------------------------------------------

# Files a run may create without them being outputs of the pipeline.
NOT_OUTPUTS = ("__pycache__", ".hypothesis", ".pytest_cache", "mlartifacts")
# The MLflow store and the run records (paths.run_record; the unfinished run's, in paths.checkpoint_dir)
# record a failed run too, on purpose: they are tracking, not outputs. The test projects are copies
# of this checkout, with its paths (and their params.yaml may be broken on purpose).
PATHS = load_params()["paths"]
TRACKING_RECORDS = {"mlflow.db", PATHS["run_record"], str(Path(PATHS["checkpoint_dir"]) / RUN_FILE)}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (but .git and caches), with its size and modification time."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git" and d not in NOT_OUTPUTS]
        for name in names:
            stat = (Path(folder) / name).lstat()
            files[str((Path(folder) / name).relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def changed_files(root: Path, before: dict) -> list[str]:
    """Files under root that are new or changed since `before` (a snapshot), sorted."""
    after = snapshot(root)
    return sorted(name for name, stat in after.items()
                  if before.get(name) != stat and name not in TRACKING_RECORDS)


def run_stage(project: Path, stage: str, timeout: int = 300) -> tuple[int, str, list[str]]:
    """Run `python -m stages.<stage>` in project: (exit code, its error message, files it wrote).

    Paths in the message are shown relative to the project."""
    before = snapshot(project)
    result = run_in(project, sys.executable, "-m", f"stages.{stage}", check=False, timeout=timeout)
    _, marker, error = ("\n" + result.stderr).partition("\nerror: ")
    if not marker:  # no PipelineError: keep the end of whatever it printed (a traceback?)
        error = result.stderr.strip()[-300:]
    error = " ".join(error.replace(f"{project}/", "").split())
    return result.returncode, error, changed_files(project, before)
