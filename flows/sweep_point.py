"""One sweep point, run on whatever Dask worker gets it: from a recipe, with nothing of the project.

The sweep (flows/sweep.py) ships this module to the workers by value
(`cloudpickle.register_pickle_by_value`), so a worker needs only the venv, the
worker kit's environment and the network: it never imports the project, and
this module imports only the standard library and third-party packages.

A recipe (a dict, no credential in it: it travels through Dask and Prefect,
which records task inputs) says:
  git_url       where to clone the project from (the stack's git, or a path)
  commit        the commit to check out (the sweep's; `ref` names a branch that holds it)
  ref           optional branch to fetch the commit from
  stage         the dvc.yaml stage to run as a DVC experiment
  overrides     {params.yaml key: value}, passed as `dvc exp run -S key=value`
  exp_name      the DVC experiment's name
  dvc_remote    {"name": ..., and settings such as "url"}: the DVC remote to pull from and push to
  tags          MLflow tags of the point's training run (the sweep, the parent run, the point)
  tracking_uri  optional: the MLflow store when the worker's environment names none
  metrics_files the files of the point's figures (relative paths), returned to the sweep as text
  run_record    the run record file (params.yaml paths.run_record): the point's MLflow run
  env           the environment by name, as the project defines it (flows/sweep.py POINT_ENV):
                "set": variables every command gets (telemetry off); "git_user", "git_password":
                the variables of the git server's credentials; "run_tags": the variable the
                training reads its extra MLflow tags from; "secrets": the variables whose
                values no output line may show

Credentials come from the worker's environment (the worker kit's `env`): the git server's
user and password (sent as an HTTP header through git's GIT_CONFIG_* variables, never on a
command line), AWS_* for the DVC remote, MLFLOW_TRACKING_* for MLflow.
"""
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

OUTPUT_LINES = 5                               # the last lines of a failed command put in the error


def git_auth_env(url: str, user: str | None, password: str | None) -> dict:
    """git's environment for `url`: basic auth (the git server's user and password) as an extra HTTP
    header for that URL only (GIT_CONFIG_COUNT/KEY/VALUE: no file, nothing on a command line)."""
    env = {"GIT_TERMINAL_PROMPT": "0"}
    if user and password and url.startswith(("http://", "https://")):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{url}.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"})
    return env


def with_git_auth(env: dict, url: str, names: dict) -> dict:
    """`env` plus git's basic auth for `url`, from the variables the recipe names (recipe["env"])."""
    return {**env, **git_auth_env(url, env.get(names["git_user"]), env.get(names["git_password"]))}


def credentialed(url: str, user: str | None, password: str | None) -> str:
    """`url` with the git user and password in it, for DVC's own git client (dulwich), which reads
    neither git's extra headers nor its credential helpers. Written only into the clone's
    .git/config (a private temporary folder), never printed."""
    if not (user and password and url.startswith(("http://", "https://"))):
        return url
    parts = urllib.parse.urlsplit(url)
    login = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{login}@{parts.netloc.rsplit('@', 1)[-1]}"))


def secrets_of(names: list[str], environ=os.environ) -> list[str]:
    """The values no output line may show: those of the variables `names` (the git password, the S3
    secret, MLflow's password, ...), as they are and URL-quoted."""
    values = [environ.get(name) for name in names]
    return [v for v in values if v] + [urllib.parse.quote(v, safe="") for v in values if v]


def scrub(line: str, secrets: list[str]) -> str:
    for secret in secrets:
        line = line.replace(secret, "***")
    return line


def run(cmd: list[str], cwd: Path, env: dict, logger, what: str, secret_names: list[str]) -> list[str]:
    """Run `cmd`, logging each output line as it comes (the values of `secret_names` in `env` masked);
    raise naming `what` on failure."""
    secrets, lines = secrets_of(secret_names, env), []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1) as process:
        for line in process.stdout:
            line = scrub(line.rstrip(), secrets)
            if line:
                logger.info(line)
                lines.append(line)
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed on {socket.gethostname()} (exit code {process.returncode}):\n  "
                           + "\n  ".join(lines[-OUTPUT_LINES:]))
    return lines


def venv_env(extra: dict) -> dict:
    """The environment of the DVC and git commands: this venv's python first on PATH (dvc.yaml runs
    `python -m stages.X`, from the clone), plus `extra` (the recipe's variables: telemetry off)."""
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), **extra}


