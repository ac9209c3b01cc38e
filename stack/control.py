"""`make stack`, `make stack-down`, `make stack-status`: bring the stack up in order, down, and report.

up: secrets, the Dask TLS certificates, the bare git repository and the PostgreSQL
cluster (each at the first start), pg_hba.conf, supervisord, then each service in order
once the ones before answer: postgres (and its databases), s3, then mlflow,
prefect-server, git and dask-scheduler together, then prefect-worker. A service already
running is left alone, so a second `up` does nothing. Then the checkout's DVC remote
`stack` gets the S3 keys (in .dvc/config.local, mode 600) and becomes its default remote,
and <state>/env (mode 600) is written: `source .stack/env` points `make run`, dvc, the
flows and MLflow's clients at the stack, with its credentials.

worker-kit [DIR]: what a worker on another host needs (worker_kit below).
"""
import shlex
import sys
import time
from pathlib import Path

from stack import health, postgres, supervisor, tls
from stack.git_http import init_repository
from stack.settings import (
    DASK_REQUIRE_ENCRYPTION,
    GIT_REPO,
    S3_REGION,
    SERVICES,
    TLS_FILES,
    Stack,
    env_lines,
    load_secrets,
    write_private,
)
from vae_pipeline.environment import STACK_ENV, STACK_KIT, STACK_LEAVE
from vae_pipeline.errors import PipelineError
from vae_pipeline.settings import STACK_DVC_REMOTE

START_TIMEOUT = 240         # seconds for one service to answer; a loaded 2-core machine is slow


