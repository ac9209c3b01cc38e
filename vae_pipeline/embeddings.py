"""The embed stage's tables: one parquet file per split, columns mu_0.., logvar_0.., label."""
import numpy as np
import pandas as pd

from vae_pipeline.files import PipelineError, stage_output


def read_mu(path) -> tuple[np.ndarray, np.ndarray]:
    """mu (N, d) as float32 and the labels of an embed stage parquet file."""
    table = pd.read_parquet(stage_output(path, "embed"))
    mu_columns = [c for c in table.columns if c.startswith("mu_")]
    if not mu_columns or "label" not in table.columns:
        raise PipelineError(f"{path}: expected columns mu_0.. and label, found {', '.join(table.columns)}")
    return table[mu_columns].to_numpy(np.float32), table["label"].to_numpy()
