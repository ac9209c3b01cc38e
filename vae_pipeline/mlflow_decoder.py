"""The trained decoder as an MLflow model: what the model registry holds and a server would serve.

`log_decoder` exports the decoder with torch.export (MLflow's pickle-free `pt2`
format: a graph plus plain tensors, so loading it runs no pickled code), logs it
to the training's run and registers it. tracking.finish_training_run calls it.
"""
import copy

import numpy as np
import torch
from torch import nn

from vae_pipeline.datasets import IMAGE_SIZE

DECODER_NAME = "decoder"              # the MLflow model's name inside the run


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


def log_decoder(client, run_id: str, model, registered_name: str, model_params: dict[str, str]) -> str:
    """Log `model`'s decoder to run `run_id` as an MLflow model and register it as `registered_name`.

    `model_params` are the logged model's params (the run's). Returns the registered version.
    """
    import mlflow  # imported here: importing mlflow takes seconds, and only training logs a model
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    latent_dim = model.config["latent_dim"]
    # A CPU copy: exported on the CPU, it loads on any machine; the trained model stays put.
    decoder = ImageDecoder(copy.deepcopy(model.decoder).cpu()).eval()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent_dim))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, IMAGE_SIZE, IMAGE_SIZE))]))
    # Two rows: torch.export keeps a batch dimension of size 1 fixed, of size 2 it stays dynamic.
    example = np.random.default_rng(0).standard_normal((2, latent_dim)).astype(np.float32)
    # Created here, in the run's experiment: left to itself, log_model would use the default one.
    logged = client.create_logged_model(experiment_id=client.get_run(run_id).info.experiment_id,
                                        name=DECODER_NAME, source_run_id=run_id, params=model_params)
    info = mlflow.pytorch.log_model(
        decoder, name=DECODER_NAME, run_id=run_id, model_id=logged.model_id,
        serialization_format="pt2", signature=signature, input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        registered_model_name=registered_name, await_registration_for=60)
    return str(info.registered_model_version)
