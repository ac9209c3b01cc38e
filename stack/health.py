"""Is each service answering? One check per service, each a real request to it.

Each check returns None when healthy, else a short reason (never a secret). Each
check uses the credentials, as a client would: healthy means answering and admitting
the stack's clients.
"""
import socket
import ssl
import time

import requests

from stack import postgres
from stack.settings import S3_REGION, TLS_FILES, USER, Stack
from vae_pipeline.errors import PipelineError

TIMEOUT = 3         # seconds per request


def s3_client(stack: Stack, secrets: dict):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=stack.s3_url, region_name=S3_REGION,
                        aws_access_key_id=secrets["s3_access_key"],
                        aws_secret_access_key=secrets["s3_secret_key"],
                        config=Config(connect_timeout=TIMEOUT, read_timeout=10, retries={"max_attempts": 1}))


def check_postgres(stack: Stack, secrets: dict) -> str | None:
    try:
        connection = postgres.connect(stack, secrets["postgres_password"], timeout=TIMEOUT)
    except Exception as e:
        return first_line(e)
    connection.close()
    return None


def check_s3(stack: Stack, secrets: dict) -> str | None:
    try:
        s3_client(stack, secrets).head_bucket(Bucket=stack.bucket)   # the bucket exists and the keys work
    except Exception as e:
        return first_line(e)
    return None


def check_http(url: str, password: str) -> str | None:
    try:
        answer = requests.get(url, timeout=TIMEOUT, auth=(USER, password))
    except requests.RequestException as e:
        return type(e).__name__
    return None if answer.status_code == 200 else f"HTTP {answer.status_code}"


def check_mlflow(stack: Stack, secrets: dict) -> str | None:
    """An API call that needs the basic-auth app's admin: the server, its stores and its users' database."""
    return check_http(f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
                      secrets["mlflow_password"])


def check_git(stack: Stack, secrets: dict) -> str | None:
    """The repository's refs, as `git clone` asks for them first."""
    return check_http(f"{stack.git_url}/info/refs?service=git-upload-pack", secrets["git_password"])


def check_dask(stack: Stack, secrets: dict) -> str | None:
    """A TLS handshake with the scheduler, presenting the worker certificate and checking the
    scheduler's against the stack's CA (both directions of Dask's mutual TLS)."""
    context = ssl.create_default_context(cafile=str(stack.tls_dir / TLS_FILES["ca"]))
    context.check_hostname = False              # as Dask: the CA is the stack's own, names unchecked
    context.load_cert_chain(stack.tls_dir / TLS_FILES["worker_cert"], stack.tls_dir / TLS_FILES["worker_key"])
    try:
        with socket.create_connection((stack.host, stack.dask_port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw) as tls:
                tls.getpeercert()
    except (OSError, ssl.SSLError) as e:
        return type(e).__name__
    return None


def check_worker(stack: Stack, secrets: dict) -> str | None:
    """The work pool is READY: a worker has polled it lately (Prefect's own view of the worker)."""
    try:
        answer = requests.get(f"{stack.prefect_url}/api/work_pools/{stack.work_pool}", timeout=TIMEOUT,
                              auth=(USER, secrets["prefect_password"]))
    except requests.RequestException as e:
        return type(e).__name__
    if answer.status_code != 200:
        return f"work pool '{stack.work_pool}': HTTP {answer.status_code}"
    status = answer.json().get("status")
    return None if status == "READY" else f"work pool '{stack.work_pool}' is {status}"


CHECKS = {
    "postgres": check_postgres,
    "s3": check_s3,
    "mlflow": check_mlflow,
    "prefect-server": lambda stack, secrets: check_http(f"{stack.prefect_url}/api/health", secrets["prefect_password"]),
    "git": check_git,
    "dask-scheduler": check_dask,
    "prefect-worker": check_worker,
}


def check(service: str, stack: Stack, secrets: dict) -> str | None:
    return CHECKS[service](stack, secrets)


def wait_healthy(service: str, stack: Stack, secrets: dict, timeout: float, is_up=lambda: True) -> float:
    """Wait until `service` answers; return the seconds waited. `is_up()` False means its process died."""
    started = time.monotonic()
    while (problem := check(service, stack, secrets)) is not None:
        if not is_up():
            raise PipelineError(f"{service} exited while starting; see {stack.logs / service}.log (a port of "
                                "params.yaml `stack` taken by another program?), then `make stack` again")
        if time.monotonic() - started > timeout:
            raise PipelineError(f"{service} did not answer within {timeout:.0f} s ({problem}); "
                                f"see {stack.logs / service}.log")
        time.sleep(0.5)
    return time.monotonic() - started


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
