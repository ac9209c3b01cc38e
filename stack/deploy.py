"""`make deploy`: `prefect deploy` of prefect.yaml's retrain deployment onto the stack's work pool.

prefect.yaml takes the deployment's name, the cron and the work pool from the environment
(`{{ $VAE_RETRAIN_DEPLOYMENT }}`, `{{ $VAE_RETRAIN_CRON }}`, `{{ $VAE_WORK_POOL }}`); this sets
them from params.yaml (retrain.deployment, retrain.schedule_cron, stack.work_pool), so each has
one source; the description is the flow's (flows/retrain.py). The deployment's runs then
happen in this checkout (prefect.yaml's pull step), run by the stack's worker, with the
stack's environment.
"""
import os
import subprocess
import sys
from pathlib import Path

from stack.settings import Stack, load_secrets
from vae_pipeline.errors import PipelineError
from vae_pipeline.settings import Settings, load_settings

# prefect.yaml's variables.
NAME_ENV, CRON_ENV, POOL_ENV = "VAE_RETRAIN_DEPLOYMENT", "VAE_RETRAIN_CRON", "VAE_WORK_POOL"


def deploy(stack: Stack) -> None:
    """`prefect deploy` onto the stack's Prefect server and work pool, with its credentials."""
    params = load_settings(stack.root / "params.yaml")
    prefect_deploy(stack.root, params, {**os.environ, **stack.client_env(load_secrets(stack))})
    print(f"deployment retrain/{params.retrain.deployment} on work pool '{stack.work_pool}', "
          f"cron '{params.retrain.schedule_cron}' (params.yaml retrain.schedule_cron)")


def prefect_deploy(root: Path, params: Settings, env: dict) -> None:
    """`prefect deploy` of `root`'s prefect.yaml on the server of env PREFECT_API_URL, its variables from `params`."""
    env = {**env, NAME_ENV: params.retrain.deployment, CRON_ENV: params.retrain.schedule_cron,
           POOL_ENV: params.stack.work_pool,
           "PWD": str(root)}              # prefect.yaml's pull step: the runs happen here
    result = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy",
                             "--name", params.retrain.deployment],
                            cwd=root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"prefect deploy failed (exit {result.returncode}): "
                            f"{(result.stdout + result.stderr).strip()[-1500:]}")