def up(stack: Stack, out=sys.stdout) -> bool:
    """Start what is not running; return False if everything already ran (nothing done)."""
    for folder in (stack.logs, stack.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    stack.state.chmod(0o755)   # the postgres user must pass through it when root starts the stack
    secrets = load_secrets(stack)
    if tls.ensure_certificates(stack):
        print(f"dask-scheduler: new CA and certificates in {stack.tls_dir}", file=out)
    if init_repository(stack.git_root, GIT_REPO):
        print(f"git: new bare repository {stack.git_root / GIT_REPO}", file=out)
    if postgres.init_cluster(stack, secrets["postgres_password"]):
        print(f"postgres: new cluster in {postgres.data_dir(stack)}", file=out)
    postgres.write_hba(stack)
    running = supervisor.processes(stack)
    if running and all(running.get(name, {}).get("statename") == "RUNNING" for name in SERVICES):
        print(f"the stack is already running ({stack.state})", file=out)
        return False
    if not running:
        supervisor.write_config(stack, secrets)
        supervisor.start_daemon(stack)
    elif supervisor.config_path(stack).read_text() != supervisor.render(stack, secrets):
        raise PipelineError(f"{supervisor.config_path(stack)}: the running stack was started with other "
                            "settings (params.yaml `stack`); `make stack-down`, then `make stack`")
    started = time.monotonic()

    def start_and_wait(*names: str) -> None:
        for name in names:
            supervisor.start(stack, name)
        for name in names:
            seconds = health.wait_healthy(name, stack, secrets, START_TIMEOUT, is_up=still_starting(stack, name))
            print(f"{name}: up at {stack.address(name)} ({seconds:.0f} s)", file=out, flush=True)

    start_and_wait("postgres")
    made = postgres.ensure_databases(stack, secrets["postgres_password"])
    if made:
        print(f"postgres: created databases {', '.join(made)}", file=out)
    start_and_wait("s3")
    # These only need the two above (or nothing): start together.
    start_and_wait("mlflow", "prefect-server", "git", "dask-scheduler")
    start_and_wait("prefect-worker")
    configure_dvc(stack, secrets)
    write_private(stack.env_file, env_text(stack, secrets))
    env_file = stack.env_file.relative_to(stack.root) if stack.env_file.is_relative_to(stack.root) else stack.env_file
    print(f"the stack is up in {time.monotonic() - started:.0f} s; point this shell at it with: source {env_file}",
          file=out)
    return True


def still_starting(stack: Stack, name: str):
    """A function that is False once the program has died since its start: supervisord restarts a
    crashing server again and again, so a new pid means the first one died."""
    first_pid = []

    def check() -> bool:
        info = supervisor.processes(stack).get(name, {})
        if info.get("statename") in ("FATAL", "EXITED", "STOPPED", "BACKOFF"):
            return False
        if info.get("pid"):
            first_pid[:] = first_pid or [info["pid"]]
            return info["pid"] == first_pid[0]
        return True
    return check


def down(stack: Stack, out=sys.stdout) -> None:
    """Stop every service and supervisord; the checkout's default DVC remote goes back to .dvc/config's."""
    if not supervisor.is_running(stack):
        print("the stack is not running", file=out)
    else:
        pid = supervisor.shutdown(stack)
        print(f"the stack is stopped (supervisord {pid} and every service)", file=out)
    unset_dvc_default(stack)


def status(stack: Stack, out=sys.stdout) -> bool:
    """Print each service, its state, address and health; True if all are running and healthy."""
    running = supervisor.processes(stack)
    if not running:
        print(f"the stack is not running ({stack.state}); start it with `make stack`", file=out)
        return False
    secrets = load_secrets(stack)
    healthy = True
    print(f"{'service':<16}{'state':<10}{'pid':>8}  {'address':<44}health", file=out)
    for name in SERVICES:
        info = running.get(name, {})
        state = info.get("statename", "UNKNOWN")
        problem = health.check(name, stack, secrets) if state == "RUNNING" else "not running"
        healthy &= problem is None
        print(f"{name:<16}{state:<10}{info.get('pid') or '-':>8}  {stack.address(name):<44}"
              f"{'ok' if problem is None else problem}", file=out)
    print(f"logs: {stack.logs}", file=out)
    return healthy


def env_text(stack: Stack, secrets: dict) -> str:
    """<state>/env: the clients' variables, the file's own path (STACK_ENV: errors then name the stack),
    and the way back, a shell function as a venv's `deactivate` (STACK_LEAVE) that unsets them all.
    Not Dask's require-encryption (a worker kit's): in this shell it would stop every local Dask cluster,
    `make sweep`'s default, from starting; the stack's scheduler still talks TLS only."""
    env = {name: value for name, value in stack.client_env(secrets).items() if name != DASK_REQUIRE_ENCRYPTION}
    env[STACK_ENV] = str(stack.env_file)
    return ("# The team stack's clients, credentials included: `source` this file; keep it mode 600\n"
            + env_lines(env, export=True)
            + f"# `{STACK_LEAVE}`: this shell back to the embedded stores (unsets the variables above)\n"
            + f"{STACK_LEAVE}() {{ unset {' '.join(env)}; unset -f {STACK_LEAVE}; }}\n")


def env_source_line(stack: Stack) -> str:
    """`. <state>/env`, written first if missing (mode 600): what `make stack-env` prints."""
    if not stack.env_file.exists():
        write_private(stack.env_file, env_text(stack, load_secrets(stack)))
    return f". {shlex.quote(str(stack.env_file))}"


def worker_kit(stack: Stack, folder: Path | None = None, out=sys.stdout) -> None:
    """What a worker host needs and nothing of the project: FOLDER/env (mode 600; KEY=VALUE lines,
    the client environment with the Dask TLS paths inside FOLDER/tls) and FOLDER/tls (the CA
    certificate, the worker certificate and key). The stack need not run; its secrets and
    certificates are made if this comes first. VAE_STACK_KIT names FOLDER: read_env_file moves the
    paths under it along when the kit is copied elsewhere. FOLDER: stack.worker_kit unless given."""
    folder = Path(folder or stack.worker_kit).resolve()
    if folder in (stack.state.resolve(), stack.tls_dir.resolve()):      # its env and tls/ would overwrite the stack's
        raise PipelineError(f"{folder}: the stack's own folder; choose another (default {stack.worker_kit})")
    secrets = load_secrets(stack)
    tls.ensure_certificates(stack)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    tls.copy_for_workers(stack, folder / "tls")
    env = {STACK_KIT: str(folder), **stack.client_env(secrets, tls_dir=folder / "tls")}
    write_private(folder / "env", "# A worker host's access to the team stack (python -m stack worker-kit); "
                                  "keep it mode 600\n" + env_lines(env, export=False))
    files = ",".join(TLS_FILES[n] for n in ("ca", "worker_cert", "worker_key"))
    print(f"worker kit in {folder}: env and tls/{{{files}}}; the stack is at {stack.host}", file=out)


def configure_dvc(stack: Stack, secrets: dict) -> None:
    """The remote `stack` of .dvc/config (STACK_DVC_REMOTE), with this stack's bucket, endpoint and keys,
    as the checkout's default: all in .dvc/config.local, which DVC keeps out of git (made mode 600 here)."""
    local = stack.root / ".dvc" / "config.local"
    if not local.exists():
        write_private(local, "")
    local.chmod(0o600)
    with dvc_config(stack).edit("local") as config:
        config["remote"][STACK_DVC_REMOTE] = {
            **config["remote"].get(STACK_DVC_REMOTE, {}),
            "url": stack.dvc_url, "endpointurl": stack.s3_url, "region": S3_REGION,
            "access_key_id": secrets["s3_access_key"], "secret_access_key": secrets["s3_secret_key"]}
        config["core"]["remote"] = STACK_DVC_REMOTE


def unset_dvc_default(stack: Stack) -> None:
    """Back to the default remote of .dvc/config (the keys stay, for the next start)."""
    if (stack.root / ".dvc" / "config.local").exists():
        with dvc_config(stack).edit("local") as config:
            config["core"].pop("remote", None)


def dvc_config(stack: Stack):
    from dvc.config import Config  # imported here: a second of imports that only these two need

    return Config(dvc_dir=str(stack.root / ".dvc"))
