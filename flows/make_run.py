"""`make run`: the `vae-pipeline` flow (flows/pipeline.py), unless there is nothing for it to do.

Nothing to do means: `dvc status` finds every stage up to date, and the champion gate already
decided on the model the pipeline left (paths.champion names its version, gated in the tracking
store now in use). Then `make run` says so in one line and exits, in about a second, without
starting Prefect (its import and local API alone take 5–7 s). In every other case, or when in
doubt (another pipeline holds the workspace lock, a file is missing or unreadable), it runs the
flow, which decides and reports as always: so too in a shell pointed at a team stack that is not
running, where the flow fails at once naming the stack.
"""
import fcntl
import json
import os
import sys
from pathlib import Path

from vae_pipeline.environment import STACK_ENV
from vae_pipeline.files import ROOT
from vae_pipeline.settings import load_settings
from vae_pipeline.tracking import elsewhere, store


def nothing_to_do(root: Path = ROOT) -> str | None:
    """Why the pipeline in `root` has nothing to do (a line for the user), or None if it may have."""
    from dvc.repo import Repo

    try:
        params = load_settings(root / "params.yaml")
        record = store.training_run(params.paths, root)
        decision = json.loads((root / params.paths.champion).read_text())
    except Exception:          # bad params, no record, no decision yet: the flow says what is wrong
        return None
    if (not record or not elsewhere.logged_here(record, params, root)
            or (decision.get("challenger") or {}).get("run_id") != record["run_id"]
            or decision["challenger"]["version"] != record.get("model_version")):
        return None
    try:
        lock = open(root / params.prefect.lock_file, "a+")     # noqa: SIM115 (held below)
    except OSError:
        return None
    with lock:
        try:     # a pipeline that is running may be about to change what dvc status sees
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        with Repo(str(root)) as repo:
            if repo.status():
                return None
    version, name, before = record["model_version"], record["model_name"], decision.get("champion")
    if decision["promoted"] or before is None or before["version"] == version:
        verdict = f"version {version} of '{name}' is the champion"
    else:
        verdict = f"the champion gate kept version {before['version']} of '{name}' over this model's {version}"
    return f"nothing to run: every stage of dvc.yaml is up to date, and {verdict}"


def stack_stopped() -> bool:
    """True when this shell did `source .stack/env` and the stack's Prefect server does not answer: the
    flow then fails at once, naming the stack and the way back, rather than "nothing to run" here."""
    import urllib.error
    import urllib.request

    if not (os.environ.get(STACK_ENV) and os.environ.get("PREFECT_API_URL")):
        return False
    try:
        urllib.request.urlopen(os.environ["PREFECT_API_URL"].rstrip("/") + "/health", timeout=5).close()
    except urllib.error.HTTPError:          # it answered (a refusal without credentials is an answer)
        return False
    except (OSError, ValueError):
        return True
    return False


def main() -> None:
    if not stack_stopped() and (line := nothing_to_do()) is not None:
        print(line)
        sys.exit(0)
    from flows.pipeline import main as run_pipeline

    run_pipeline()


if __name__ == "__main__":
    main()
