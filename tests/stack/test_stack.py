"""The team stack for real: `python -m stack up` in a fresh copy of the project, on free ports.

One stack serves the whole module (starting it takes half a minute or more), in this
order: it starts once and reports health; every service refuses a request without its
credentials (and admits one with them: git clone and push, a Dask client from a worker
kit copied elsewhere); eight writers log to the MLflow server on PostgreSQL;
docs/team-stack.md's and docs/sweeps.md's blocks run as written in the stack's checkout
(`make run` on it, `dvc push`, `dvc pull` in a fresh clone, a one-point sweep), then what
the checkouts say off the stack; a retrain fired by its schedule and run by the worker;
the three faults; `make stack-down` leaves no process, no secret was ever written where
it should not be, and a shell still pointed at the stack is told so. The eight writers
come first because they count every run in the store.
"""
import hashlib
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests

from stack import health, postgres, supervisor
from stack.settings import (
    CLIENT_ENV_NAMES,
    DASK_REQUIRE_ENCRYPTION,
    SERVICES,
    TLS_FILES,
    USER,
    Stack,
    load_secrets,
    read_env_file,
)
from tests.conftest import VENV_BIN, free_port, make_project, pipeline_env, run_in, set_params
from tests.doc_blocks import RUN_BY, run_docs
from tests.reliability.test_concurrency import check_nothing_lost, eight_writers_at_once
from vae_pipeline.environment import STACK_LEAVE
from vae_pipeline.params import load_params
from vae_pipeline.tracking import elsewhere, store
from vae_pipeline.tracking.runs import RUN_FILE

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.xdist_group("team-stack")]

try:
    postgres.bin_dir()
    NO_POSTGRES = None
except Exception as e:  # PipelineError: not installed (`make test` installs it as root)
    NO_POSTGRES = str(e)


def free_block(size: int) -> int:
    """The first of `size` consecutive free ports on 127.0.0.1 (SeaweedFS's inner servers)."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


def stack_ports() -> dict[str, int]:
    """The test stack's ports: 15 in a row from VAE_STACK_TEST_PORT_BASE when it is set (a machine
    shared by sessions that each keep to a range of ports), else free ones."""
    names = ("postgres_port", "s3_port", "mlflow_port", "prefect_port", "git_port", "dask_port")
    if os.environ.get("VAE_STACK_TEST_PORT_BASE"):
        base = int(os.environ["VAE_STACK_TEST_PORT_BASE"])
        return {**dict(zip(names, range(base, base + len(names)))), "seaweed_port": base + len(names)}
    return {**{name: free_port() for name in names}, "seaweed_port": free_block(9)}


def run_record(project: Path) -> dict:
    """The MLflow run that trained the project's current model (paths.run_record)."""
    return store.training_run(load_params(project / "params.yaml").paths, project)


