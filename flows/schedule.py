"""`python -m flows.schedule`: serve the retrain flow as a deployment on its cron schedule.

Needs a Prefect server (see docs/prefect.md, "Scheduled retrains"): PREFECT_API_URL
must point at it. This process is the runner: it polls the server for the
deployment's scheduled or triggered runs and runs each in a subprocess, in this
project. Stop it with Ctrl-C; the schedule is paused until it is served again.
The deployment is `retrain/<params retrain.deployment>`, run by hand with
`prefect deployment run 'retrain/<name>'`; its description is the flow's.
"""
import os
import sys

from flows.local_api import check_api
from flows.retrain import retrain
from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.settings import load_settings


def serve() -> None:
    settings = load_settings()
    if not os.environ.get("PREFECT_API_URL"):
        # The port of the project's Prefect server: the team stack's (params.yaml stack.prefect_port).
        port = settings.stack.prefect_port
        raise PipelineError(f"env PREFECT_API_URL is not set: start a server (`prefect server start --host "
                            f"127.0.0.1 --port {port}`) and `export PREFECT_API_URL=http://127.0.0.1:{port}/api`")
    check_api(os.environ["PREFECT_API_URL"])
    retrain.serve(name=settings.retrain.deployment, cron=settings.retrain.schedule_cron)


def main() -> None:
    sys.exit(exit_code(serve))


if __name__ == "__main__":
    main()
