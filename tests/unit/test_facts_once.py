"""Every fact once: the copies that cannot import their one source (the Makefile, .dvc/config,
.gitignore) agree with it, no two services default to one port, and the names shared between
parts of the project are written only where they are defined."""
import ast
import re
import subprocess

import pytest
import requests
import yaml

from stack.settings import S3_REGION, Stack
from tests.conftest import pipeline_env, run_in
from tests.unit.code_graph import project_modules
from vae_pipeline import environment
from vae_pipeline.files import ROOT
from vae_pipeline.settings import STACK_DVC_REMOTE, load_settings
from vae_pipeline.tracking import runs
from vae_pipeline.tracking.store import DATA_SHA256_TAG

SETTINGS = load_settings()


def default_ports() -> dict[str, int]:
    """Every port a service of the project binds by default, by its params.yaml key."""
    stack = SETTINGS.stack
    ports = {f"stack.{key}": value for key, value in stack.model_dump().items() if key.endswith("_port")}
    # SeaweedFS's inner servers take seaweed_port and the 8 ports above it.
    ports |= {f"stack.seaweed_port+{n}": stack.seaweed_port + n for n in range(1, 9)}
    return ports | {"serve.port": SETTINGS.serve.port, "mlflow_ui.port": SETTINGS.mlflow_ui.port}


def test_no_two_services_default_to_one_port():
    ports = default_ports()
    taken = {}
    for key, port in ports.items():
        taken.setdefault(port, []).append(key)
    assert {port: keys for port, keys in taken.items() if len(keys) > 1} == {}
    assert ports["mlflow_ui.port"] != ports["stack.mlflow_port"]      # `make mlflow-ui` beside the stack


def test_the_makefile_exports_what_the_code_defines():
    """The Makefile cannot import vae_pipeline/environment.py nor read params.yaml cheaply: the
    environment of its recipes must still be TELEMETRY_OFF, and PREFECT_HOME prefect.home."""
    shown = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "facts-env: ; @env", "facts-env"],
                           cwd=ROOT, capture_output=True, text=True, check=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}).stdout
    env = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert {name: env.get(name) for name in environment.TELEMETRY_OFF} == environment.TELEMETRY_OFF
    assert env["PREFECT_HOME"] == str(ROOT / SETTINGS.prefect.home)


def test_dvc_config_names_the_stack_remote_as_params_and_make_stack_do():
    """.dvc/config's remote for a clone that has not run `make stack` is the one `make stack` writes."""
    from dvc.config import Config

    remote = Config(dvc_dir=str(ROOT / ".dvc"), validate=False).load_one("repo")["remote"][STACK_DVC_REMOTE]
    stack = Stack.from_params(ROOT)
    assert (remote["url"], remote["endpointurl"], remote["region"]) == (stack.dvc_url, stack.s3_url, S3_REGION)


def test_gitignore_covers_every_path_that_is_no_dvc_output():
    """Each path of params.yaml that DVC does not track (and so ignores itself) is in .gitignore."""
    dvc_yaml = (ROOT / "dvc.yaml").read_text()
    outputs = set()
    for stage in yaml.safe_load(dvc_yaml)["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                outputs |= set(re.findall(r"\$\{paths\.(\w+)\}", str(entry)))
    untracked = {f"paths.{key}": path for key, path in SETTINGS.paths.model_dump().items() if key not in outputs}
    untracked |= {key: getattr(getattr(SETTINGS, key.split(".")[0]), key.split(".")[1])
                  for key in ("prefect.home", "prefect.lock_file", "stack.state_dir")}
    assert "paths.run_record" in untracked and "paths.model_dir" not in untracked
    # Asked as a file and as a folder (a pattern such as `.prefect/` matches folders only).
    asked = [name for path in untracked.values() for name in (path, path + "/")]
    ignored = set(subprocess.run(["git", "check-ignore", "--no-index", *asked], cwd=ROOT,
                                 capture_output=True, text=True).stdout.splitlines())
    assert sorted(key for key, path in untracked.items() if not {path, path + "/"} & ignored) == []


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_the_shared_environment_names_are_written_only_where_they_are_defined():
    """The telemetry-off variables and the stack's VAE_STACK_* names: one definition
    (vae_pipeline/environment.py); code elsewhere imports them (docstrings may name them)."""
    names = set(environment.TELEMETRY_OFF) | {value for key, value in vars(environment).items()
                                              if key.startswith("STACK_")}
    assert "VAE_STACK_GIT_PASSWORD" in names and "DO_NOT_TRACK" in names
    found = []
    for module, path in sorted(project_modules(ROOT).items()):
        if module == "vae_pipeline.environment" or module.startswith("tests"):
            continue
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        found += [f"{module}:{node.lineno} {node.value}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in names and id(node) not in skip]
    assert found == []


def test_the_gate_reads_the_data_tags_a_training_writes(tmp_path):
    """The champion gate compares runs by the data.sha256.* tags the train stage sets (tracking/runs.py)."""
    params = load_settings()
    params = params.model_copy(update={"paths": params.paths.model_copy(update={"raw_dir": str(tmp_path)})})
    (tmp_path / params.data.dataset).mkdir()
    (tmp_path / params.data.dataset / "images-idx3-ubyte").write_bytes(b"tiny")
    tags = runs.run_tags(params, "cpu")
    assert [key for key in tags if key.startswith(DATA_SHA256_TAG)] == [DATA_SHA256_TAG + "images-idx3-ubyte"]


@pytest.mark.slow
def test_make_deploy_names_the_deployment_from_params_and_describes_it_as_the_flow(project, tmp_path):
    """prefect.yaml holds neither the name nor the description: `make deploy` passes params.yaml's
    retrain.deployment (and cron, pool), the description is flows/retrain.py's."""
    from flows.local_api import local_api
    from flows.retrain import DESCRIPTION
    from stack.deploy import prefect_deploy

    params = load_settings(project / "params.yaml")
    params = params.model_copy(update={"retrain": params.retrain.model_copy(update={"deployment": "nightly"})})
    # (not prefect.yaml's old literal name)
    home = tmp_path / "prefect-home"
    with local_api(home) as api:
        env = {**pipeline_env(), "PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
        run_in(project, "prefect", "work-pool", "create", params.stack.work_pool, "--type", "process", env=env)
        prefect_deploy(project, params, env)
        deployment = requests.get(f"{api}/deployments/name/retrain/nightly", timeout=30).json()
    assert deployment["description"] == DESCRIPTION
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [params.retrain.schedule_cron]
    assert deployment["work_pool_name"] == params.stack.work_pool
