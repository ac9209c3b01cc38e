"""What the stack is: its folder, its ports and addresses, its secrets, the environment of its clients.

Everything comes from params.yaml's `stack` section, so a second stack (a test's,
a colleague's on the same machine) only needs other ports and another folder.
"""
import json
import os
import secrets as token
from dataclasses import dataclass
from pathlib import Path

from vae_pipeline.files import ROOT, PipelineError
from vae_pipeline.params import load_params

HOST = "127.0.0.1"                  # every service binds here only
DB_USER = "vae"                     # the PostgreSQL role that owns both databases
DATABASES = ("mlflow", "prefect")
SERVICES = ("postgres", "s3", "mlflow", "prefect-server", "prefect-worker")   # in start order
S3_REGION = "us-east-1"             # SeaweedFS ignores it; the S3 clients want one
DVC_REMOTE = "stack"                # the DVC remote on the stack's bucket (in .dvc/config)
SECRET_NAMES = ("postgres_password", "s3_access_key", "s3_secret_key")


@dataclass(frozen=True)
class Stack:
    root: Path                      # the project
    state: Path                     # <root>/<stack.state_dir>: data, logs, secrets (git-ignored)
    postgres_port: int
    s3_port: int
    seaweed_port: int               # SeaweedFS's inner servers: this port and the 8 above it
    mlflow_port: int
    prefect_port: int
    bucket: str
    work_pool: str

    @classmethod
    def from_params(cls, root: Path = ROOT) -> "Stack":
        settings = load_params(Path(root) / "params.yaml")["stack"]
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
    def env_file(self) -> Path:         # `source .stack/env`: the clients' environment
        return self.state / "env"

    # Addresses.
    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:       # the UI; the API is under /api
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def postgres_address(self) -> str:
        return f"{HOST}:{self.postgres_port}"

    def address(self, service: str) -> str:
        return {"postgres": f"postgresql://{self.postgres_address}", "s3": self.s3_url,
                "mlflow": self.mlflow_url, "prefect-server": self.prefect_url,
                "prefect-worker": f"work pool '{self.work_pool}'"}[service]

    def database_url(self, database: str, password: str, driver: str) -> str:
        """A SQLAlchemy URL with the password in it, for the services' configuration only, never printed.
        driver: the dialect+driver, e.g. postgresql+psycopg2 (MLflow), postgresql+asyncpg (Prefect)."""
        return f"{driver}://{DB_USER}:{password}@{self.postgres_address}/{database}"

    def seaweed_ports(self) -> dict[str, int]:
        """`weed mini`'s inner ports, all set, so that none falls back to a default another stack uses."""
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")
        return {name: self.seaweed_port + offset for offset, name in enumerate(names)}

    def client_env(self) -> dict[str, str]:
        """What `make run`, the flows and MLflow's clients need to use the stack (no secret in it:
        artifacts go through the MLflow server, DVC reads its keys from .dvc/config.local)."""
        return {"MLFLOW_TRACKING_URI": self.mlflow_url,
                "PREFECT_API_URL": f"{self.prefect_url}/api",
                "PREFECT_UI_URL": self.prefect_url}


def load_secrets(stack: Stack) -> dict[str, str]:
    """The stack's passwords and keys: made at the first start, then read from secrets.json (mode 600)."""
    path = stack.secrets_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        made = {"postgres_password": token.token_urlsafe(24),
                "s3_access_key": "VAE" + token.token_hex(8).upper(),
                "s3_secret_key": token.token_urlsafe(30)}
        write_private(path, json.dumps(made, indent=2) + "\n")
    if path.stat().st_mode & 0o077:
        raise PipelineError(f"{path}: readable by others (mode {path.stat().st_mode & 0o777:o}); "
                            f"chmod 600 it, or delete the stack folder to start afresh")
    values = json.loads(path.read_text())
    missing = [name for name in SECRET_NAMES if not values.get(name)]
    if missing:
        raise PipelineError(f"{path}: missing {', '.join(missing)}; delete the stack folder to start afresh")
    return values


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by the owner only from the first byte on."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(text)
    os.replace(temporary, path)
