"""Every way DVC runs a stage keeps its record: the training's MLflow run and the version the evaluate
stage registers land in the project's one tracking store, and the run record that later stages, `make
serve` and retrains read names them, whether the stages ran under `dvc repro`, `dvc exp run` in the
workspace, `dvc exp run --temp`, the queue (`dvc queue start -j 2`), or in a git worktree. The temporary
copies DVC runs experiments in are deleted when they end: nothing of the record may live there.

One tiny project serves every way (its data downloaded and committed once); each way trains and
evaluates its own train.seed, which names its run.
"""
import time
from pathlib import Path

import pytest

from tests.conftest import make_project, run_in, set_params
from vae_pipeline.params import load_params
from vae_pipeline.tracking import store
from vae_pipeline.tracking.store import run_records, training_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_source) -> Path:
    """The tiny project with its data downloaded and committed: each way below trains and evaluates."""
    project = make_project(tmp_path_factory.mktemp("run-modes"), tiny_source)
    set_params(project, mlflow={"system_metrics_interval": None})
    run_in(project, "dvc", "repro", "download")
    run_in(project, "git", "add", "-A")
    run_in(project, "git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "data")
    return project


def recorded_in_store(project: Path, seed: int) -> dict:
    """The record of the training of train.seed=`seed`, after checking that its run finished in the
    project's store, that its decoder is registered there, and that the project's run record names both."""
    import mlflow

    params = load_params(project / "params.yaml")
    client = mlflow.MlflowClient(store.default_tracking_uri(project))
    experiment = client.get_experiment_by_name(params.mlflow.experiment_name)
    [run] = client.search_runs([experiment.experiment_id], f"params.`train.seed` = '{seed}'")
    assert run.info.status == "FINISHED"
    [version] = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    [record] = [r for r in run_records(params.paths, project).values() if r["run_id"] == run.info.run_id]
    assert record["model_version"] == str(version.version) and record["model_name"] == version.name
    return record


def stores_in(folder: Path) -> list[Path]:
    """Every tracking store, artifact folder and run record (by their names in params.yaml) in `folder`."""
    paths = load_params(folder / "params.yaml").paths.model_dump()
    names = {Path(paths[key]).name for key in ("tracking_store", "tracking_artifacts", "run_record")}
    return sorted(p.relative_to(folder) for name in names for p in folder.rglob(name))


def no_other_store(project: Path) -> None:
    """One store: the project's own, and no tracking store, artifacts or run record elsewhere in it."""
    paths = load_params(project / "params.yaml").paths.model_dump()
    assert stores_in(project) == sorted(Path(paths[key]) for key in ("tracking_store", "tracking_artifacts",
                                                                     "run_record"))


def copies_left(project: Path) -> list[Path]:
    """The temporary copies of the project DVC has not removed yet (each holds a dvc.yaml)."""
    return sorted(p.parent for p in (project / ".dvc" / "tmp").rglob("dvc.yaml"))


def wait_until(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(2)


def test_dvc_repro(project):
    set_params(project, train={"seed": 1})
    run_in(project, "dvc", "repro", "evaluate")
    record = recorded_in_store(project, 1)
    assert training_run(load_params(project / "params.yaml").paths, project) == record
    no_other_store(project)


def test_dvc_exp_run_in_the_workspace(project):
    run_in(project, "dvc", "exp", "run", "-n", "modes-workspace", "-S", "train.seed=2", "evaluate")
    assert training_run(load_params(project / "params.yaml").paths, project) == recorded_in_store(project, 2)
    no_other_store(project)


def test_dvc_exp_run_temp(project):
    run_in(project, "dvc", "exp", "run", "--temp", "-n", "modes-temp", "-S", "train.seed=3", "evaluate")
    assert copies_left(project) == []
    record = recorded_in_store(project, 3)
    no_other_store(project)
    # The experiment's model, brought into the workspace from DVC's cache, finds its run (as a later
    # stage or `make serve` would). (`dvc exp apply` would also check out the outputs of the stages
    # that never ran here.)
    run_in(project, "dvc", "exp", "branch", "modes-temp", "modes-temp")
    run_in(project, "git", "checkout", "modes-temp", "--", "dvc.lock")
    run_in(project, "dvc", "checkout", load_params(project / "params.yaml").paths.model_dump()["model_dir"])
    assert training_run(load_params(project / "params.yaml").paths, project) == record


def test_dvc_queue_two_at_once(project):
    for seed in (4, 5):
        run_in(project, "dvc", "exp", "run", "--queue", "-n", f"modes-queue-{seed}", "-S", f"train.seed={seed}",
               "evaluate")
    run_in(project, "dvc", "queue", "start", "-j", "2")
    try:
        def finished():
            status = run_in(project, "dvc", "queue", "status").stdout
            assert "Failed" not in status, status + run_in(project, "dvc", "queue", "logs", "modes-queue-4",
                                                           check=False).stdout
            return status.count("Success") == 2
        wait_until(finished, "the two queued experiments")
        wait_until(lambda: copies_left(project) == [], "DVC to remove the queue's copies", 60)
    finally:
        run_in(project, "dvc", "queue", "stop", check=False)
        wait_until(lambda: "Worker status: 0 active, 0 idle" in run_in(project, "dvc", "queue", "status").stdout,
                   "the queue's workers to stop", 60)
    # Both trainings finished together: the run record kept both.
    assert recorded_in_store(project, 4)["run_id"] != recorded_in_store(project, 5)["run_id"]
    no_other_store(project)


def test_a_git_worktree(project):
    worktree = project.parent / "worktree"
    run_in(project, "git", "worktree", "add", "-q", str(worktree))
    set_params(worktree, train={"seed": 6})
    run_in(worktree, "dvc", "repro", "evaluate")
    record = recorded_in_store(project, 6)
    assert stores_in(worktree) == []
    # A later stage in the worktree finds its run.
    assert training_run(load_params(worktree / "params.yaml").paths, worktree) == record
    no_other_store(project)
