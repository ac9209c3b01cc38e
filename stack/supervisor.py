"""supervisord for the stack: its configuration, starting it, and talking to it over its socket.

supervisord keeps the processes: it starts each on request, restarts one that dies,
writes its log, and on shutdown stops every program with its children. This module
writes <state>/supervisord.conf from stack/supervisord.conf and the programs below,
starts supervisord (a daemon), and calls its XML-RPC interface on a Unix socket that
only the owner may open.
"""
import os
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from stack import postgres
from stack.settings import DASK_TLS, TLS_FILES, USER, Stack, write_private
from vae_pipeline.environment import STACK_GIT_PASSWORD, STACK_GIT_USER, TELEMETRY_OFF
from vae_pipeline.errors import PipelineError

VENV_BIN = Path(sys.executable).parent
TEMPLATE = Path(__file__).with_name("supervisord.conf")
# The servers need no thread pools of their own: the cores belong to the trainings.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "NUMEXPR_NUM_THREADS")}
# Every program: started on request only, restarted if it dies, stopped with its children.
COMMON = {"autostart": "false", "autorestart": "true", "startsecs": "2", "stopwaitsecs": "30",
          "stopasgroup": "true", "killasgroup": "true", "redirect_stderr": "true",
          "stdout_logfile_maxbytes": "5MB", "stdout_logfile_backups": "1"}


def config_path(stack: Stack) -> Path:
    return stack.state / "supervisord.conf"


def socket_path(stack: Stack) -> Path:
    return stack.run_dir / "supervisor.sock"


