"""`python -m flows.schedule`: serve the retrain flow as a deployment on its cron schedule.

Needs a Prefect server (see the README, "Scheduled retrains"): PREFECT_API_URL
must point at it. This process is the runner: it polls the server for the
deployment's scheduled or triggered runs and runs each in a subprocess, in this
project. Stop it with Ctrl-C; the schedule is paused until it is served again.
The deployment is `retrain/<params retrain.deployment>`, run by hand with
`prefect deployment run 'retrain/<name>'`.
"""
import os
import sys

from flows.retrain import retrain
from vae_pipeline.errors import PipelineError
from vae_pipeline.settings import load_settings


def main() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set: start a server (`prefect server start --host 127.0.0.1`) "
              "and `export PREFECT_API_URL=http://127.0.0.1:4200/api`", file=sys.stderr)
        sys.exit(2)
    try:
        settings = load_settings()["retrain"]
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    retrain.serve(name=settings["deployment"], cron=settings["schedule_cron"],
                  description="Re-check the data, rerun what DVC finds stale, gate the champion alias")


if __name__ == "__main__":
    main()
