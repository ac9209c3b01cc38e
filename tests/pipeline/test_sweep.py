"""The sweep's parts that need no Dask: the commit it runs, the stages the points share, the recipe
a worker gets (no credential in it), and the point runner's module (no import of the project)."""
import ast
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from flows import sweep, sweep_args, sweep_point
from flows.sweep_args import OPERATING
from tests.conftest import run_in, set_params
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.params import load_params
from vae_pipeline.settings import Sweep, load_settings

PROJECT_PACKAGES = {"vae_pipeline", "stages", "flows", "commands", "stack", "benchmarks", "tests"}


def test_the_point_runner_imports_nothing_of_the_project():
    tree = ast.parse((ROOT / "flows" / "sweep_point.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & PROJECT_PACKAGES
    assert all(node.level == 0 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))


def test_the_point_runner_travels_by_value():
    import cloudpickle

    # The task's function is pickled with its code: a process that cannot import the project loads it.
    payload = cloudpickle.dumps(sweep_point.point_task())
    code = ("import pickle, sys\n"
            "class NoProject:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {sorted(PROJECT_PACKAGES)!r}:\n"
            "            raise ImportError('the project is not here: ' + name)\n"
            "sys.meta_path.insert(0, NoProject())\n"
            "task = pickle.loads(sys.stdin.buffer.read())\n"
            "print(task.name, task.fn.__globals__['run_point'].__globals__['credentialed'].__name__)\n")
    loaded = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, cwd="/",
                            timeout=120)
    assert loaded.returncode == 0, loaded.stderr.decode()[-2000:]
    assert loaded.stdout.decode().split() == ["run_point", "credentialed"]


