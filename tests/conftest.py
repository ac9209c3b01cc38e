"""Shared fixtures: a tiny IDX data set, a throwaway copy of the project, the tiny projects built
once per run (built_project, built_fashion), and the helpers every test uses to change a copy's
params and to read dvc.yaml's stages.

Nothing here touches the network: the tiny data set is written by the test
session and served to the download stage as a `file://` source.

The tests by layer: unit/ (no pipeline run, seconds), pipeline/ (stages, flows, DVC and MLflow on the
tiny data), reliability/ (bad input, damaged outputs, crashes, attacks, fuzzing, concurrency) and
stack/ (the team stack, started for real).
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from vae_pipeline.environment import TELEMETRY_OFF
from vae_pipeline.files import ROOT, copy_checkout, home_path
from vae_pipeline.ml.data import FILES, write_idx
from vae_pipeline.params import Pipeline, Section, load_params
from vae_pipeline.settings import Settings

VENV_BIN = Path(sys.executable).parent
# Every tiny project the tests build maps its latent space with UMAP, whose numba code takes about 20 s
# to compile into an empty cache: the tests' projects share this checkout's (params paths.numba_cache,
# in the project's home), as the checkouts and experiments of one project do.
os.environ.setdefault("NUMBA_CACHE_DIR", str(home_path(load_params().paths.numba_cache)))


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images of 10 classes: a fixed blurry blob pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(1234).random((10, 7, 7)) > 0.6
    templates = np.kron(templates, np.ones((4, 4))) * 255.0        # 7x7 -> 28x28
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = templates[labels] * rng.uniform(0.6, 1.0, (n, 1, 1)) + rng.normal(0, 20, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_dataset(folder: Path, n_train: int, n_test: int) -> dict[str, str]:
    """Write the four IDX files of a tiny data set; return their SHA-256 checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_digits(n_train, seed=1)
    test_x, test_y = make_digits(n_test, seed=2)
    arrays = dict(zip(FILES, [train_x, train_y, test_x, test_y]))
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def build_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name` in this run's temporary folder, made by `build(folder)` once per run.

    Under pytest-xdist the workers share it: the first that asks builds it behind a file lock (in the
    folder above the workers' own, pytest-xdist's recipe), the others wait for it and use it. A failed
    build is not tried again: the others fail at once, with its error.
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    folder, done, failed = shared / name, shared / f"{name}.done", shared / f"{name}.failed"
    with FileLock(shared / f"{name}.lock"):
        if failed.exists():
            raise AssertionError(f"{name}: another worker's build of it failed:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)     # what a worker killed while building left
            try:
                build(folder)
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, worker_id) -> tuple[Path, dict]:
    """A local source of 2,000 training and 500 test images, and its checksums (one per run)."""
    folder = build_once(tmp_path_factory, worker_id, "tiny-mnist", lambda f: write_dataset(f, 2000, 500))
    return folder, {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def tiny_params(source: Path, checksums: dict, **overrides) -> dict:
    """The project's params.yaml with the tiny source, 2 epochs, 1 thread; `overrides` as section={key: v}."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(sources=[f"file://{source}"], sha256=checksums)
    params["train"].update(epochs=2, threads=1, batch_size=128)
    params["evaluate"].update(iwae_samples=10)  # few IWAE draws: seconds, not a minute
    for section, values in overrides.items():
        params[section].update(values)
    return params


def section(name: str, **values) -> Section:
    """The project's params.yaml section `name`, typed and checked, with `values` changed: what a function
    that takes one section (train_epoch, epoch_images, workspace_lock, ...) gets in a test."""
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())[name]
    return Settings.model_fields[name].annotation.model_validate({**defaults, **values})


def pipeline_env() -> dict:
    """The environment the Makefile sets: the venv first on PATH, telemetry off."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **TELEMETRY_OFF}


def run_in(project: Path, *cmd: str, check: bool = True, timeout: int = 600,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in `project` with pipeline_env() plus `env`; raise with its output unless it exits 0."""
    result = subprocess.run(cmd, cwd=project, env={**pipeline_env(), **(env or {})}, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


def make_project(folder: Path, tiny_source) -> Path:
    """A fresh git repo in folder/project holding what a clone of the project holds, on the tiny config."""
    copy = folder / "project"
    copy_checkout(ROOT, copy)
    source, checksums = tiny_source
    (copy / "params.yaml").write_text(yaml.safe_dump(tiny_params(source, checksums), sort_keys=False))
    run_in(copy, "git", "init", "-q")
    run_in(copy, "git", "add", "-A")
    run_in(copy, "git", "-c", "user.name=test", "-c", "user.email=test@localhost",
           "commit", "-qm", "tiny config")
    return copy


def set_params(project: Path, **sections) -> dict:
    """Change the project's params.yaml, e.g. set_params(project, train={"epochs": 4}); return the new params."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def put_data(project: Path, tiny_source) -> Path:
    """The tiny data set in the project's raw folder, as the download stage would leave it."""
    folder, _ = tiny_source
    params = yaml.safe_load((project / "params.yaml").read_text())
    raw = project / params["paths"]["raw_dir"] / params["data"]["dataset"]
    raw.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(folder / name, raw / name)
    return raw


def relocate(params: dict, folder: Path) -> Pipeline:
    """`params` (as read) with every path and the MLflow store under `folder`, checked: for a test that
    runs a stage in this process (whose project root is the checkout itself)."""
    paths = {key: str(folder / path) for key, path in params["paths"].items()}
    return Pipeline.of({**params, "paths": paths,
                        "mlflow": {**params["mlflow"], "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}})


def dvc_stages(project: Path = ROOT) -> list[str]:
    """The stages of dvc.yaml, in its order."""
    return list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])


def stages_with_param(key: str, project: Path = ROOT) -> list[str]:
    """The stages whose dvc.yaml `params` name `key` (section.name) or its whole section, sorted:
    the ones `dvc status` calls stale when the key changes."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return sorted(name for name, spec in stages.items()
                  if {key, key.split(".")[0]} & set(map(str, spec.get("params", []))))


def downstream(stage: str, project: Path = ROOT) -> list[str]:
    """`stage` and every stage made from its outputs, directly or not (DVC's own graph), sorted."""
    import networkx
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        graph = repo.index.graph                        # edges: stage -> the stages it reads from
        [node] = [s for s in graph if s.name == stage]
        return sorted([stage, *(s.name for s in networkx.ancestors(graph, node))])


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` ran, from its output, sorted."""
    return sorted(re.findall(r"^Running stage '([^']+)'", output, re.M))


# The reliability report (`make reliability`) and its helpers.
pytest_plugins = ["tests.reliability.report"]


def pytest_configure(config):
    # pyproject.toml's testpaths name the layers' folders: a test file beside this one would never run.
    if stray := sorted(p.name for p in Path(__file__).parent.glob("test_*.py")):
        raise pytest.UsageError(f"tests/{stray[0]}: move it into its layer's folder (see tests/conftest.py)")


# `make test` runs the files on two pytest-xdist workers (`-n 2 --dist loadgroup`): a group's tests
# run in one worker, in order, so a module-scoped fixture (a trained project, a server) is made once.
# A file's group is the file, unless its tests name one: the team-stack files share `team-stack`, so
# two stacks (each a PostgreSQL, an S3 store and three servers) never start at once on the 2 cores.
# The groups go to the workers in the order of pyproject.toml's testpaths, so that the longest group,
# the team stack's, starts first. The tiny built projects are made once for both workers (build_once).
@pytest.hookimpl(tryfirst=True)     # before xdist reads the marks
def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_xdist_node_collection_finished(node, ids):
    """Stop unless xdist marked the groups in the node ids (its only channel to its scheduler): without
    them every test goes to any worker, two team stacks start at once, and module fixtures are made
    twice, silently (pytest 9.2 broke it, pytest-xdist#1386; see pyproject.toml)."""
    if node.config.getvalue("dist") == "loadgroup" and not all("@" in nodeid for nodeid in ids):
        pytest.exit("pytest-xdist did not mark the test groups in the node ids (pytest-xdist#1386): "
                    "install pytest<9.2 (`pip install -e '.[test]'`)", returncode=4)


@pytest.fixture(autouse=True)
def own_tracking_store(monkeypatch):
    """Tests log to stores they make themselves, never to a server named in the caller's environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VAE_RUN_TAGS", raising=False)


@pytest.fixture
def project(tmp_path, tiny_source) -> Path:
    """A fresh git repo holding a copy of the project, its params set to the tiny config."""
    return make_project(tmp_path, tiny_source)


# ---- the tiny projects built once per run: tests only read them, or work on a copy ----------

BUILD_LOG = "repro.log"                      # beside the built project: what its `dvc repro` printed
BUILD_RUN_TAGS = {"built_by": "tests"}       # VAE_RUN_TAGS of built_project's build (its MLflow run's tags)
# built_project's build: its run tagged BUILD_RUN_TAGS, and system metrics sampled every 0.1 s (the tiny
# training takes about a second; mlflow.system_metrics_interval's 10 s would see none).
BUILD_ENV = {"VAE_RUN_TAGS": json.dumps(BUILD_RUN_TAGS), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.1"}


def build_project(folder: Path, tiny_source, env: dict | None = None, **sections) -> None:
    """A tiny project in folder/project (params.yaml changed by `sections`, uncommitted), after a full
    `dvc repro` with `env`; what that printed in folder/BUILD_LOG."""
    project = make_project(folder, tiny_source)
    if sections:
        set_params(project, **sections)
    with pytest.MonkeyPatch.context() as patch:       # as own_tracking_store does for each test
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("VAE_RUN_TAGS", raising=False)
        result = run_in(project, "dvc", "repro", env=env)
    (folder / BUILD_LOG).write_text(result.stdout + result.stderr)


def first_build_output(project: Path) -> str:
    """What the `dvc repro` that built a built_project or built_fashion printed (stdout, then stderr)."""
    return (project.parent / BUILD_LOG).read_text()


@pytest.fixture(scope="session")
def built_project(tmp_path_factory, worker_id, tiny_source) -> Path:
    """A tiny project after a full `dvc repro` with BUILD_ENV: every stage's outputs and the MLflow
    store (one run, version 1 of the registered decoder).

    Built once per run, shared by the pytest-xdist workers: tests only read it, or work on a copy
    (copy_project).
    """
    folder = build_once(tmp_path_factory, worker_id, "built",
                        lambda folder: build_project(folder, tiny_source, BUILD_ENV))
    return folder / "project"


@pytest.fixture(scope="session")
def built_fashion(tmp_path_factory, worker_id, tiny_source) -> Path:
    """built_project on Fashion-MNIST's class names (data.dataset: fashion-mnist), with more IWAE
    draws and trustworthiness samples, params.yaml uncommitted. Once per run, like built_project."""
    sections = {"data": {"dataset": "fashion-mnist"},
                "evaluate": {"iwae_samples": 20}, "latent_map": {"trustworthiness_samples": 300}}
    folder = build_once(tmp_path_factory, worker_id, "built-fashion",
                        lambda folder: build_project(folder, tiny_source, **sections))
    return folder / "project"


def copy_project(project: Path, folder: Path) -> Path:
    """A copy of `project`, outputs, DVC cache, git history and MLflow store included, for a test to change.

    The store and the run record name the project's own folder (the artifacts' location, the store's
    URI): in the copy they name the copy's, so that what a test logs stays in its copy.
    """
    copy = Path(shutil.copytree(project, folder / "project", symlinks=True))
    old, new = f"{project}/", f"{copy}/"
    if (copy / "mlflow.db").exists():
        with contextlib.closing(sqlite3.connect(copy / "mlflow.db")) as db, db:
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                        db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                   f'WHERE instr("{column}", ?) > 0', (old, new, old))
    record = copy / yaml.safe_load((copy / "params.yaml").read_text())["paths"]["run_record"]
    if record.exists():
        record.write_text(record.read_text().replace(old, new))
    return copy


def wait_healthy(url: str, process: subprocess.Popen, log: Path, seconds: float) -> None:
    """Wait until the MLflow server at `url` answers /health; fail with the end of its `log` when
    `process` ends first or `seconds` pass."""
    import requests

    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url}: the MLflow server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (its own SQLite store and artifact folder); stopped afterwards."""

    port, folder = free_port(), tmp_path / "server"
    folder.mkdir()
    env = {**pipeline_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(folder / "server.log", "w") as server_log:
        process = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
             "--artifacts-destination", str(folder / "artifacts")],
            cwd=folder, env=env, stdout=server_log, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: the finalizer stops its workers too
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, folder / "server.log", 120)
        yield url, folder
    finally:
        stop_process_group(process)


@pytest.fixture
def browser():
    """Debian's headless chromium driven by Playwright (tests/browser.py); the test is skipped, saying why, where
    chromium is missing. One per test, not per session: while Playwright's sync API runs, the main thread has an
    asyncio loop marked running, and any later test's asyncio.run() in this process would fail."""
    from tests.browser import NO_CHROMIUM, launch

    if shutil.which("chromium") is None:
        pytest.skip(NO_CHROMIUM)
    with launch() as chromium:
        yield chromium


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server started with start_new_session=True, and its children: TERM, then KILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
