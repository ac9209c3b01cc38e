"""The Prefect flows with real Prefect (a local API, PREFECT_HOME in a temp folder) and real DVC."""
import fcntl
import json
import logging
import os
import sqlite3
import subprocess
import threading
import time

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from flows.dvc_runner import stage_graph, workspace_lock
from flows.gate import gate_champion
from flows.local_api import local_api
from flows.make_run import nothing_to_do
from flows.pipeline import pipeline
from flows.sweep import dask_runner, sweep
from tests.conftest import VENV_BIN, copy_project, dvc_stages, pipeline_env, run_in, section, set_params
from vae_pipeline.errors import PipelineError
from vae_pipeline.params import load_params
from vae_pipeline.settings import Prefect, load_settings
from vae_pipeline.tracking import store


@pytest.fixture
def prefect_api(tmp_path):
    """Prefect's local API on a database of its own, for one test."""
    with local_api(tmp_path / "prefect-home") as url:
        yield url


def task_runs(flow_run_id) -> list:
    """The flow run's task runs as the API lists them, oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time)


def artifact(flow_run_id, key: str):
    """The flow run's one artifact of `key`."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                          flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert len(artifacts) == 1
    return artifacts[0]


def artifact_markdown(flow_run_id) -> str:
    return artifact(flow_run_id, "vae-pipeline").data


LOCK_FILE = load_settings().prefect.lock_file
GATE_TASK = gate_champion.name


def lock_settings(wait_seconds: float) -> Prefect:
    return section("prefect", lock_file=LOCK_FILE, lock_wait_seconds=wait_seconds)


def outputs_mtimes(project) -> dict:
    return {p: p.stat().st_mtime_ns for folder in ("data/raw", "models", "data/embeddings")
            for p in (project / folder).rglob("*") if p.is_file()}


# ---- the lock: no Prefect needed -------------------------------------------------------------

def test_a_second_pipeline_waits_for_the_first_then_gets_the_lock(tmp_path, caplog):
    log = logging.getLogger("test-lock")
    with workspace_lock(tmp_path, lock_settings(5), log):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        # A flock belongs to an open file, so a second open in this process contends like another process.
        got = []
        waiter = threading.Thread(target=lambda: got.append(_hold_briefly(tmp_path, log)))
        waiter.start()
        time.sleep(1.0)
        assert got == []                     # still waiting
    waiter.join(10)
    assert got == ["held"]
    assert "another pipeline" in caplog.text and "waiting up to 5 s" in caplog.text


def _hold_briefly(project, log) -> str:
    with workspace_lock(project, lock_settings(5), log):
        return "held"


def test_a_second_pipeline_fails_clearly_when_the_first_holds_on(tmp_path):
    log = logging.getLogger("test-lock")
    with workspace_lock(tmp_path, lock_settings(5), log):
        started = time.monotonic()
        with pytest.raises(PipelineError, match=rf"another pipeline \(pid {os.getpid()}\) is running"):
            with workspace_lock(tmp_path, lock_settings(0.5), log):
                pass
        assert time.monotonic() - started < 3


# ---- the pipeline flow -----------------------------------------------------------------------

