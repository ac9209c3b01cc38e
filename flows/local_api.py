"""Prefect's local API for one command, so `make run` needs no server started by hand.

Without PREFECT_API_URL, Prefect would start a temporary API server by itself on
first use. We start that same server (Prefect's app in its ephemeral mode, on
127.0.0.1 and a free port, its database in PREFECT_HOME) ourselves and put its
address into the settings, because:
  - the flow process then never imports Prefect's server code: about 3 s of CPU
    less per run on this machine;
  - the address travels with the settings to the Dask workers of a sweep, which
    then report to this server instead of each starting one of their own.
With PREFECT_API_URL set (`prefect server start`, see docs/prefect.md) that server is
used and nothing is started; one that does not answer stops the command at once.

A new PREFECT_HOME (a fresh clone's first `make run`, every test) would have the server build
its database by running Prefect's ~100 schema migrations: 12-18 s on this machine, against 5-6 s
to start on a database that exists. So the first database built on a machine is copied, empty,
into the user's cache (one per Prefect version, seeded_database), and a new home starts from it.

`run_on_local_api` is the entry point of `python -m flows.NAME`: it ends in the project's one
error path (vae_pipeline.errors.exit_code).
"""
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_UI_URL, get_current_settings, temporary_settings

from vae_pipeline.environment import STACK_ENV, STACK_LEAVE, TELEMETRY_OFF
from vae_pipeline.errors import PipelineError, exit_code, quick_exit, redact_uri
from vae_pipeline.files import project_path
from vae_pipeline.settings import load_settings

# A loaded 2-core machine took 25 s to bring the server up; Prefect's own default wait is 20 s.
STARTUP_TIMEOUT = 90
API_TIMEOUT = 10            # seconds for the server of PREFECT_API_URL to answer
DATABASE = "prefect.db"     # the local API's database in PREFECT_HOME (Prefect's default)


def prefect_home() -> Path:
    """PREFECT_HOME from the environment, else params.yaml prefect.home in the project (git-ignored)."""
    return Path(os.environ.get("PREFECT_HOME") or project_path(load_settings().prefect.home))


def check_api(api_url: str, timeout: float = API_TIMEOUT) -> None:
    """Raise PipelineError (the URL masked) unless a server answers at `api_url` (PREFECT_API_URL):
    Prefect's client would retry for minutes, then fail with a traceback. Any HTTP answer will do
    (a server with an auth string refuses a request without it)."""
    import requests

    try:
        requests.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
    except (requests.RequestException, ValueError) as e:
        if os.environ.get(STACK_ENV):       # this shell did `source .stack/env`
            raise PipelineError(f"{os.environ[STACK_ENV]}: the team stack is not running (no Prefect server "
                                f"answers at {redact_uri(api_url)}); start it with `make stack`, or leave it "
                                f"with `{STACK_LEAVE}`") from None
        raise PipelineError(f"env PREFECT_API_URL: no Prefect server answers at {redact_uri(api_url)} "
                            f"({type(e).__name__}); start it, or unset PREFECT_API_URL to run on a local "
                            "API started for the command") from None


def database_template() -> Path | None:
    """Where an empty database of this Prefect version is kept for new homes; None when the
    database is not the default SQLite file in PREFECT_HOME."""
    import prefect

    if any(os.environ.get(f"PREFECT_{kind}_DATABASE_CONNECTION_URL") for kind in ("SERVER", "API")):
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vae-pipeline" / f"prefect-{prefect.__version__}.db"


def seeded_database(home: Path) -> bool:
    """Give a home without a database a copy of the template, when there is one; True if it got one."""
    database, template = home / DATABASE, database_template()
    if database.exists() or template is None or not template.exists():
        return False
    staged = database.with_name(f".{DATABASE}.{os.getpid()}")
    shutil.copyfile(template, staged)
    staged.replace(database)       # whole or not at all
    return True