def s3_config(secrets: dict) -> str:
    """SeaweedFS's identities file: one identity, the stack's key pair, allowed everything."""
    import json

    return json.dumps({"identities": [{
        "name": "vae-stack",
        "credentials": [{"accessKey": secrets["s3_access_key"], "secretKey": secrets["s3_secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, indent=2) + "\n"


def mlflow_auth_path(stack: Stack) -> Path:
    return stack.state / "mlflow-auth.ini"


def mlflow_auth_config(stack: Stack, secrets: dict) -> str:
    """MLflow's basic-auth app: its users in PostgreSQL, the admin (the stack's user) made at its first
    start with the generated password, and every user allowed to write (EDIT) unless told otherwise."""
    database = stack.database_url("mlflow_auth", secrets["postgres_password"], driver="postgresql+psycopg2")
    return ("[mlflow]\n"
            "default_permission = EDIT\n"
            f"database_uri = {database}\n"
            f"admin_username = {USER}\n"
            f"admin_password = {secrets['mlflow_password']}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Each request's password check is a scrypt hash (0.15 s of a core here): a training that logs
            # every epoch spent most of its time on it. MLflow's own cache checks a password once a minute
            # in its one worker; a generated 192-bit password (settings.py) needs no slow hash to resist guessing.
            "auth_cache_ttl_seconds = 60\n")


def dask_tls(stack: Stack, role: str) -> dict[str, str]:
    """Dask's TLS settings for `role` (scheduler) as its environment variables: encryption required."""
    return {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            DASK_TLS + "CA_FILE": str(stack.tls_dir / TLS_FILES["ca"]),
            DASK_TLS + f"{role.upper()}__CERT": str(stack.tls_dir / TLS_FILES[f"{role}_cert"]),
            DASK_TLS + f"{role.upper()}__KEY": str(stack.tls_dir / TLS_FILES[f"{role}_key"])}


def programs(stack: Stack, secrets: dict) -> dict[str, dict]:
    """Each program's command, environment and folder, in start order (settings.SERVICES)."""
    password = secrets["postgres_password"]
    client = stack.client_env(secrets)
    s3_client = {name: client[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                                  "MLFLOW_S3_ENDPOINT_URL")}
    host = stack.host
    weed = [str(VENV_BIN / "weed"), "mini", f"-dir={stack.state / 'seaweed'}", f"-ip={host}", f"-ip.bind={host}",
            f"-s3.port={stack.s3_port}", *(f"-{name}={port}" for name, port in stack.seaweed_ports().items()),
            f"-s3.config={stack.state / 's3.json'}", f"-bucket={stack.bucket}",
            # Only S3: no WebDAV, Iceberg or Lance endpoints, no admin UI, no telemetry.
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-filer.localSocket={stack.run_dir / 'filer.sock'}", f"-s3.localSocket={stack.run_dir / 's3.sock'}"]
    prefect_home = str(stack.state / "prefect")
    return {
        "postgres": {"command": postgres.server_command(stack), "user": postgres.run_as(),
                     "environment": {}, "directory": str(postgres.data_dir(stack)),
                     "stopsignal": "INT"},     # a fast shutdown: the default (TERM) waits for every client
        "s3": {"command": " ".join(weed), "environment": {}, "directory": str(stack.state)},
        "mlflow": {
            "command": f"{VENV_BIN / 'mlflow'} server --host {host} --port {stack.mlflow_port} --workers 1 "
                       f"--app-name basic-auth",
            # The store URIs go through the environment, not the command line that `ps` shows; the
            # basic-auth app reads its users' database and admin password from the mode-600 ini.
            "environment": {"MLFLOW_BACKEND_STORE_URI": stack.database_url("mlflow", password,
                                                                           driver="postgresql+psycopg2"),
                            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{stack.bucket}/mlflow",
                            "MLFLOW_AUTH_CONFIG_PATH": str(mlflow_auth_path(stack)),
                            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["mlflow_flask_secret"],
                            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **s3_client, **ONE_THREAD},
            "directory": str(stack.state)},
        "prefect-server": {
            "command": f"{VENV_BIN / 'prefect'} server start --host {host} --port {stack.prefect_port}",
            "environment": {"PREFECT_HOME": prefect_home,
                            "PREFECT_API_DATABASE_CONNECTION_URL":
                                stack.database_url("prefect", password, driver="postgresql+asyncpg"),
                            # Every API request must carry it (HTTP Basic); the UI asks for it once.
                            "PREFECT_SERVER_API_AUTH_STRING": client["PREFECT_API_AUTH_STRING"],
                            "PREFECT_UI_API_URL": f"{stack.prefect_url}/api", **ONE_THREAD},
            "directory": str(stack.state)},
        "git": {
            # `python -m` from the project: this checkout's stack package, whatever the venv installed.
            "command": f"{VENV_BIN / 'python'} -m stack.git_http {host} {stack.git_port} {stack.git_root}",
            "environment": {STACK_GIT_USER: USER, STACK_GIT_PASSWORD: secrets["git_password"]},
            "directory": str(stack.root)},
        "dask-scheduler": {
            # Mutual TLS only (the TLS settings through the environment); no dashboard.
            "command": f"{VENV_BIN / 'dask'} scheduler --host {host} --port {stack.dask_port} --protocol tls "
                       f"--no-dashboard --no-show",
            "environment": {**dask_tls(stack, "scheduler"), **ONE_THREAD},
            "directory": str(stack.state)},
        "prefect-worker": {
            # One flow run at a time: a retrain uses the cores, and DVC allows one repro per workspace.
            "command": f"{VENV_BIN / 'prefect'} worker start --pool {stack.work_pool} --type process "
                       f"--limit 1 --name {stack.work_pool}-worker",
            # The flow runs get what `make run` gets under `source .stack/env`, credentials included.
            "environment": {"PREFECT_HOME": prefect_home, **client},
            "directory": str(stack.root)},
    }


def quoted(environment: dict) -> str:
    """supervisord's `environment=` value: KEY="value",... (values have no quotes; % is doubled)."""
    return ",".join(f'{key}="{str(value).replace("%", "%%")}"' for key, value in environment.items())


def render(stack: Stack, secrets: dict) -> str:
    sections = []
    for name, program in programs(stack, secrets).items():
        lines = [f"[program:{name}]", f"command={program['command'].replace('%', '%%')}",
                 f"directory={program['directory']}", f"stdout_logfile={stack.logs / name}.log"]
        if program.get("user"):
            lines.append(f"user={program['user']}")
        if program["environment"]:
            lines.append(f"environment={quoted(program['environment'])}")
        if "stopsignal" in program:
            lines.append(f"stopsignal={program['stopsignal']}")
        lines += [f"{key}={value}" for key, value in COMMON.items()]
        sections.append("\n".join(lines) + "\n")
    return TEMPLATE.read_text().format(run_dir=stack.run_dir, logs=stack.logs, root=stack.root,
                                       programs="\n".join(sections))


def write_config(stack: Stack, secrets: dict) -> None:
    """The SeaweedFS identities, MLflow's auth config and supervisord's configuration, all mode 600
    (they hold secrets)."""
    write_private(stack.state / "s3.json", s3_config(secrets))
    write_private(mlflow_auth_path(stack), mlflow_auth_config(stack, secrets))
    write_private(config_path(stack), render(stack, secrets))


def base_env() -> dict[str, str]:
    """supervisord's own environment, which every program inherits: no secret, nothing of the caller's
    stores (MLFLOW_TRACKING_URI, PREFECT_API_URL, AWS keys), the venv first on PATH, telemetry off."""
    # NUMBA_CACHE_DIR: the worker's retrains share the caller's compiled UMAP code, when it names one.
    # PYTHONPATH: packages the caller adds beside the venv's reach the servers too.
    keep = {key: os.environ[key] for key in ("HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "NUMBA_CACHE_DIR",
                                             "PYTHONPATH") if key in os.environ}
    return {**keep, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": keep.get("LANG", "C.UTF-8"), **TELEMETRY_OFF}


def proxy(stack: Stack):
    """supervisord's XML-RPC interface over its Unix socket."""
    from supervisor.xmlrpc import SupervisorTransport

    return xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{socket_path(stack)}"))


def is_running(stack: Stack) -> bool:
    if not socket_path(stack).exists():
        return False
    try:
        return proxy(stack).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Fault):
        return False


def start_daemon(stack: Stack, timeout: float = 30) -> None:
    """Start supervisord (it forks into the background) and wait for its socket to answer."""
    for folder in (stack.logs, stack.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    started = subprocess.run([str(VENV_BIN / "supervisord"), "-c", str(config_path(stack))], env=base_env(),
                             cwd=stack.root, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if started.returncode != 0:
        raise PipelineError(f"{config_path(stack)}: supervisord exited {started.returncode}: "
                            f"{(started.stdout + started.stderr).strip()[-1000:]}; see {stack.logs}/supervisord.log")
    deadline = time.monotonic() + timeout
    while not is_running(stack):
        if time.monotonic() > deadline:
            raise PipelineError(f"supervisord did not answer within {timeout:.0f} s; see {stack.logs}/supervisord.log")
        time.sleep(0.2)


def processes(stack: Stack) -> dict[str, dict]:
    """{program: supervisord's info (statename, pid, ...)}; {} when supervisord is not running."""
    if not is_running(stack):
        return {}
    return {info["name"]: info for info in proxy(stack).supervisor.getAllProcessInfo()}


def start(stack: Stack, name: str) -> None:
    """Ask supervisord to start `name` (not waiting: the caller waits until it answers)."""
    if processes(stack).get(name, {}).get("statename") not in ("RUNNING", "STARTING"):
        proxy(stack).supervisor.startProcess(name, False)


def shutdown(stack: Stack, timeout: float = 120) -> int | None:
    """Stop every program and supervisord itself; wait until it has exited. Returns its pid (or None)."""
    pid_file = stack.run_dir / "supervisord.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    if is_running(stack):
        proxy(stack).supervisor.shutdown()
    deadline = time.monotonic() + timeout
    while pid is not None and alive(pid):
        if time.monotonic() > deadline:
            raise PipelineError(f"supervisord (pid {pid}) still runs {timeout:.0f} s after its shutdown; "
                                f"see {stack.logs}/supervisord.log, stop it (kill {pid}), then rerun")
        time.sleep(0.2)
    return pid


def alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
