"""The stack's PostgreSQL cluster: Debian's binaries, one data folder in the stack's state, two databases.

PostgreSQL refuses to run as root. When the stack is started by root (a container,
CI), the cluster belongs to the `postgres` system user that Debian's package
creates, and supervisord starts the server as that user; otherwise it runs as the
user who starts the stack. Connections are TCP on params.yaml stack.host only (no Unix
socket), with a password (scram-sha-256), and pg_hba.conf admits the stack's role from
that address alone: the stack's own servers are its only clients, so no other host (a
sweep worker included) needs the database.
"""
import ipaddress
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from stack.settings import DATABASES, DB_USER, Stack
from vae_pipeline.errors import PipelineError

SYSTEM_USER = "postgres"
INSTALL_HINT = "install Debian's PostgreSQL: `apt-get install -y postgresql` (`make stack` does it as root)"


def bin_dir() -> Path:
    """The folder of the newest installed PostgreSQL's server binaries (initdb, postgres)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PipelineError(f"PostgreSQL's initdb was not found; {INSTALL_HINT}")


def run_as() -> str | None:
    """The user the server must run as: `postgres` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PipelineError(f"running as root, PostgreSQL needs the '{SYSTEM_USER}' system user; "
                            f"{INSTALL_HINT}") from None
    return SYSTEM_USER


def data_dir(stack: Stack) -> Path:
    return stack.state / "postgres"


def as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def check_reachable_by(user: str, folder: Path) -> None:
    """The server's user must be able to enter every folder above its data folder."""
    probe = subprocess.run(as_user(["test", "-x", str(folder)], user), capture_output=True)
    if probe.returncode != 0:
        raise PipelineError(f"{folder}: the '{user}' user (PostgreSQL refuses to run as root) cannot "
                            f"enter it; allow it (chmod o+x on the folders above) or set params.yaml "
                            f"stack.state_dir to a folder it can reach")


def init_cluster(stack: Stack, password: str) -> bool:
    """initdb the data folder on the first start (True), else nothing (False)."""
    folder = data_dir(stack)
    if (folder / "PG_VERSION").exists():
        return False
    user = run_as()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    password_file = stack.run_dir / "initdb-password"
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(password + "\n")
    try:
        if user:
            owner = pwd.getpwnam(user)
            for path in (folder, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            check_reachable_by(user, folder)
        result = subprocess.run(
            as_user([str(bin_dir() / "initdb"), "-D", str(folder), "-U", DB_USER, "--pwfile", str(password_file),
                     "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8",
                     "--no-locale", "--no-instructions"], user),
            capture_output=True, text=True)
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PipelineError(f"initdb in {folder} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return True


def hba_text(stack: Stack) -> str:
    """pg_hba.conf: the stack's role, from the stack's address only, with its password; nothing else."""
    network = ipaddress.ip_network(stack.host)          # the one address: /32 (IPv4) or /128 (IPv6)
    return ("# Written by stack/postgres.py at every `make stack` (params.yaml stack.host): the stack's\n"
            "# servers connect from the stack's address with the password; nothing else is admitted.\n"
            f"host all {DB_USER} {network} scram-sha-256\n")


def write_hba(stack: Stack) -> bool:
    """Make the cluster's pg_hba.conf hba_text(); True if it changed (a running server reloads it on SIGHUP)."""
    path = data_dir(stack) / "pg_hba.conf"
    text = hba_text(stack)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    path.chmod(0o600)
    if user := run_as():
        owner = pwd.getpwnam(user)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return True


def server_command(stack: Stack) -> str:
    """The `postgres` command line supervisord runs: TCP on the stack's address only, a small footprint."""
    settings = {"listen_addresses": stack.host, "port": stack.postgres_port, "unix_socket_directories": "",
                "shared_buffers": "32MB", "max_connections": 100, "logging_collector": "off"}
    return " ".join([str(bin_dir() / "postgres"), "-D", str(data_dir(stack)),
                     *(f"-c {key}={value}" for key, value in settings.items())])


def connect(stack: Stack, password: str, database: str = "postgres", timeout: float = 3):
    import psycopg2

    return psycopg2.connect(host=stack.host, port=stack.postgres_port, user=DB_USER, password=password,
                            dbname=database, connect_timeout=max(1, int(timeout)))


def ensure_databases(stack: Stack, password: str) -> list[str]:
    """Create the databases that are missing; return their names."""
    from psycopg2 import sql

    made = []
    connection = connect(stack, password)
    try:
        connection.autocommit = True          # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    made.append(name)
    finally:
        connection.close()
    return made
