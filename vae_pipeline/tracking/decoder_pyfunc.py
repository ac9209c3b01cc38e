"""The registered decoder as MLflow runs it: `mlflow.pyfunc.load_model` and `mlflow models serve`.

Latent vectors (N, latent_dim) in, images (N, 28, 28) in [0, 1] out. The evaluate
stage logs this file as an MLflow "model from code" (vae_pipeline/tracking/registry.py):
MLflow stores the file itself beside the model and runs it on loading, so no
pickled object is ever stored or loaded. The weights travel as the decoder's
torch.export graph in MLflow's `pt2` format, which `mlflow.pytorch.load_model`
checks for pickle payloads before loading (MLFLOW_ALLOW_PICKLE_DESERIALIZATION stays off).

Why a pyfunc of our own rather than the `pt2` model's built-in one:
  - every request is checked (shape, numbers, finite, 1..max_batch rows) and a bad
    one gets a message and an HTTP 400 from the scoring server, never a 500;
  - it runs on the CPU wherever it is loaded. MLflow's built-in loader moves a
    pytorch model to CUDA when a GPU is present, and refuses a `pt2` graph exported
    on the CPU there. A decoder of 4 -> 400 -> 784 is far too small for a GPU to
    pay off: copying a batch to the device and back costs more than the matmuls.

The file is self-contained (mlflow, numpy, pandas, torch only): the registered
model loads wherever those are installed, without this project.
model_config: latent_dim (the input width), max_batch (rows per call; params.yaml
serve.max_batch, which `make serve` passes again so the current value applies).
"""
import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

DECODER_ARTIFACT = "decoder"            # the artifact holding the pt2 graph, as mlflow.pytorch saved it


def refuse(message: str):
    """An error the scoring server answers with HTTP 400 and this message (any other is a 500)."""
    raise MlflowException(f"bad request: {message}", error_code=INVALID_PARAMETER_VALUE)


def latent_batch(model_input, latent_dim: int, max_batch: int) -> np.ndarray:
    """`model_input` as a float32 array (N, latent_dim) of finite numbers, 1 <= N <= max_batch."""
    values = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
    if values.dtype.kind not in "biuf":    # bool, int, unsigned, float: numbers
        refuse(f"latent vectors must be numbers, got values of type {values.dtype}")
    if values.ndim != 2 or values.shape[1] != latent_dim:
        refuse(f"expected a batch of latent vectors of shape (N, {latent_dim}), got shape {values.shape}")
    if len(values) == 0:
        refuse("empty batch: send at least one latent vector")
    if len(values) > max_batch:
        refuse(f"{len(values)} rows is more than the {max_batch} allowed per request; split the batch")
    values = np.ascontiguousarray(values, dtype=np.float32)
    finite = np.isfinite(values).all(axis=1)   # after the cast: 1e300 is infinite in float32
    if not finite.all():
        rows = np.flatnonzero(~finite)
        refuse(f"NaN or infinite values in {len(rows)} row(s), the first at row {rows[0]}")
    return values


class LatentDecoder(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.latent_dim = int(context.model_config["latent_dim"])
        self.max_batch = int(context.model_config["max_batch"])
        # No device given: the graph stays on the CPU it was exported on, GPU or not.
        self.decoder = mlflow.pytorch.load_model(context.artifacts[DECODER_ARTIFACT])

    # The np.ndarray hint tells MLflow not to infer a schema from it (the logged signature is the schema).
    def predict(self, context, model_input: np.ndarray, params=None):
        z = torch.from_numpy(latent_batch(model_input, self.latent_dim, self.max_batch))
        with torch.inference_mode():
            return self.decoder(z).numpy()


# What MLflow loads from this file.
mlflow.models.set_model(LatentDecoder())
