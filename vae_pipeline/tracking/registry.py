"""The model registry: the trained decoder as an MLflow model, and which version is in use (the champion).

The evaluate stage registers each model it evaluated (register_decoder): on the run that trained
it, `log_decoder` exports the decoder with torch.export (MLflow's pickle-free `pt2` format: a graph
plus plain tensors, so loading it runs no pickled code) and logs it inside a pyfunc model whose code
is vae_pipeline/tracking/decoder_pyfunc.py (checks each request, runs on the CPU; see there why); the
evaluation's figures become that logged model's metrics, and the version goes to the run record.
Registering moves no alias: only the champion gate does (champion.py).
"""
import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vae_pipeline.errors import PipelineError, redact_uri
from vae_pipeline.ml.data import IMAGE_SIZE
from vae_pipeline.params import Pipeline
from vae_pipeline.tracking import store

log = logging.getLogger("tracking")

DECODER_NAME = "decoder"              # the MLflow model's name inside the run
CHAMPION_ALIAS = "champion"           # the registered version in use: `make serve` serves it, retrains move it


class ImageDecoder(nn.Module):
    """The decoder alone: latent vectors (N, latent_dim) -> images (N, 28, 28) in [0, 1].

    One tensor in and one out is what torch.export accepts; the VAE's own
    forward returns a tuple.
    """

    def __init__(self, decoder: nn.Sequential):
        super().__init__()
        self.decoder = decoder

    def forward(self, z):
        return torch.sigmoid(self.decoder(z)).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def log_decoder(client, run_id: str, model, registered_name: str, model_params: dict[str, str],
                max_batch: int) -> tuple[str, str]:
    """Log `model`'s decoder to run `run_id` as an MLflow pyfunc model and register it as `registered_name`.

    `model_params` are the logged model's params (the run's); `max_batch` the rows a
    request may hold (params.yaml serve.max_batch). Returns (registered version, logged model id).
    """
    import mlflow  # imported here: importing mlflow takes seconds, and only training logs a model
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from vae_pipeline.tracking import decoder_pyfunc

    latent_dim = model.config["latent_dim"]
    # A CPU copy: exported on the CPU, it loads on any machine; the trained model stays put.
    decoder = ImageDecoder(copy.deepcopy(model.decoder).cpu()).eval()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent_dim))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, IMAGE_SIZE, IMAGE_SIZE))]))
    # Two rows: torch.export keeps a batch dimension of size 1 fixed, of size 2 it stays dynamic.
    example = np.random.default_rng(0).standard_normal((2, latent_dim)).astype(np.float32)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    # Created here, in the run's experiment: left to itself, log_model would use the default one.
    logged = client.create_logged_model(experiment_id=client.get_run(run_id).info.experiment_id,
                                        name=DECODER_NAME, source_run_id=run_id, params=model_params)
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / decoder_pyfunc.DECODER_ARTIFACT
        mlflow.pytorch.save_model(decoder, graph, serialization_format="pt2", signature=signature,
                                  input_example=example, pip_requirements=requirements)
        info = mlflow.pyfunc.log_model(
            name=DECODER_NAME, model_id=logged.model_id, python_model=decoder_pyfunc.__file__,
            artifacts={decoder_pyfunc.DECODER_ARTIFACT: str(graph)},
            model_config={"latent_dim": latent_dim, "max_batch": max_batch},
            signature=signature, input_example=example, pip_requirements=requirements,
            registered_model_name=registered_name, await_registration_for=60)
    # log_model links the model to the fluent API's active run only; this project logs by run id.
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return str(info.registered_model_version), logged.model_id


def register_decoder(params: Pipeline, model, figures: dict) -> dict | None:
    """Register the decoder of `model` (the one in paths.model_dir) on the run that trained it, with
    `figures` (name -> number) as its logged model's metrics and the run's, measured on the data set.

    Returns the model's run record, now naming the version; None (with a warning) when no run is
    recorded for the model (store.recorded_run): nothing is registered then.
    """
    client = store.connect(params.mlflow, params.paths)
    record = store.recorded_run(client, params.paths)
    if record is None:
        return None
    name, run_id = params.mlflow.model_name, record["run_id"]
    # The logged model's params are those of the run that trained it: the params that shaped it.
    version, model_id = log_decoder(client, run_id, model, name, client.get_run(run_id).data.params,
                                    params.serve.max_batch)
    store.log_metrics(client, run_id, figures, model_id=model_id,
                      dataset=store.data_input(params.paths, params.data).dataset)
    record |= dict(zip(store.REGISTRATION, (name, version, f"models:/{name}/{version}", model_id)))
    store.add_run_record(params.paths, record)
    log.info("decoder registered as %s (MLflow run %s)", record["model_uri"], run_id)
    return record


def served_version(client, name: str) -> str:
    """The version of registered model `name` in use: the champion. Only the champion gate names one
    (the first `make run` does): a registered version is not served until it is chosen."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:              # no such alias, or no such model
        pass
    where = f"MLflow model registry at {redact_uri(client.tracking_uri)}"
    if not client.search_model_versions(f"name = '{name}'"):
        raise PipelineError(f"{where}: no version of model '{name}' (params.yaml mlflow.model_name); train one "
                            "first (make run)")
    raise PipelineError(f"{where}: no version of model '{name}' is {CHAMPION_ALIAS} yet; `make run` names one "
                        "(its last step, the champion gate)")
