"""The embed stage's tables: one parquet file per split, columns mu_0.., logvar_0.., label.

Read back checked (vae_pipeline.artifacts): the columns of one latent width, every value
finite, and the labels those of the data set's split, row for row, so a table of another
data set, cut short or shuffled is refused before anything is computed from it.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from vae_pipeline.artifacts import check_columns, check_labels, read_table
from vae_pipeline.files import damaged_output


def latent_columns(latent_dim: int) -> list[str]:
    """The table's columns of mu and log sigma^2, in order."""
    return [f"mu_{j}" for j in range(latent_dim)] + [f"logvar_{j}" for j in range(latent_dim)]


def read_embeddings(path: Path, split: str, labels: np.ndarray, latent_dim: int | None = None) -> pd.DataFrame:
    """The embed stage's table of `split`, whose labels in the data set are `labels`.

    With `latent_dim` (the model's), the table must be of that width; without, of any width
    (a stage that does not read the model), its mu and logvar columns alike.
    """
    path = Path(path)
    table = read_table(path, "embed", {"label": "int"})
    width = sum(str(column).startswith("mu_") for column in table.columns)
    if width == 0:
        raise damaged_output(path, "no mu_ columns", "embed")
    if latent_dim is not None and width != latent_dim:
        raise damaged_output(path, f"{width} mu_ columns, but the model has latent_dim {latent_dim}", "embed")
    check_columns(path, table, {column: "float" for column in latent_columns(width)}, "embed")
    check_labels(path, table["label"].to_numpy(), labels, split, "embed")
    return table


def read_mu(path: Path, split: str, labels: np.ndarray,
            latent_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mu (N, d) as float32 and the labels of an embed stage table (see read_embeddings)."""
    table = read_embeddings(path, split, labels, latent_dim)
    width = sum(str(column).startswith("mu_") for column in table.columns)
    return table[latent_columns(width)[:width]].to_numpy(np.float32), table["label"].to_numpy()