def digest(folder: Path, outputs: list[str]) -> dict[str, str]:
    """SHA-256 of every file under the given outputs."""
    files = [p for name in outputs for p in sorted((folder / name).rglob("*")) + [folder / name] if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def report(reliability, kind: str, case: str, outcome: str) -> None:
    """A row of the reliability table, also printed whole (`pytest -rP` shows it; the table shortens it)."""
    print(f"{kind}: {case}: {outcome}")
    reliability(kind, case, outcome)


OUTPUTS = ["data/raw", "models", "data/embeddings", "data/latent_map.parquet", "reports/index.html",
           "reports/figures"]


def link_venv(project: Path) -> None:
    """project/.venv: the checkout's virtualenv, its parts linked, with a fresh install stamp of its own, so
    the Makefile's targets run in the project and never install (nor touch the shared venv's stamp)."""
    venv, linked = VENV_BIN.parent, project / ".venv"
    linked.mkdir()
    for part in venv.iterdir():
        if part.name != ".installed":
            (linked / part.name).symlink_to(part.resolve())
    (linked / ".installed").touch()        # newer than pyproject.toml: `make` finds the venv installed


class Running:
    """The started stack and what the tests need to reach it."""

    def __init__(self, base: Path, project: Path):
        self.base, self.project = base, project
        self.stack = Stack.from_params(project)
        self.secrets = load_secrets(self.stack)
        self.prefect_auth = (USER, self.secrets["prefect_password"])    # for the tests' own API calls
        # What `source .stack/env` gives a shell, plus the Makefile's PREFECT_HOME.
        self.env = {**read_env_file(self.stack.env_file), "PREFECT_HOME": str(project / ".prefect"),
                    "NUMBA_CACHE_DIR": os.environ["NUMBA_CACHE_DIR"]}   # tests/conftest.py's
        self.outputs = []            # every command's output, searched for secrets at the end

    def run(self, project: Path, *cmd, check=True, env=None, timeout=600):
        result = run_in(project, *cmd, check=check, env={**self.env, **(env or {})}, timeout=timeout)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def off_stack(self) -> dict:
        """The environment of a shell not pointed at the stack: the Makefile's, none of .stack/env's variables."""
        return {name: value for name, value in pipeline_env().items()
                if name not in read_env_file(self.stack.env_file) and name != "MLFLOW_TRACKING_URI"}

    def run_off_stack(self, project: Path, *cmd, timeout=600) -> subprocess.CompletedProcess:
        """`cmd` in a shell that never did `source .stack/env` (or did `deactivate_stack`); its exit not checked."""
        result = subprocess.run(cmd, cwd=project, env={**self.off_stack(), "PREFECT_HOME": self.env["PREFECT_HOME"]},
                                capture_output=True, text=True, timeout=timeout)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def sql(self, query: str, *args, database="mlflow") -> list[tuple]:
        connection = postgres.connect(self.stack, self.secrets["postgres_password"], database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, args)
                return cursor.fetchall()
        finally:
            connection.close()

    def s3_keys(self, prefix: str) -> list[str]:
        s3 = health.s3_client(self.stack, self.secrets)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.stack.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def control(self, action: str, service: str) -> None:
        """Stop or start one service through supervisord, as `supervisorctl stop NAME` would."""
        rpc = supervisor.proxy(self.stack).supervisor
        if action == "stop":
            rpc.stopProcess(service, True)
        else:
            rpc.startProcess(service, False)
            health.wait_healthy(service, self.stack, self.secrets, timeout=240)

    def mlflow(self):
        import mlflow
        return mlflow.MlflowClient(self.stack.mlflow_url)


@pytest.fixture(scope="module")
def running(tiny_source):
    if NO_POSTGRES:
        pytest.skip(NO_POSTGRES)
    # Not under pytest's tmp folder: that is mode 700, and when root starts the stack PostgreSQL runs
    # as the `postgres` user, which must reach its data folder.
    base = Path(tempfile.mkdtemp(prefix="vae-stack-"))
    base.chmod(0o755)
    project = make_project(base / "p", tiny_source)
    (base / "p").chmod(0o755)
    set_params(project, stack=stack_ports())
    run_in(project, "git", "commit", "-qam", "stack on free ports")
    link_venv(project)
    started = time.monotonic()
    first = run_in(project, "python", "-m", "stack", "up", timeout=900)
    stack = Running(base, project)
    stack.up_seconds = time.monotonic() - started
    stack.outputs.append(first.stdout + first.stderr)
    # This process's MLflow clients (and the writers it forks) log in as a `source .stack/env` shell would.
    credentials = {name: stack.env[name] for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(credentials)
    try:
        yield stack
    finally:
        for name in credentials:
            os.environ.pop(name, None)
        run_in(project, "python", "-m", "stack", "down", check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_a_second_up_does_nothing_and_status_shows_every_service_healthy(running, reliability):
    before = supervisor.processes(running.stack)
    again = running.run(running.project, "python", "-m", "stack", "up")
    assert "already running" in again.stdout
    assert {n: i["pid"] for n, i in supervisor.processes(running.stack).items()} == \
        {n: i["pid"] for n, i in before.items()}
    status = running.run(running.project, "python", "-m", "stack", "status")
    for name in SERVICES:
        line = next(line for line in status.stdout.splitlines() if line.startswith(name + " "))
        assert "RUNNING" in line and line.rstrip().endswith("ok") and running.stack.address(name) in line
    # Secrets, keys and configuration readable by the owner only.
    for name in ("secrets.json", "supervisord.conf", "s3.json", "mlflow-auth.ini", "env",
                 f"tls/{TLS_FILES['scheduler_key']}", f"tls/{TLS_FILES['worker_key']}"):
        assert (running.stack.state / name).stat().st_mode & 0o077 == 0, name
    # .stack/env carries every client variable but Dask's require-encryption (a local cluster's plain TCP)
    assert set(CLIENT_ENV_NAMES) - set(running.env) == {DASK_REQUIRE_ENCRYPTION}
    assert (running.project / ".dvc/config.local").stat().st_mode & 0o077 == 0
    assert run_in(running.project, "git", "status", "--porcelain").stdout == ""   # all of it git-ignored
    report(reliability, "stack", "`python -m stack up` on a fresh copy, then again",
                f"first start {running.up_seconds:.0f} s; the second found it running and changed nothing")


# A Dask client in a fresh process: Dask reads its TLS settings from the environment at import.
DASK_CLIENT = """
import sys
from distributed import Client
try:
    client = Client(sys.argv[1], timeout="15s")
except Exception as e:
    print("refused:", type(e).__name__)
else:
    print("connected:", client.scheduler_info()["address"])
    client.close()
"""
GIT_CREDENTIALS = "!f() { echo username=$VAE_STACK_GIT_USER; echo password=$VAE_STACK_GIT_PASSWORD; }; f"


def test_every_service_refuses_a_request_without_credentials(running, reliability):
    import psycopg2

    stack, secrets = running.stack, running.secrets
    refused = {}
    # MLflow's basic-auth app: its REST API without (or with wrong) credentials, then with them.
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    refused["mlflow"] = [requests.get(search, timeout=10).status_code,
                         requests.get(search, timeout=10, auth=(USER, "wrong")).status_code]
    assert refused["mlflow"] == [401, 401]
    assert requests.get(search, timeout=10, auth=(USER, secrets["mlflow_password"])).status_code == 200
    # Prefect's API auth string.
    flows = f"{stack.prefect_url}/api/flows/filter"
    refused["prefect"] = [requests.post(flows, json={}, timeout=10).status_code,
                          requests.post(flows, json={}, timeout=10, auth=(USER, "wrong")).status_code]
    assert refused["prefect"] == [401, 401]
    assert requests.post(flows, json={}, timeout=10, auth=running.prefect_auth).status_code == 200
    # S3: unsigned requests (no keys) cannot list, read or write the bucket.
    probe = f"{stack.s3_url}/{stack.bucket}/anonymous-probe"
    refused["s3"] = [requests.get(f"{stack.s3_url}/{stack.bucket}", timeout=10).status_code,
                     requests.put(probe, data=b"x", timeout=10).status_code,
                     requests.get(probe, timeout=10).status_code]
    assert refused["s3"] == [403, 403, 403]
    assert "anonymous-probe" not in running.s3_keys("")
    # PostgreSQL: a wrong password, and none.
    errors = []
    for password in ("wrong", ""):
        with pytest.raises(psycopg2.OperationalError) as error:
            postgres.connect(stack, password, "mlflow")
        errors.append(str(error.value).strip().splitlines()[-1][:80])
    refused["postgres"] = errors
    # git: a clone without credentials.
    anonymous = running.run(running.base, "git", "clone", "-q", stack.git_url, str(running.base / "anon"),
                            check=False, env={"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""})
    assert anonymous.returncode != 0 and not (running.base / "anon" / ".git").exists()
    refused["git"] = [line for line in anonymous.stderr.splitlines() if line.startswith("fatal")][:1]
    # Dask: a client speaking plain TCP to the TLS port (run_in: this process's environment, which has
    # none of .stack/env's Dask TLS settings), and TLS trusting the stack's CA but with no certificate.
    plain = run_in(running.base, "python", "-c", DASK_CLIENT, stack.dask_address.replace("tls://", "tcp://"))
    assert plain.stdout.startswith("refused"), plain.stdout + plain.stderr
    context = ssl.create_default_context(cafile=stack.tls_dir / TLS_FILES["ca"])
    context.check_hostname = False                       # as Dask does: the stack's own CA, names unchecked
    with pytest.raises(ssl.SSLError) as no_certificate:
        with socket.create_connection((stack.host, stack.dask_port), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"hello")
                tls.recv(1)                              # TLS 1.3: the server's verdict comes after the handshake
    refused["dask"] = [plain.stdout.strip(), f"TLS without a certificate: {no_certificate.value.reason}"]
    report(reliability, "attack", "a request without credentials to each stack service",
           "; ".join(f"{name}: {', '.join(map(str, values))}" for name, values in refused.items()))


def test_a_worker_kit_copied_elsewhere_reaches_git_and_dask(running, reliability):
    stack = running.stack
    kit = running.base / "kit"
    made = running.run(running.project, "python", "-m", "stack", "worker-kit", str(kit))
    assert "worker kit" in made.stdout
    assert sorted(str(p.relative_to(kit)) for p in kit.rglob("*") if p.is_file()) == \
        sorted(["env", *(f"tls/{TLS_FILES[name]}" for name in ("ca", "worker_cert", "worker_key"))])
    for name in ("env", f"tls/{TLS_FILES['worker_key']}"):
        assert (kit / name).stat().st_mode & 0o077 == 0, name
    assert str(running.project) not in (kit / "env").read_text()       # nothing of the project's folder
    # Another host mounts the kit elsewhere: the TLS paths follow it.
    elsewhere = running.base / "host2" / "kit"
    shutil.copytree(kit, elsewhere)
    env = read_env_file(elsewhere / "env")
    assert set(CLIENT_ENV_NAMES) <= set(env)
    assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == str(elsewhere / "tls" / TLS_FILES["ca"])
    assert env["VAE_STACK_DASK_ADDRESS"] == stack.dask_address and env["VAE_STACK_GIT_URL"] == stack.git_url

    workdir = running.base / "host2"
    connected = run_in(workdir, "python", "-c", DASK_CLIENT, env["VAE_STACK_DASK_ADDRESS"], env=env)
    assert connected.stdout.strip() == f"connected: {stack.dask_address}", connected.stdout + connected.stderr

    # git with the kit's credentials (a credential helper reads them from the environment): clone, push.
    git = ["git", "-c", f"credential.helper={GIT_CREDENTIALS}", "-c", "user.name=worker",
           "-c", "user.email=worker@localhost"]
    running.run(running.project, *git, "push", "-q", env["VAE_STACK_GIT_URL"], "HEAD:main", env=env)
    clone = workdir / "clone"
    running.run(workdir, *git, "clone", "-q", env["VAE_STACK_GIT_URL"], str(clone), env=env)
    (clone / "from-a-worker").write_text("pushed over HTTP\n")
    running.run(clone, *git, "add", "from-a-worker", env=env)
    running.run(clone, *git, "commit", "-qm", "a worker's commit", env=env)
    running.run(clone, *git, "push", "-q", "origin", "HEAD:main", env=env)
    head = running.run(clone, "git", "rev-parse", "HEAD").stdout.strip()
    assert running.run(running.base, "git", "--git-dir", str(stack.git_root / "vae-pipeline.git"),
                       "rev-parse", "main").stdout.strip() == head
    report(reliability, "stack", "a worker kit copied to another folder",
           "Dask client with its TLS files connected to the scheduler; git clone, commit and push over HTTP "
           "with its credentials")


def test_eight_writers_on_the_stack_lose_nothing(running, tmp_path, reliability):
    found = eight_writers_at_once(running.stack.mlflow_url, tmp_path)
    check_nothing_lost(found, "the stack's MLflow server on PostgreSQL", reliability)


DOCS = RUN_BY["tests/stack/test_stack.py"]


def test_the_stack_docs_run_as_written(running, reliability):
    """docs/team-stack.md's and docs/sweeps.md's blocks in the stack's own checkout, in one shell, on the
    running stack: a second `make stack`, `make run` on it, `dvc push`, a clone that pulls everything,
    a one-point sweep. Then what they left is checked, and what the checkouts say off the stack."""
    project = running.project
    started = time.monotonic()
    # A shell not yet pointed at the stack (`source .stack/env` is in the docs), with a git identity.
    outputs = run_docs(project, DOCS, {**running.off_stack(), **GIT_IDENTITY}, timeout=1500)
    seconds = time.monotonic() - started
    running.outputs += outputs.values()
    assert "already running" in next(iter(outputs.values()))           # the second `make stack`

    # `make run`'s MLflow run is in PostgreSQL, its model and registered decoder in S3.
    record = run_record(project)
    assert record["tracking_uri"] == running.stack.mlflow_url
    assert running.sql("SELECT status FROM runs WHERE run_uuid = %s", record["run_id"]) == [("FINISHED",)]
    keys = running.s3_keys("mlflow/")
    assert any(key.endswith(f"{record['run_id']}/artifacts/model/vae.safetensors") for key in keys)
    assert any(key.endswith("/data/model.pt2") for key in keys)   # the registered decoder (in the pyfunc)
    assert running.s3_keys("dvc/")
    # The clone pulled every output, byte for byte, and its decoder draws the same images.
    clone = project.parent / "vae-clone"
    assert digest(clone, OUTPUTS) == digest(project, OUTPUTS)
    import torch

    from vae_pipeline.ml.model import load_model
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = [load_model(folder / "models")[0].decode(z) for folder in (project, clone)]
    assert torch.equal(*images)
    # docs/sweeps.md's one-point sweep: on a local Dask cluster (sweep.scheduler null, the default) in a shell
    # pointed at the stack (its MLflow and Prefect); the stack's own scheduler is test_sweep_hosts.py's.
    sweep = json.loads((project / "reports/sweep.json").read_text())
    assert len(sweep["points"]) == 1

    # The clone's models came from the remote: on the stack `make serve` finds the champion; off it (no
    # `source .stack/env`) it says where their runs are, and leaves no empty mlflow.db behind.
    served = running.run(clone, "python", "-c", SERVED_MODEL)
    assert "version 1, the champion" in served.stderr, served.stderr     # make run's, not the sweep's
    link_venv(clone)
    served = running.run_off_stack(clone, "make", "-s", "serve")
    assert_one_error(served, "trained in another checkout", ".stack/env")
    assert not (clone / "mlflow.db").exists()
    # The stack's checkout off the stack: every stage up to date and its run is the stack's (the reverse of
    # a checkout trained before `source .stack/env`). `make run` says so in one line and gates nothing;
    # `make compare` names the same; neither makes an mlflow.db.
    rerun = running.run_off_stack(project, "make", "-s", "run")
    said = [line for line in (rerun.stdout + rerun.stderr).splitlines() if "every stage" in line]
    assert rerun.returncode == 0 and len(said) == 1, rerun.stdout + rerun.stderr
    assert running.stack.mlflow_url in said[0] and elsewhere.RELOG in said[0], said
    compared = running.run_off_stack(project, "make", "-s", "compare")
    assert_one_error(compared, running.stack.mlflow_url, elsewhere.RELOG)
    assert not (project / "mlflow.db").exists()
    report(reliability, "stack", "docs/team-stack.md and docs/sweeps.md as written, on the stack",
           f"{len(outputs)} blocks in {seconds:.0f} s: run FINISHED in PostgreSQL, {len(keys)} MLflow objects "
           "in S3; the clone pulled identical outputs; a one-point sweep; off the stack `make run` and "
           "`make compare` said where the run is")


# What `make serve` would serve (commands/serve.py), without starting the server.
SERVED_MODEL = "import logging; logging.basicConfig(level=logging.INFO); from commands.serve import champion; " \
               "from vae_pipeline.settings import load_settings; print(champion(load_settings())[0])"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def assert_one_error(result, *wanted: str) -> None:
    """Exit 2 (make's, for a command that exited 2), one `error:` line holding each of `wanted`, no traceback."""
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert all(text in errors[0] for text in wanted), errors[0]


def test_a_schedule_fires_a_retrain_that_the_worker_runs(running, reliability):
    project = running.project
    api = running.stack.prefect_url + "/api"
    # Every minute, with a seed: the challenger trains, so the retrain logs a new MLflow run.
    set_params(project, retrain={"schedule_cron": "* * * * *", "seed": 1})
    deployed_at = time.time()
    running.run(project, "python", "-m", "stack", "deploy")
    deployment = requests.get(f"{api}/deployments/name/retrain/scheduled", timeout=10,
                              auth=running.prefect_auth).json()
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["* * * * *"]
    try:
        deadline = time.monotonic() + 420
        while True:
            runs = requests.post(f"{api}/flow_runs/filter", timeout=10, auth=running.prefect_auth, json={
                "deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC",
                "limit": 1, "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}).json()
            if runs or time.monotonic() > deadline:
                break
            time.sleep(5)
    finally:   # no more retrains for the tests after this one
        requests.delete(f"{api}/deployments/{deployment['id']}", timeout=10, auth=running.prefect_auth)
    assert runs, "no retrain finished within 7 minutes"
    flow_run = runs[0]
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    assert flow_run["auto_scheduled"] and flow_run["work_pool_name"] == running.stack.work_pool
    slot = datetime.fromisoformat(flow_run["expected_start_time"]).timestamp()
    fired = datetime.fromisoformat(flow_run["start_time"]).timestamp()
    # One of the next two minutes (the next, unless the loaded machine made the deploy or the scheduler late);
    # then the worker's poll.
    assert slot - deployed_at <= 121 and fired - slot < 120

    record = run_record(project)
    tags = dict(running.sql("SELECT key, value FROM tags WHERE run_uuid = %s", record["run_id"]))
    assert tags.get("retrain") == "true"
    assert running.sql("SELECT status FROM runs WHERE run_uuid = %s", record["run_id"]) == [("FINISHED",)]
    assert any(record["run_id"] in key and key.endswith("model/vae.safetensors")
               for key in running.s3_keys("mlflow/"))
    artifacts = requests.post(f"{api}/artifacts/filter", timeout=10, auth=running.prefect_auth, json={
        "artifacts": {"key": {"any_": ["champion"]}, "flow_run_id": {"any_": [flow_run["id"]]}}}).json()
    assert len(artifacts) == 1 and f"version {record['model_version']}" in artifacts[0]["data"]
    report(reliability, "stack", "a retrain fired by its schedule (cron `* * * * *`), run by the worker",
                f"scheduled {slot - deployed_at:.0f} s after `deploy`, started {fired - slot:.0f} s later, "
                f"COMPLETED in "
                f"{flow_run['total_run_time']:.0f} s; its MLflow run in PostgreSQL, model in S3, champion artifact")


@pytest.fixture(scope="module")
def second(running, tiny_source) -> Path:
    """Another fresh copy of the project on the same stack (its own DVC workspace), data downloaded."""
    project = make_project(running.base / "q", tiny_source)
    shutil.copy(running.project / ".dvc/config.local", project / ".dvc/config.local")
    running.run(project, "dvc", "repro", "download")
    return project


def test_mlflow_server_stopped_during_a_training(running, second, reliability):
    set_params(second, train={"epochs": 40})                      # long enough to stop the server meanwhile
    checkpoint = second / ".checkpoints/train.pt"
    # The MLflow client's retries would wait minutes for the dead server: none here, so it fails at once.
    env = {**pipeline_env(), **running.env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    training = subprocess.Popen(["dvc", "repro", "train"], cwd=second, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and training.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    running.control("stop", "mlflow")
    output = training.communicate(timeout=600)[0]
    running.outputs.append(output)
    run_id = json.loads((second / ".checkpoints" / RUN_FILE).read_text())["run_id"]
    running.control("start", "mlflow")
    client = running.mlflow()

    assert training.returncode != 0
    error = [line for line in output.splitlines() if running.stack.mlflow_url in line][-1]
    assert "Exception" in error or "Error" in error                       # the failure, naming the server
    assert client.get_run(run_id).info.status == "RUNNING"                 # not marked finished
    assert not (second / "models").exists() and checkpoint.exists()

    running.run(second, "dvc", "repro", "train")                           # resumes from the checkpoint
    assert client.get_run(run_id).info.status == "FINISHED"                # in the same run
    steps = sorted(point.step for point in client.get_metric_history(run_id, "test_loss"))
    assert steps == list(range(1, 41))                                     # every epoch, once
    report(reliability, "fault", "stack: the MLflow server stopped during a 40-epoch training",
                f"the stage failed naming {running.stack.mlflow_url} ({error.strip()[:120]}); run left "
                f"RUNNING; the rerun resumed the same run, FINISHED, all 40 epochs logged once")


def test_s3_stopped_then_dvc_push_fails_and_completes_after_a_restart(running, second, reliability):
    running.control("stop", "s3")
    started = time.monotonic()
    # The S3 client's own retries would wait a minute for the dead server: none here, so it fails at once.
    failed = running.run(second, "dvc", "push", check=False, env={"AWS_MAX_ATTEMPTS": "1"})
    seconds = time.monotonic() - started
    running.control("start", "s3")
    assert failed.returncode != 0
    error = next(line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("ERROR"))
    running.run(second, "dvc", "push")

    clone = running.base / "q2"
    run_in(second, "git", "add", "-A")
    run_in(second, "git", "commit", "-qm", "the trained model")
    run_in(running.base, "git", "clone", "-q", str(second), str(clone))
    shutil.copy(second / ".dvc/config.local", clone / ".dvc/config.local")
    stages = ["download"] + ["train"] * (second / "models").exists()       # those that ran in this copy
    running.run(clone, "dvc", "pull", *stages)
    assert digest(clone, ["data/raw", "models"]) == digest(second, ["data/raw", "models"])
    report(reliability, "fault", "stack: S3 stopped, `dvc push`; S3 started, `dvc push` again",
                f"failed in {seconds:.0f} s: {error[:120]}; the second push completed and a fresh clone "
                f"pulled identical files")


def test_postgres_restarted_then_the_next_training_logs_normally(running, second, reliability):
    running.control("stop", "postgres")
    running.control("start", "postgres")
    set_params(second, train={"epochs": 2, "seed": 7})
    running.run(second, "dvc", "repro", "train")
    record = run_record(second)
    assert running.sql("SELECT status FROM runs WHERE run_uuid = %s", record["run_id"]) == [("FINISHED",)]
    assert len(running.sql("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'test_loss'",
                           record["run_id"])) == 2
    flow_runs = requests.post(f"{running.stack.prefect_url}/api/flow_runs/filter", json={"limit": 1}, timeout=10,
                              auth=running.prefect_auth)
    assert flow_runs.status_code == 200                                   # Prefect's server reconnected too
    report(reliability, "fault", "stack: PostgreSQL restarted while the stack runs",
                "the next training logged every epoch, FINISHED; Prefect's API answered")


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_down_leaves_no_process_and_no_secret_was_written_anywhere(running, reliability):
    stack = running.stack
    pid = int((stack.run_dir / "supervisord.pid").read_text())
    processes = descendants(pid)
    assert len(processes) > len(SERVICES)                # supervisord, the services and their children

    # The secrets: never in a log, a command's output, or an MLflow param or tag.
    client = running.mlflow()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    texts = [p.read_text(errors="replace") for p in stack.logs.rglob("*") if p.is_file()]
    texts += running.outputs + [json.dumps([r.data.params, r.data.tags]) for r in runs]
    # (<state>/env and a worker kit's env hold them by design: mode 600, checked above.)
    leaks = [name for name, value in running.secrets.items() if any(value in text for text in texts)]
    assert leaks == []

    down = running.run(running.project, "make", "stack-down")
    assert "stopped" in down.stdout
    left = sorted(p for p in processes if supervisor.alive(p))
    assert left == []
    status = running.run(running.project, "python", "-m", "stack", "status", check=False)
    assert status.returncode == 3 and "not running" in status.stdout
    assert running.run(running.project, "make", "stack-status", check=False).returncode == 2   # make's own
    assert "stack" not in running.run(running.project, "dvc", "remote", "default").stdout

    # A shell still pointed at the stopped stack: `make run` says so in one line, with both ways out.
    stale = running.run(running.project, "make", "-s", "run", check=False)
    assert_one_error(stale, str(running.stack.env_file), "not running", "make stack", STACK_LEAVE)
    # The way back: the function .stack/env defines unsets every variable it set, and itself.
    back = running.run(running.project, "bash", "-c", f"source {running.stack.env_file}; {STACK_LEAVE}; "
                       f"env; type {STACK_LEAVE} || echo 'no {STACK_LEAVE}'")
    still_set = {line.split("=")[0] for line in back.stdout.splitlines()} & set(read_env_file(running.stack.env_file))
    assert still_set == set() and f"no {STACK_LEAVE}" in back.stdout
    report(reliability, "stack", "`make stack-down`",
                f"{len(processes)} processes before, none left; no secret in {len(texts)} logs, outputs "
                f"and MLflow records; then `make run` in a shell still pointed at it: {stale.stderr.strip()[:160]}")
