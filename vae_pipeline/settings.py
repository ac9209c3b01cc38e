"""The operating settings of params.yaml: the sections no stage reads, and the loader of them all.

`prefect` (the pipeline flow), `sweep` (`make sweep`), `retrain` (the scheduled retrain) and
`stack` (the team's servers). They change how the project is run, never what a stage writes,
so no stage imports this module: dvc.yaml lists none of it, and a change here reruns nothing.
The flows and commands call `load_settings()`, which checks every section (the stages' ones
of vae_pipeline.params too) and refuses an unknown one. Each section is a model as the
stages' are (vae_pipeline/params.py: strict, closed, frozen, the same messages).
"""
from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict

from vae_pipeline.params import (
    Pipeline,
    Section,
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


class Prefect(Section):
    download_retries: Annotated[int, integer(0, 10)]
    retry_delay_seconds: Annotated[float, number(lo=0)]
    lock_wait_seconds: Annotated[float, number(lo=0)]


class Sweep(Section):
    beta: Annotated[list[float], list_of(number(lo=0))]
    latent_dim: Annotated[list[int], list_of(integer(1, 1024))]
    epochs: Annotated[int, integer(1)]
    threads: Annotated[int, integer(0)]
    stage: Annotated[str, text()]
    scheduler: Annotated[str | None, optional(text())]               # null: a local Dask cluster
    n_workers: Annotated[int, integer(1)]


class Retrain(Section):
    schedule_cron: Annotated[str, text()]                            # checked by Prefect when the deployment is served
    deployment: Annotated[str, text()]
    gate_metric: Annotated[str, choice("neg_elbo", "iwae_nll")]      # the evaluate stage's figure the gate compares
    margin: Annotated[float, number(lo=0)]
    seed: Annotated[int | None, optional(integer(0))]                # the served deployment's default seed


class Stack(Section):
    """`make stack`: the team's servers (stack/)."""
    state_dir: Annotated[str, text()]
    host: Annotated[str, address()]              # where every service binds; 127.0.0.1 unless it serves other hosts
    postgres_port: Annotated[int, integer(1, 65535)]
    s3_port: Annotated[int, integer(1, 65535)]
    seaweed_port: Annotated[int, integer(1, 65527)]                  # SeaweedFS uses it and the 8 ports above it
    mlflow_port: Annotated[int, integer(1, 65535)]
    prefect_port: Annotated[int, integer(1, 65535)]
    git_port: Annotated[int, integer(1, 65535)]
    dask_port: Annotated[int, integer(1, 65535)]
    bucket: Annotated[str, text()]
    work_pool: Annotated[str, text()]


class Settings(Pipeline):
    """Every section of params.yaml: the stages' (Pipeline) and the operating settings; no other."""
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    prefect: Prefect
    sweep: Sweep
    retrain: Retrain
    stack: Stack


def load_settings(path: Path | None = None) -> Settings:
    """Read params.yaml (the project's, or `path`) and check every section; an unknown one is an error."""
    params, source = read_params(path)
    return validate(params, Settings, source)
