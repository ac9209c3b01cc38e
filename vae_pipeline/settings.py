"""The operating settings of params.yaml: the sections no stage reads, and the loader of them all.

`prefect` (the flows), `sweep` (`make sweep`), `retrain` (the scheduled retrain), `mlflow_ui`
(`make mlflow-ui`) and `stack` (the team's servers). They change how the project is run, never what a stage writes,
so no stage imports this module: dvc.yaml lists none of it, and a change here reruns nothing.
The flows and commands call `load_settings()`, which checks every section (the stages' ones
of vae_pipeline.params too) and refuses an unknown one.
"""
from pathlib import Path

from vae_pipeline.params import (
    PIPELINE,
    address,
    choice,
    integer,
    list_of,
    number,
    optional,
    read_params,
    text,
    validate,
)

SETTINGS = {
    "prefect": {
        "download_retries": integer(0, 10),
        "retry_delay_seconds": number(lo=0),
        "lock_wait_seconds": number(lo=0),
        "lock_file": text(),                           # the flows' workspace lock, in the project
        "home": text(),                                # PREFECT_HOME unless the environment sets one
    },
    "sweep": {
        "beta": list_of(number(lo=0)),
        "latent_dim": list_of(integer(1, 1024)),
        "epochs": integer(1),
        "threads": integer(0),
        "stage": text(),
        "scheduler": optional(text()),                 # null: a local Dask cluster
        "n_workers": integer(1),
    },
    "retrain": {
        "schedule_cron": text(),                       # checked by Prefect when the deployment is served
        "deployment": text(),
        "gate_metric": choice("neg_elbo", "iwae_nll"),  # the evaluate stage's figure the gate compares
        "margin": number(lo=0),
        "seed": optional(integer(0)),                  # the served deployment's default seed
    },
    "mlflow_ui": {                                     # `make mlflow-ui` (commands/mlflow_ui.py)
        "port": integer(1, 65535),
    },
    "stack": {                                         # `make stack`: the team's servers (stack/)
        "state_dir": text(),
        "host": address(),                             # where every service binds (127.0.0.1 unless it serves others)
        "postgres_port": integer(1, 65535),
        "s3_port": integer(1, 65535),
        "seaweed_port": integer(1, 65527),             # SeaweedFS uses it and the 8 ports above it
        "mlflow_port": integer(1, 65535),
        "prefect_port": integer(1, 65535),
        "git_port": integer(1, 65535),
        "dask_port": integer(1, 65535),
        "bucket": text(),
        "work_pool": text(),
    },}

# The DVC remote on the stack's bucket: its section in .dvc/config, which `make stack` completes in
# .dvc/config.local (endpoint and keys) and makes the default; a stack sweep's points push to it.
STACK_DVC_REMOTE = "stack"

# Every section of params.yaml.
SCHEMA = {**PIPELINE, **SETTINGS}


def load_settings(path: Path | None = None) -> dict:
    """Read params.yaml (the project's, or `path`) and check every section; an unknown one is an error."""
    params, source = read_params(path)
    return validate(params, SCHEMA, source, whole=True)
