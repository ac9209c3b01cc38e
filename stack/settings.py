"""What the stack is: its folder, its address and ports, its secrets, the environment of its clients.

Everything comes from params.yaml's `stack` section, so a second stack (a test's,
a colleague's on the same machine) only needs other ports and another folder, and a
stack that serves other hosts only another `host`.

The interface other code relies on (the distributed sweep, its tests; docs/team-stack.md):
  Stack.from_params(root)       host, git_port, dask_port, git_url, dask_address, tls_dir, ...
  load_secrets(stack)           the generated passwords and keys (secrets.json, mode 600)
  stack.client_env(secrets, tls_dir=None)
                                every variable a client needs, credentials included (CLIENT_ENV_NAMES)
  read_env_file(path)           the KEY=VALUE lines of <state>/env or a worker kit's env, as a dict
  `python -m stack worker-kit [DIR]`
                                DIR/env (mode 600) and DIR/tls/{ca.pem,worker.pem,worker-key.pem}:
                                all a worker host needs besides the venv and the network
                                (DIR: stack.worker_kit, <state>/worker-kit, unless given)
The names of the variables the stack and the flows share are vae_pipeline/environment.py's.
"""
import json
import os
import re
import secrets as token
import shlex
from dataclasses import dataclass
from pathlib import Path

from vae_pipeline.environment import STACK_DASK_ADDRESS, STACK_GIT_PASSWORD, STACK_GIT_URL, STACK_GIT_USER, STACK_KIT
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.settings import load_settings

DB_USER = "vae"                     # the PostgreSQL role that owns the databases
USER = "vae"                        # the user name of MLflow's admin, Prefect's auth string and git
DATABASES = ("mlflow", "mlflow_auth", "prefect")     # mlflow_auth: MLflow's users and permissions
SERVICES = ("postgres", "s3", "mlflow", "prefect-server", "git", "dask-scheduler",
            "prefect-worker")       # in start order
S3_REGION = "us-east-1"             # SeaweedFS ignores it; the S3 clients want one
GIT_REPO = "vae-pipeline.git"       # the bare repository the git service serves, in <state>/git
# Each secret and how it is made; an older secrets.json gets the names it lacks added.
SECRETS = {
    "postgres_password": lambda: token.token_urlsafe(24),
    "s3_access_key": lambda: "VAE" + token.token_hex(8).upper(),
    "s3_secret_key": lambda: token.token_urlsafe(30),
    "mlflow_password": lambda: token.token_urlsafe(24),
    "mlflow_flask_secret": lambda: token.token_urlsafe(32),    # MLflow's CSRF key; the server's only
    "prefect_password": lambda: token.token_urlsafe(24),
    "git_password": lambda: token.token_urlsafe(24),
}
SECRET_NAMES = tuple(SECRETS)
# The Dask TLS files in a tls folder (the stack's <state>/tls, or a worker kit's DIR/tls).
TLS_FILES = {"ca": "ca.pem", "scheduler_cert": "scheduler.pem", "scheduler_key": "scheduler-key.pem",
             "worker_cert": "worker.pem", "worker_key": "worker-key.pem"}
DASK_TLS = "DASK_DISTRIBUTED__COMM__TLS__"
DASK_REQUIRE_ENCRYPTION = "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"
# What client_env() returns: the names a client (make run, dvc, the flows, a sweep worker) reads.
CLIENT_ENV_NAMES = (
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_API_AUTH_STRING",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    STACK_GIT_URL, STACK_GIT_USER, STACK_GIT_PASSWORD, STACK_DASK_ADDRESS,
    DASK_REQUIRE_ENCRYPTION, DASK_TLS + "CA_FILE",
    DASK_TLS + "CLIENT__CERT", DASK_TLS + "CLIENT__KEY", DASK_TLS + "WORKER__CERT", DASK_TLS + "WORKER__KEY")