def test_a_sweep_refuses_uncommitted_inputs_and_names_them(project):
    params = load_params(project / "params.yaml")
    head = run_in(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert sweep.sweep_commit(project, params.paths) == head
    # The operating sections (no stage reads them) do not count: the points get them from the sweep.
    current = yaml.safe_load((project / "params.yaml").read_text())
    set_params(project, **{section: {next(iter(current[section])): "changed"} for section in OPERATING})
    assert sweep.sweep_commit(project, params.paths) == head
    # What a stage reads does, named with its section, and so does code.
    run_in(project, "git", "checkout", "params.yaml")
    set_params(project, train={"lr": 0.01}, sweep={"epochs": 1})
    (project / "stages" / "train.py").write_text((project / "stages" / "train.py").read_text() + "\n# local edit\n")
    with pytest.raises(PipelineError, match=r"uncommitted changes to params.yaml \(train\), stages/train.py; .*"
                                            f"commit {head[:12]}.*`git commit`"):
        sweep.sweep_commit(project, params.paths)
    # As `python -m flows.sweep` says it: one line, before Prefect starts (no traceback), exit 2.
    refused = run_in(project, "python", "-m", "flows.sweep", check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: {project}: uncommitted changes to params.yaml (train), stages/train.py; the sweep runs "
        f"commit {head[:12]} on its workers: `git commit` (or `git stash`) them first"]
    # The pipeline's outputs and dvc.lock are no inputs: they do not count.
    (project / "dvc.lock").write_text("schema: '2.0'\n")
    run_in(project, "git", "checkout", "params.yaml", "stages/train.py")
    assert sweep.sweep_commit(project, params.paths) == head


def test_the_command_line_sets_the_grid_as_dvc_exp_run_does(project):
    settings = sweep_args.sweep_settings(project, sweep_args.overrides(sweep_args.parse(
        ["-S", "sweep.beta=[1, 4]", "-S", "sweep.latent_dim=[2]", "--set-param", "sweep.epochs=1"])))
    assert [(p["train.beta"], p["train.latent_dim"], p["train.epochs"]) for p in sweep.grid(settings.sweep)] \
        == [(1, 2, 1), (4, 2, 1)]
    assert load_settings(project / "params.yaml").sweep != settings.sweep     # the file is left alone
    # A bad value, key or section: the key, what is wrong, what is allowed, as for params.yaml; exit 2.
    sections = load_settings(project / "params.yaml")
    for args, message in [
        (["-S", "sweep.beta=[-1]"], "-S sweep.beta=[-1]: invalid params:\n  'sweep.beta' is [-1]; allowed: a list "
                                    f"of at least 1 items, each {Sweep.rule('beta').allowed.split('each ')[1]}"),
        (["-S", "sweep.nope=1"], "unknown key 'sweep.nope' (allowed: " + ", ".join(sections.sweep.model_dump()) + ")"),
        (["-S", "train.lr=0.1"], "-S train.lr: section 'train' is read by the stages"),
        (["-S", "sweep.epochs"], "-S sweep.epochs: expected KEY=VALUE"),
        (["--grid", "x"], "python -m flows.sweep: unrecognized arguments: --grid x; usage: "),
    ]:
        with pytest.raises(PipelineError) as error:
            sweep_args.sweep_settings(project, sweep_args.overrides(sweep_args.parse(args)))
        assert message in str(error.value), (args, str(error.value))
    refused = run_in(project, "python", "-m", "flows.sweep", "-S", "sweep.epochs=0", check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: -S sweep.epochs=0: invalid params:", f"  'sweep.epochs' is 0; allowed: {Sweep.rule('epochs').allowed}"]


def test_the_shared_stages_are_those_no_override_touches(project):
    overrides = set(sweep.grid(load_settings(project / "params.yaml").sweep)[0])
    assert sweep.shared_stages(project, "train", overrides) == ["download"]
    assert sweep.shared_stages(project, "evaluate", overrides) == ["download"]
    assert sweep.shared_stages(project, "latent_map", {"latent_map.n_neighbors"}) == \
        ["download", "train", "embed"]
    assert sweep.shared_stages(project, "train", {"data.sources"}) == []    # the download lists it
    with pytest.raises(PipelineError, match="sweep.stage: no stage 'nope'"):
        sweep.shared_stages(project, "nope", overrides)


def test_a_recipe_carries_no_credential(monkeypatch, tmp_path):
    secrets = {"VAE_STACK_GIT_PASSWORD": "git-secret-1", "AWS_SECRET_ACCESS_KEY": "s3-secret-2",
               "MLFLOW_TRACKING_PASSWORD": "mlflow-secret-3", "PREFECT_API_AUTH_STRING": "vae:prefect-secret-4"}
    for name, value in {**secrets, "VAE_STACK_GIT_URL": "http://10.0.0.1:8417/vae-pipeline.git",
                        "VAE_STACK_GIT_USER": "vae"}.items():
        monkeypatch.setenv(name, value)
    params = load_settings(ROOT / "params.yaml")
    settings = params.sweep.model_copy(update={"scheduler": "stack"})
    where = {"git_url": "http://10.0.0.1:8417/vae-pipeline.git", "push": True,
             "dvc_remote": {"name": "stack", "url": "s3://vae-pipeline/dvc"}}
    for uri in ("http://10.0.0.1:5000", "http://vae:mlflow-secret-3@10.0.0.1:5000"):
        recipe = sweep.recipe(sweep.grid(settings)[0], "tiny-sweep", "a" * 40, where, settings, params,
                              {"sweep": "tiny-sweep", "mlflow.parentRunId": "p"}, uri, ["reports/metrics/train.json"])
        text = json.dumps(recipe)
        assert not any(secret in text for secret in secrets.values()), text
    assert recipe["tracking_uri"] is None            # a URI with a password stays out
    assert recipe["ref"] == "sweep/tiny-sweep" and recipe["dvc_remote"]["name"] == "stack"


def test_git_gets_its_password_from_the_environment_never_from_arguments(monkeypatch):
    monkeypatch.setenv("VAE_STACK_GIT_USER", "vae")
    monkeypatch.setenv("VAE_STACK_GIT_PASSWORD", "pw-123")
    url = "http://10.0.0.1:8417/vae-pipeline.git"
    names = sweep.POINT_ENV                                          # what a recipe carries
    git = {k: v for k, v in sweep_point.with_git_auth(dict(os.environ), url, names).items() if k.startswith("GIT_")}
    assert git["GIT_CONFIG_KEY_0"] == f"http.{url}.extraHeader"
    assert git["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
    assert "pw-123" not in json.dumps(git)                          # base64 in a header, not in clear
    assert sweep_point.git_auth_env("/a/path", "vae", "pw-123") == {"GIT_TERMINAL_PROMPT": "0"}
    assert sweep_point.scrub("fatal: http://vae:pw-123@host", sweep_point.secrets_of(names["secrets"])) == \
        "fatal: http://vae:***@host"


def test_the_worker_takes_the_s3_endpoint_from_its_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.213.0.1:15502")
    text = sweep_point.dvc_remote_config({"name": "stack", "url": "s3://vae-pipeline/dvc"})
    assert "remote = stack" in text and "endpointurl = http://10.213.0.1:15502" in text
    local = sweep_point.dvc_remote_config({"name": "sweep-cache", "url": "/p/.dvc/cache"})
    assert "endpointurl" not in local and "url = /p/.dvc/cache" in local


# A Python that cannot import the project, however its paths are set (a worker on another machine).
BLOCKER = f"""
import sys
class NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {sorted(PROJECT_PACKAGES)!r}:
            raise ImportError('the project is not on this worker: ' + name)
sys.meta_path.insert(0, NoProject())
"""


@pytest.mark.slow
def test_a_point_reaches_a_dask_worker_that_cannot_import_the_project(tmp_path):
    """Prefect's task and its flow run context, as Dask sends them, unpickle on such a worker: the
    point runs there and fails only where its recipe is wrong (no such git repository)."""
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from flows.local_api import local_api
    from tests.conftest import VENV_BIN, pipeline_env, stop_process_group

    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    address = "tcp://127.0.0.1:15521"
    env = {**pipeline_env(), "PYTHONPATH": str(tmp_path / "blocker")}
    started = []
    try:
        for cmd in (["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "15521",
                     "--dashboard-address", "127.0.0.1:15522"],
                    ["distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard"]):
            started.append(subprocess.Popen([str(VENV_BIN / "python"), "-m", *cmd], cwd=tmp_path, env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                            start_new_session=True))

        @flow(task_runner=DaskTaskRunner(address=address))
        def one_point():
            with sweep.flow_seen_by_workers():
                future = sweep_point.point_task().submit({"git_url": str(tmp_path / "no-such-repo"),
                                                          "commit": "0" * 40, "exp_name": "x", "tags": {},
                                                          "overrides": {}, "env": sweep.POINT_ENV})
            try:
                future.result()
            except RuntimeError as e:
                return str(e)

        with local_api(tmp_path / "prefect-home"):
            from distributed import Client
            with Client(address, timeout="60s") as client:
                client.wait_for_workers(1, timeout=120)
            message = one_point()
        assert re.match(r"git fetch .*no-such-repo.* failed on ", message), message
    finally:
        for process in reversed(started):
            stop_process_group(process)
