"""The reliability report (a pytest plugin, loaded by tests/conftest.py).

Tests marked `reliability` record one row each with the `reliability` fixture:
what was tried, what the pipeline did (exit code, the first line of its error)
and which stray files it left. `make reliability` (pytest -m reliability)
prints the rows as a table at the end, each with its test's result; plain
`pytest` runs the same tests and prints one summary line.
"""
import pytest

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