def keep_as_template(home: Path) -> None:
    """Copy the database the server has just built (migrated, no run in it yet) to the template.
    SQLite's backup API gives a consistent copy of a database in use. Best effort: a cache."""
    template = database_template()
    if template is None or template.exists():
        return
    staged = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(home / DATABASE)) as source, \
                contextlib.closing(sqlite3.connect(staged)) as copy:
            source.backup(copy)
        staged.replace(template)
    except (OSError, sqlite3.Error):
        staged.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """In the server's process, before it starts: on Linux, have the kernel send it SIGTERM when
    the process that started it ends, however that ends (a kill, a crash), so none is left behind."""
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_server(home: Path, log_file: Path) -> tuple[subprocess.Popen, str]:
    """Start Prefect's API app as Prefect's ephemeral mode does; return the process and its API URL."""
    port = free_port()
    env = {**os.environ,
           **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_HOME": str(home),
           **TELEMETRY_OFF,
           "PREFECT_UI_ENABLED": "0",
           "PREFECT__SERVER_EPHEMERAL": "1",              # no UI, only the services a run needs
           "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Its own session: Ctrl-C on `make run` stops the flow, which then still reports to
            # the server how it ended before the server is stopped (else the flow would hang).
            start_new_session=True, preexec_fn=die_with_parent)
    return process, f"http://127.0.0.1:{port}/api"


def wait_until_healthy(process: subprocess.Popen, api_url: str, timeout: float) -> bool:
    """True once the server answers /health; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Prefect's local API did not answer within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def local_api(home: Path | None = None, timeout: float = STARTUP_TIMEOUT):
    """Run the body against PREFECT_API_URL if set, else against a local API started here.

    Yields the API URL. PREFECT_HOME (`home`, else prefect_home()) holds the local
    API's database, so runs stay listed after the command ends.
    """
    home = Path(home or prefect_home())
    home.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PREFECT_API_URL"):
        check_api(os.environ["PREFECT_API_URL"])
        with temporary_settings({PREFECT_HOME: str(home)}):
            yield os.environ["PREFECT_API_URL"]
        return
    log_file = home / "local-api.log"
    fresh = not (home / DATABASE).exists() and not seeded_database(home)
    for _attempt in range(2):           # a second try if another process took the port first
        process, api_url = start_server(home, log_file)
        try:
            if wait_until_healthy(process, api_url, timeout):
                break
        except BaseException:
            stop_server(process)
            raise
    else:
        tail = log_file.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Prefect's local API exited with code {process.returncode}; "
                           f"the end of {log_file}:\n{tail}")
    if fresh:
        keep_as_template(home)
    try:
        # No UI URL: this server has no UI and ends with the command, so no "View at" link to it.
        with temporary_settings({PREFECT_HOME: str(home), PREFECT_API_URL: api_url, PREFECT_UI_URL: ""}):
            try:
                yield api_url
            finally:
                # Send the last logs and events while the server is still there to take them.
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
    finally:
        stop_server(process)


def run_on_local_api(run) -> None:
    """The entry point of `python -m flows.NAME`: run() on the local API, ending in the one error path.

    A PipelineError (bad params, bad data, a stage that exited 2, no server at PREFECT_API_URL)
    or an OS error on a write exits 2 with its message (vae_pipeline.errors.exit_code); any other
    failure of the flow exits 1 with a one-line message. Both have their credentials masked.
    """
    def on_local_api():
        try:
            with local_api():
                run()
        except Exception as e:
            if isinstance(e, PipelineError) or isinstance(e, OSError) and e.errno is not None:
                raise               # exit_code's: exit 2, naming the file of a failed write
            print(f"error: {redact_uri(f'{type(e).__name__}: {e}')}", file=sys.stderr)
            return 1

    quick_exit(exit_code(on_local_api))   # without Python's teardown of Prefect, MLflow and the rest (errors.py)