@dataclass(frozen=True)
class Stack:
    root: Path                      # the project
    state: Path                     # <root>/<stack.state_dir>: data, logs, secrets (git-ignored)
    host: str                       # every service binds and advertises this address
    postgres_port: int
    s3_port: int
    seaweed_port: int               # SeaweedFS's inner servers: this port and the 8 above it
    mlflow_port: int
    prefect_port: int
    git_port: int
    dask_port: int
    bucket: str
    work_pool: str

    @classmethod
    def from_params(cls, root: Path = ROOT) -> "Stack":
        settings = load_settings(Path(root) / "params.yaml").stack.model_dump()
        state = Path(settings.pop("state_dir"))
        return cls(root=Path(root), state=state if state.is_absolute() else Path(root) / state, **settings)

    # Where things live in the state folder.
    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run_dir(self) -> Path:          # supervisord's socket and pid file, SeaweedFS's sockets
        return self.state / "run"

    @property
    def secrets_file(self) -> Path:
        return self.state / "secrets.json"

    @property
    def env_file(self) -> Path:         # `source .stack/env`: the clients' environment (mode 600)
        return self.state / "env"

    @property
    def tls_dir(self) -> Path:          # the Dask CA and certificates (keys mode 600)
        return self.state / "tls"

    @property
    def git_root(self) -> Path:         # GIT_PROJECT_ROOT of the git service
        return self.state / "git"

    @property
    def worker_kit(self) -> Path:       # `make stack-worker-kit`'s folder unless given one (KIT=DIR)
        return self.state / "worker-kit"

    # Addresses.
    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:       # the UI; the API is under /api
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def dvc_url(self) -> str:           # the DVC remote STACK_DVC_REMOTE, in the bucket
        return f"s3://{self.bucket}/dvc"

    @property
    def postgres_address(self) -> str:
        return f"{self.host}:{self.postgres_port}"

    @property
    def git_url(self) -> str:           # no credentials in it: git asks, or a credential helper answers
        return f"http://{self.host}:{self.git_port}/{GIT_REPO}"

    @property
    def dask_address(self) -> str:
        return f"tls://{self.host}:{self.dask_port}"

    def address(self, service: str) -> str:
        return {"postgres": f"postgresql://{self.postgres_address}", "s3": self.s3_url,
                "mlflow": self.mlflow_url, "prefect-server": self.prefect_url, "git": self.git_url,
                "dask-scheduler": self.dask_address, "prefect-worker": f"work pool '{self.work_pool}'"}[service]

    def database_url(self, database: str, password: str, driver: str) -> str:
        """A SQLAlchemy URL with the password in it, for the services' configuration only, never printed.
        driver: the dialect+driver, e.g. postgresql+psycopg2 (MLflow), postgresql+asyncpg (Prefect)."""
        return f"{driver}://{DB_USER}:{password}@{self.postgres_address}/{database}"

    def seaweed_ports(self) -> dict[str, int]:
        """`weed mini`'s inner ports, all set, so that none falls back to a default another stack uses."""
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")
        return {name: self.seaweed_port + offset for offset, name in enumerate(names)}

    def client_env(self, secrets: dict, tls_dir: Path | None = None) -> dict[str, str]:
        """Every variable a client needs to use the stack, credentials included (CLIENT_ENV_NAMES):
        `make run`, dvc, the flows, MLflow's and Prefect's clients, git, a Dask client or worker.
        tls_dir: where the client finds the Dask CA and worker certificate (default: the stack's)."""
        tls = Path(tls_dir or self.tls_dir)
        return {"MLFLOW_TRACKING_URI": self.mlflow_url,
                "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": secrets["mlflow_password"],
                "PREFECT_API_URL": f"{self.prefect_url}/api", "PREFECT_UI_URL": self.prefect_url,
                "PREFECT_API_AUTH_STRING": f"{USER}:{secrets['prefect_password']}",
                "AWS_ACCESS_KEY_ID": secrets["s3_access_key"], "AWS_SECRET_ACCESS_KEY": secrets["s3_secret_key"],
                "AWS_DEFAULT_REGION": S3_REGION, "AWS_ENDPOINT_URL": self.s3_url,
                "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
                STACK_GIT_URL: self.git_url, STACK_GIT_USER: USER,
                STACK_GIT_PASSWORD: secrets["git_password"], STACK_DASK_ADDRESS: self.dask_address,
                # Dask's configuration (distributed.comm.*) as its environment variables: TLS both ways.
                DASK_REQUIRE_ENCRYPTION: "True",
                DASK_TLS + "CA_FILE": str(tls / TLS_FILES["ca"]),
                DASK_TLS + "CLIENT__CERT": str(tls / TLS_FILES["worker_cert"]),
                DASK_TLS + "CLIENT__KEY": str(tls / TLS_FILES["worker_key"]),
                DASK_TLS + "WORKER__CERT": str(tls / TLS_FILES["worker_cert"]),
                DASK_TLS + "WORKER__KEY": str(tls / TLS_FILES["worker_key"])}


def env_lines(env: dict[str, str], export: bool) -> str:
    """KEY=VALUE lines (`export KEY=VALUE` for a shell to source), values shell-quoted when needed."""
    prefix = "export " if export else ""
    return "".join(f"{prefix}{key}={shlex.quote(str(value))}\n" for key, value in env.items())


ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file written by env_lines (`export ` optional; other lines skipped).
    A worker kit's file names its folder in VAE_STACK_KIT; when the kit has been copied elsewhere
    (another host mounts it at another path), the values under that folder follow it here."""
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if not ASSIGNMENT.match(line):        # a comment, or .stack/env's shell function
            continue
        key, _, value = line.partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    written, here = env.get(STACK_KIT), str(Path(path).resolve().parent)
    if written and written != here:
        env = {key: here + value[len(written):] if value == written or value.startswith(written + "/") else value
               for key, value in env.items()}
    return env


def load_secrets(stack: Stack) -> dict[str, str]:
    """The stack's passwords and keys: made at the first start, then read from secrets.json (mode 600).
    The names an older secrets.json lacks (a stack made before a service was added) are made and
    added; the ones it has are kept, since the databases and stores already use them."""
    path = stack.secrets_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, "{}\n")
    if path.stat().st_mode & 0o077:
        raise PipelineError(f"{path}: readable by others (mode {path.stat().st_mode & 0o777:o}); "
                            f"chmod 600 it, or delete the stack folder to start afresh")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not JSON ({e}); delete the stack folder to start afresh") from None
    missing = [name for name in SECRET_NAMES if not values.get(name)]
    if missing:
        values.update({name: SECRETS[name]() for name in missing})
        write_private(path, json.dumps(values, indent=2) + "\n")
    return values


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by the owner only from the first byte on."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(text)
    os.replace(temporary, path)