def reaches(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each stage -> every stage upstream of it, near or far."""
    found = {}
    for stage, upstream in graph.items():        # stage_graph lists a stage after its upstream
        found[stage] = set(upstream).union(*(found[name] for name in upstream))
    return found


@pytest.mark.slow
def test_pipeline_flow_runs_each_stage_after_its_upstream_the_arms_at_once_then_skips_them_all(project,
                                                                                             prefect_api):
    stages, graph = dvc_stages(project), stage_graph(project)
    first = pipeline(project=str(project), return_state=True)
    assert first.is_completed(), first.message
    results = {r["stage"]: r for r in first.result()}
    assert sorted(results) == sorted(stages) and all(r["ran"] for r in results.values())
    # Each stage started after every stage it reads from had ended ...
    for stage, upstream in graph.items():
        assert all(results[stage]["started"] >= results[name]["ended"] for name in upstream), stage
    # ... and two stages of which neither reads from the other ran at the same time (DVC alone runs
    # one at a time; the DAG has such arms: after embed, the latent map and the evaluation).
    upstream_of = reaches(graph)
    independent = [(a, b) for a in stages for b in stages
                   if a < b and a not in upstream_of[b] and b not in upstream_of[a]]
    assert independent
    assert any(max(results[a]["started"], results[b]["started"]) < min(results[a]["ended"], results[b]["ended"])
               for a, b in independent), independent
    runs = task_runs(first.state_details.flow_run_id)
    assert sorted(r.name for r in runs[:-1]) == sorted(stages) and runs[-1].name == GATE_TASK
    assert all(r.state.is_completed() for r in runs)
    # The first version registered is the model in use: `make run` names it (nothing else moves the alias).
    decision = json.loads((project / load_settings(project / "params.yaml").paths.champion).read_text())
    assert decision["promoted"] and decision["champion"] is None
    assert "no champion yet: version 1 becomes champion" in artifact(first.state_details.flow_run_id, "champion").data
    # dvc.lock records what ran: DVC agrees that nothing is stale.
    assert run_in(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    markdown = artifact_markdown(first.state_details.flow_run_id)
    metrics = json.loads((project / "reports/metrics/train.json").read_text())
    assert "| train | ran |" in markdown and f"| train.test_kl | {metrics['test_kl']:.6g} |" in markdown
    assert "**MLflow run:** not recorded" in markdown or "**MLflow run:** `" in markdown
    # Links that lead somewhere: the MLflow run (embedded store: its URI) and the report; the metrics table.
    record = store.training_run(load_params(project / "params.yaml").paths, project)
    assert f"(runs:/{record['run_id']})" in artifact(first.state_details.flow_run_id, "mlflow-run").data
    assert (project / "reports/index.html").as_uri() in artifact(first.state_details.flow_run_id, "report").data
    table = json.loads(artifact(first.state_details.flow_run_id, "metrics").data)
    assert {"metric": "train.test_kl", "value": metrics["test_kl"]} in table

    before = outputs_mtimes(project)
    lock_before = (project / "dvc.lock").read_text()
    second = pipeline(project=str(project), return_state=True)
    assert second.is_completed(), second.message
    assert sorted(r["stage"] for r in second.result()) == sorted(stages)
    assert not any(r["ran"] or r["restored"] for r in second.result())
    assert sorted(r.name for r in task_runs(second.state_details.flow_run_id)) == sorted([*stages, GATE_TASK])
    assert "version 1 is already the champion" in artifact(second.state_details.flow_run_id, "champion").data
    assert outputs_mtimes(project) == before and before
    assert (project / "dvc.lock").read_text() == lock_before
    assert "| train | skipped: up to date |" in artifact_markdown(second.state_details.flow_run_id)

    # Nothing stale and the gate decided on this model: `make run` says so without starting Prefect.
    env = {k: v for k, v in pipeline_env().items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    quick = subprocess.run([str(VENV_BIN / "python"), "-m", "flows.make_run"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=120)
    assert quick.returncode == 0, quick.stderr[-2000:]
    assert quick.stdout == ("nothing to run: every stage of dvc.yaml is up to date, and version 1 of "
                            "'vae-decoder' is the champion\n")
    assert "prefect" not in (quick.stdout + quick.stderr).lower()
    assert outputs_mtimes(project) == before
    # ... but not when another tracking store is in use, or a stage is stale, or the workspace is locked.
    assert nothing_to_do(project)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'other.db'}")
        assert nothing_to_do(project) is None
    with workspace_lock(project, lock_settings(0), logging.getLogger()):
        assert nothing_to_do(project) is None
    set_params(project, report={"walk_steps": 7})
    assert nothing_to_do(project) is None


@pytest.mark.slow
def test_only_the_download_retries_and_deterministic_failures_fail_at_once(project, prefect_api, tmp_path):
    # Bad params: the flow stops before any stage.
    set_params(project, train={"epochs": 0})
    state = pipeline(project=str(project), return_state=True)
    assert state.is_failed() and "train.epochs" in state.message
    assert task_runs(state.state_details.flow_run_id) == []

    # An unreachable source: the download runs 1 + download_retries times, nothing after it.
    params = yaml.safe_load((project / "params.yaml").read_text())
    good_sources = params["data"]["sources"]
    set_params(project, train={"epochs": 2}, data={"sources": [f"file://{tmp_path}/nowhere"]},
               prefect={"download_retries": 1, "retry_delay_seconds": 0})
    state = pipeline(project=str(project), return_state=True)
    assert state.is_failed() and "every source failed" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert [(r.name, r.run_count) for r in runs if r.run_count] == [("download", 2)]
    assert all(r.state.name == "NotReady" for r in runs if r.name != "download")   # never started

    # A stage that exits 2 (batch larger than the data set): no retry, later stages never start.
    set_params(project, data={"sources": good_sources}, train={"batch_size": 100_000})
    state = pipeline(project=str(project), return_state=True)
    assert state.is_failed() and "stage 'train' failed" in state.message and "stage exit code 2" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert [(r.name, r.run_count, r.state.type.value) for r in runs if r.run_count] == [
        ("download", 1, "COMPLETED"), ("train", 1, "FAILED")]


@pytest.mark.slow
def test_a_failing_arm_stops_what_is_downstream_of_it_and_the_other_arm_ends_whole(built_project, tmp_path,
                                                                                   prefect_api):
    """evaluate fails while latent_map, which does not read from it, reruns: latent_map's outputs are
    whole and in dvc.lock, the report (downstream of both) never starts. DVC's repository lock, held
    by another process as the flow starts, makes the stages wait, not fail."""
    import zc.lockfile

    project = copy_project(built_project, tmp_path)
    set_params(project, latent_map={"min_dist": 0.2})               # latent_map and the report are stale
    dvc_yaml = yaml.safe_load((project / "dvc.yaml").read_text())
    dvc_yaml["stages"]["evaluate"]["cmd"] = "python -c \"raise SystemExit('evaluate broken on purpose')\""
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    downstream = [s for s, up in reaches(stage_graph(project)).items() if "evaluate" in up]
    assert downstream                                                # the report
    report_before = (project / "reports/index.html").read_bytes()

    dvc_lock = zc.lockfile.LockFile(str(project / ".dvc/tmp/lock"))   # DVC's own: `dvc repro` waits for it
    threading.Timer(5, dvc_lock.close).start()                       # (DVC alone gives up after 3 s)
    state = pipeline(project=str(project), return_state=True)
    assert state.is_failed() and "stage 'evaluate' failed" in state.message, state.message
    assert "Unable to acquire lock" not in state.message
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["evaluate"].state.is_failed() and runs["latent_map"].state.is_completed()
    assert all(runs[s].state.name == "NotReady" and not runs[s].run_count for s in downstream)
    assert GATE_TASK not in runs
    assert (project / "reports/index.html").read_bytes() == report_before
    # latent_map's new map is whole and recorded: DVC calls it up to date; evaluate stays stale.
    status = run_in(project, "dvc", "status", "--json").stdout
    assert "latent_map" not in json.loads(status) and "evaluate" in json.loads(status)


@pytest.mark.slow
def test_make_run_entry_point_keeps_prefect_home_in_the_project_and_respects_the_lock(project):
    # `python -m flows.pipeline` as `make run` calls it; PREFECT_HOME unset: the project's .prefect/.
    set_params(project, prefect={"lock_wait_seconds": 1})
    env = {k: v for k, v in pipeline_env().items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    lock = project / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        result = subprocess.run([str(VENV_BIN / "python"), "-m", "flows.pipeline"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: another pipeline (pid 4242) is running" in result.stderr
    assert (project / ".prefect" / "prefect.db").exists()
    assert not (project / "models").exists()        # no stage ran


# ---- the sweep -------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_of_two_points_on_two_dask_workers(project, prefect_api):
    set_params(project, sweep={"beta": [1, 4], "latent_dim": [2], "epochs": 1, "n_workers": 2})
    run_in(project, "git", "commit", "-qam", "a two-point sweep")       # the points run the commit
    settings = load_settings(project / "params.yaml").sweep
    state = sweep.with_options(task_runner=dask_runner(settings))(project=str(project), return_state=True)
    assert state.is_completed(), state.message
    results = sorted(state.result(), key=lambda r: r["beta"])
    assert [(r["beta"], r["latent_dim"]) for r in results] == [(1, 2), (4, 2)]
    assert results[0]["command"] == "dvc exp run -S train.beta=1 -S train.latent_dim=2 -S train.epochs=1"
    assert not any(r["restored"] for r in results)
    # Each point restored the shared download from the run cache and ran the training only.
    assert all(r["stages_run"] == ["train"] and r["stages_restored"] == ["download"] for r in results), results
    # Both at once on the two workers, each in a process of its own.
    assert results[0]["pid"] != results[1]["pid"]
    assert max(r["started"] for r in results) < min(r["started"] + r["seconds"] for r in results)
    # A larger beta buys a smaller KL.
    assert results[1]["metrics"]["train"]["test_kl"] < results[0]["metrics"]["train"]["test_kl"]
    flow_run_id = state.state_details.flow_run_id
    runs = task_runs(flow_run_id)
    assert sorted(r.name for r in runs) == ["beta=1 latent=2", "beta=4 latent=2"]
    assert all(r.state.is_completed() for r in runs)

    page = (project / "reports/sweep.html").read_text()
    assert "<svg" in page and "β=1, z=2" in page and "β=4, z=2" in page
    assert "dvc exp run -S train.beta=4 -S train.latent_dim=2 -S train.epochs=1" in page
    saved = json.loads((project / "reports/sweep.json").read_text())
    assert len(saved["points"]) == 2 and saved["failed"] == [] and saved["shared_stages"] == ["download"]
    # The download ran once, in the project, before the points; the points restored it from the run cache.
    assert (project / "data/raw/mnist").is_dir()
    # The points are DVC experiments of the project, with their params.
    shown = json.loads(run_in(project, "dvc", "exp", "show", "--json").stdout)
    experiments = {e["name"]: e for rev in shown for e in rev.get("experiments") or [] if e.get("name")}
    assert {r["exp_name"] for r in results} <= set(experiments)
    # MLflow: the parent run of the sweep, a FINISHED child per point.
    import mlflow
    client = mlflow.MlflowClient(store.default_tracking_uri(project))
    parent = client.get_run(saved["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["points_done"] == 2
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(r["mlflow_run_id"] for r in results)
    assert all(r.info.status == "FINISHED" for r in children)
    # The flow run's table of the points.
    table = artifact(flow_run_id, "sweep-points").data
    rows = json.loads(table) if isinstance(table, str) else table
    assert sorted((row["beta"], row["latent_dim"]) for row in rows) == [(1, 2), (4, 2)]
    # The project's own workspace trained nothing.
    assert not (project / "models").exists()


@pytest.mark.slow
def test_a_new_prefect_home_starts_from_the_first_database_built_on_the_machine(tmp_path, monkeypatch):
    """The local API's first database is kept, empty, in the user's cache; a new home gets a copy of
    it (no migrations to run) and works like one the server built itself."""
    from prefect import flow

    from flows.local_api import DATABASE, database_template, seeded_database

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = database_template()
    assert not template.exists()
    with local_api(tmp_path / "first"):
        pass
    assert template.exists()
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)   # the schema, no run

    @flow(name="seeded")
    def seeded() -> int:
        return 7

    (tmp_path / "second").mkdir()
    assert seeded_database(tmp_path / "second")            # a copy of the template, before any server
    with local_api(tmp_path / "second"):
        assert seeded() == 7
    with sqlite3.connect(tmp_path / "second" / DATABASE) as db:
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (1,)
    with sqlite3.connect(template) as db:          # the template stays empty
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)