def dvc_remote_config(remote: dict, environ=os.environ) -> str:
    """The clone's .dvc/config.local: `remote` as its default remote. An S3 remote takes its endpoint
    from AWS_ENDPOINT_URL (the kit's: .dvc/config names the stack host's loopback address); its keys
    stay in the environment, where DVC's S3 client reads them."""
    settings = {key: value for key, value in remote.items() if key != "name"}
    url = settings.get("url", "")
    if environ.get("AWS_ENDPOINT_URL") and (url.startswith("s3://") or not url):
        settings["endpointurl"] = environ["AWS_ENDPOINT_URL"]
    lines = ["[core]", f"    remote = {remote['name']}", f"['remote \"{remote['name']}\"']"]
    lines += [f"    {key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def checkout(recipe: dict, repo: Path, env: dict, logger) -> None:
    """A fresh working copy of the recipe's commit in `repo`, its origin the recipe's git URL."""
    url, names = recipe["git_url"], recipe["env"]
    git_env = with_git_auth(env, url, names)

    def git(*args, what):
        run(["git", *args], repo, git_env, logger, what, names["secrets"])

    run(["git", "init", "-q", str(repo)], repo.parent, git_env, logger, "git init", names["secrets"])
    git("remote", "add", "origin", url, what="git remote add")
    source = f"refs/heads/{recipe['ref']}" if recipe.get("ref") else recipe["commit"]
    git("fetch", "-q", "origin", source, what=f"git fetch {url} {source}")
    git("checkout", "-q", "--detach", recipe["commit"], what=f"git checkout {recipe['commit']}")
    # DVC's git client (dulwich) pushes the experiment: it gets the credentials in the URL.
    git("config", "user.name", "vae sweep", what="git config")
    git("config", "user.email", "sweep@vae-pipeline.invalid", what="git config")
    config = repo / ".git" / "config"
    text = config.read_text()
    login = credentialed(url, env.get(names["git_user"]), env.get(names["git_password"]))
    config.write_text(text.replace(f"url = {url}\n", f"url = {login}\n", 1))
    config.chmod(0o600)


def exp_run_command(recipe: dict) -> list[str]:
    """`dvc exp run --pull <stage> -S key=value ... --name <exp>`."""
    sets = [arg for key, value in recipe["overrides"].items() for arg in ("-S", f"{key}={json.dumps(value)}")]
    # --pull: the stages the points share ran once before the sweep; their outputs and run cache are on
    # the remote, so DVC restores them from there ("Stage ... is cached") instead of running them again.
    return [sys.executable, "-m", "dvc", "exp", "run", "--pull", recipe["stage"], *sets, "--name", recipe["exp_name"]]


def read_texts(repo: Path, names: list[str]) -> dict[str, str]:
    """The files of `names` (relative to `repo`) that exist, by name: the sweep reads them with its own readers."""
    return {name: (repo / name).read_text() for name in names if (repo / name).is_file()}


def run_id_of(record_file: Path) -> str | None:
    """The MLflow run of the clone's only training, from its run record (None: restored, no run)."""
    if not record_file.exists():
        return None
    records = list(json.loads(record_file.read_text()).values())
    return records[-1]["run_id"] if records else None


def point_task():
    """`run_point` as a Prefect task. Made inside a function on purpose: Dask pickles a task with the
    standard pickle first, which would name this module for the worker to import; a function made
    here has no importable name, so Dask falls back to cloudpickle, which sends this module's code
    by value (cloudpickle.register_pickle_by_value, in flows/sweep.py)."""
    # Every point trains: Prefect must never skip one from a cache of its own.
    @task(name="run_point", cache_policy=NO_CACHE)
    def run_point_task(recipe: dict) -> dict:
        return run_point(recipe)
    return run_point_task


def stand_in_flow(name: str):
    """What the workers get as the flow of the flow run context that Prefect sends with each task:
    the sweep flow itself lives in the project (flows/sweep.py), which a worker cannot import. The
    task engine only reads the flow's settings from it; this one has the defaults."""
    from prefect import Flow

    def sweep_flow_on_a_worker():
        raise RuntimeError("the sweep flow runs on the sweep's host, not on a worker")
    return Flow(fn=sweep_flow_on_a_worker, name=name)


def run_point(recipe: dict) -> dict:
    """Clone, pull the shared inputs, run the point as a DVC experiment, push it; return its figures."""
    logger = get_run_logger()
    started = time.time()
    host, pid = socket.gethostname(), os.getpid()
    attempt = {"sweep.attempt.host": host, "sweep.attempt.pid": str(pid)}
    names = recipe["env"]
    env = venv_env({**names["set"], names["run_tags"]: json.dumps({**recipe["tags"], **attempt})})
    if not os.environ.get("MLFLOW_TRACKING_URI") and recipe.get("tracking_uri"):
        env["MLFLOW_TRACKING_URI"] = recipe["tracking_uri"]
    work = Path(tempfile.mkdtemp(prefix="vae-point-"))
    repo = work / "repo"
    repo.mkdir()
    timings = {}
    try:
        logger.info("point %s (%s) on %s, pid %d, in %s", recipe["exp_name"], recipe["overrides"], host, pid, work)
        mark = time.perf_counter()
        checkout(recipe, repo, env, logger)
        (repo / ".dvc" / "config.local").write_text(dvc_remote_config(recipe["dvc_remote"]))
        timings["checkout_s"] = round(time.perf_counter() - mark, 1)
        mark = time.perf_counter()
        lines = run(exp_run_command(recipe), repo, env, logger, f"dvc exp run ({recipe['exp_name']})",
                    names["secrets"])
        timings["exp_run_s"] = round(time.perf_counter() - mark, 1)
        mark = time.perf_counter()
        run([sys.executable, "-m", "dvc", "exp", "push", "--force", "--run-cache", "origin", recipe["exp_name"]], repo,
            with_git_auth(env, recipe["git_url"], names), logger, f"dvc exp push ({recipe['exp_name']})",
            names["secrets"])
        timings["push_s"] = round(time.perf_counter() - mark, 1)
        return {
            "exp_name": recipe["exp_name"],
            "overrides": recipe["overrides"],
            "host": host, "pid": pid, "address": host_address(recipe["git_url"]),
            "metrics_files": read_texts(repo, recipe["metrics_files"]),
            "mlflow_run_id": run_id_of(repo / recipe["run_record"]),
            "restored": any(line.startswith(f"Stage '{recipe['stage']}' is cached") for line in lines),
            # What DVC did: the stages it ran, and those it restored from the run cache.
            "stages_run": re.findall(r"^Running stage '([^']+)'", "\n".join(lines), re.M),
            "stages_restored": re.findall(r"^Stage '([^']+)' is cached", "\n".join(lines), re.M),
            "started": started, "seconds": round(time.time() - started, 1), **timings,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def host_address(url: str) -> str | None:
    """This host's address on the way to the git server (the interface a connection there leaves by);
    None for a path URL (the coordinator's own machine)."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))             # UDP: no packet is sent, the kernel only picks a route
            return s.getsockname()[0]
        except OSError:
            return None
