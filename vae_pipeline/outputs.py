"""What one stage hands to the next, read back with checks: tables, metrics, the training curve.

A stage reads what an earlier one wrote, and that file may have been damaged since: a disk
that filled up mid-write, a copy cut short, an edit by hand. The readers here check a whole
file before anything uses it (it parses; it holds the columns or keys its readers use, of
the right types; every number is finite; labels are classes of the data set and rows match
the data set) and otherwise raise the project's error, naming the file, what is wrong and
the stage that writes it:

    data/latent_map.parquet: 1999 rows, expected 2000 (...); rerun the latent_map stage (dvc repro latent_map)

Here: the shared checks, and the readers of the embed stage's tables, the latent map, the
metrics JSON files and the training curve. The model is read by saved_model.py and the IDX
files by ml/data.py, each beside the code that knows its format.
"""
import json
import math
from pathlib import Path
from typing import Annotated, Union

import numpy as np
import pandas as pd
from pydantic import AfterValidator

from vae_pipeline.errors import damaged_output, stage_output
from vae_pipeline.params import Rule, boolean, integer, list_of, mapping_of, optional, text

# The train stage's history, one row per epoch. MLflow gets every column; train.csv (paths.train_history)
# holds the figures alone, so a rerun with the same params writes it byte for byte again.
HISTORY_COLUMNS = ["epoch", "train_loss", "train_recon", "train_kl",
                   "test_loss", "test_recon", "test_kl", "seconds"]
CURVE_COLUMNS = HISTORY_COLUMNS[:-1]


def reason(error: Exception) -> str:
    """An exception as a short phrase for a message: its type and the first line of its text."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:160]}" if first else type(error).__name__


def shown(value) -> str:
    """A value as it appears in a message, cut to a readable length."""
    written = repr(value)
    return written if len(written) <= 60 else written[:57] + "..."


# ---- tables -------------------------------------------------------------------------------

def read_table(path: Path, stage: str, columns: dict[str, str]) -> pd.DataFrame:
    """The parquet (or .csv) file `path` written by `stage`, holding `columns` as checked by check_columns."""
    path = stage_output(Path(path), stage)
    try:
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as e:  # pyarrow and pandas raise many types for a damaged file (ArrowInvalid, OSError, ...)
        raise damaged_output(path, f"not a readable {path.suffix[1:]} file ({reason(e)})", stage) from None
    if table.columns.duplicated().any():
        raise damaged_output(path, f"column {shown(table.columns[table.columns.duplicated()][0])} appears "
                             "twice", stage)
    check_columns(path, table, columns, stage)
    return table


def check_columns(path: Path, table: pd.DataFrame, columns: dict[str, str], stage: str) -> None:
    """Each of `columns` is there with no value missing: "int" columns hold integers, "float" columns
    numbers that are finite as float32 (what the stages compute with)."""
    missing = [name for name in columns if name not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns[:12])) + (", ..." if len(table.columns) > 12 else "")
        raise damaged_output(path, f"missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                             f"(found: {found or 'none'})", stage)
    for name, kind in columns.items():
        column = table[name]
        numeric = pd.api.types.is_integer_dtype(column) or (
            kind == "float" and pd.api.types.is_float_dtype(column))
        if not numeric or pd.api.types.is_bool_dtype(column):
            raise damaged_output(path, f"column {name} holds {column.dtype}, expected "
                                 f"{'integers' if kind == 'int' else 'numbers'}", stage)
        if kind == "int" and column.isna().any():
            raise damaged_output(path, f"column {name} has a missing value at row "
                                 f"{int(np.flatnonzero(column.isna().to_numpy())[0])}", stage)
        if kind == "float":    # a missing value reads as NaN here
            with np.errstate(over="ignore"):
                finite = np.isfinite(column.to_numpy(np.float64, na_value=np.nan).astype(np.float32))
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise damaged_output(path, f"column {name} holds {column.iloc[row]} at row {row} "
                                     "(NaN, infinite or beyond float32)", stage)


def check_labels(path: Path, labels: np.ndarray, expected: np.ndarray, split: str, stage: str) -> None:
    """The table's labels are the data set's labels of `split`, row for row."""
    if len(labels) != len(expected):
        raise damaged_output(path, f"{len(labels)} rows, but the data set's {split} split has {len(expected)} "
                             "images", stage)
    wrong = np.flatnonzero(labels != expected)
    if len(wrong):
        i = int(wrong[0])
        raise damaged_output(path, f"row {i} has label {labels[i]}, but the data set's {split} image {i} is "
                             f"labelled {expected[i]} ({len(wrong)} rows differ)", stage)


# ---- the embed stage's tables: one parquet file per split, columns mu_0.., logvar_0.., label ----

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


# ---- the latent map -----------------------------------------------------------------------

LATENT_MAP_COLUMNS = {"x": "float", "y": "float", "label": "int", "index": "int"}


def latent_map_rows(split_rows: int, subsample: int | None) -> int:
    """How many points the latent map has: the split's rows, or latent_map.subsample of them."""
    return split_rows if subsample is None else min(subsample, split_rows)


def read_latent_map(path: Path, split: str, labels: np.ndarray, rows: int) -> pd.DataFrame:
    """The latent_map stage's table (x, y, label, index): `rows` points of the data set's `split`,
    whose labels are `labels`; each point's `index` is its row in the split, once."""
    table = read_table(path, "latent_map", LATENT_MAP_COLUMNS)
    if len(table) != rows:
        raise damaged_output(path, f"{len(table)} rows, expected {rows} (the {split} split has {len(labels)} "
                             "images; latent_map.subsample)", "latent_map")
    index = table["index"].to_numpy()
    outside = np.flatnonzero((index < 0) | (index >= len(labels)))
    if len(outside):
        raise damaged_output(path, f"row {int(outside[0])} has index {index[outside[0]]}, outside the "
                             f"{len(labels)} images of the {split} split", "latent_map")
    if len(np.unique(index)) != len(index):
        raise damaged_output(path, "an index appears twice: each point must be a different image", "latent_map")
    wrong = np.flatnonzero(table["label"].to_numpy() != labels[index])
    if len(wrong):
        i = int(wrong[0])
        raise damaged_output(path, f"row {i} has label {table['label'].iloc[i]}, but its image ({split} image "
                             f"{index[i]}) is labelled {labels[index[i]]}", "latent_map")
    return table


# ---- JSON ----------------------------------------------------------------------------------

def finite() -> Rule:
    def is_finite(value):
        try:
            if math.isfinite(value):
                return value
        except OverflowError:   # an integer beyond any float
            pass
        raise ValueError("not finite")
    return Rule("a finite number", Annotated[Union[int, float], AfterValidator(is_finite)])


# What each metrics file holds, as params.yaml's rules (vae_pipeline.params): a key its readers
# use that is missing or of the wrong type stops them with the key named. Extra keys are allowed.
# Each stage's figures in two files: the headline ones (a DVC metric: `dvc exp show`, `make exps`
# and `dvc metrics diff` show them, a column each; few enough that the experiments table of a
# sweep fits 120 columns, tests/test_exps.py) and the rest (a plain output: the figures per latent
# dimension and per class, the ones beside the headline figures, and what they were measured on).
# These lists decide which key goes where (split_figures).
TRAIN_METRICS = {"test_recon": finite(), "test_kl": finite()}   # distortion and rate; test_loss = recon + beta KL
TRAIN_DETAIL = {
    "test_loss": finite(), "train_loss": finite(), "test_loss_mu": finite(), "test_recon_mu": finite(),
    "best_test_loss": finite(), "epochs": integer(1), "device": text(),
}
EVAL_METRICS = {"iwae_nll": finite(), "knn_accuracy": finite()}
EVAL_DETAIL = {
    "dataset": text(), "binarize": text(), "likelihood": text(), "test_images": integer(1),
    "neg_elbo": finite(), "recon": finite(), "kl": finite(), "neg_elbo_mu": finite(), "recon_mu": finite(),
    "iwae_samples": integer(1), "iwae_nll_se": finite(), "active_units": integer(0), "mean_posterior_var": finite(),
    "kl_per_dim": mapping_of(finite()), "mu_variance": mapping_of(finite()), "latent_dim": integer(1),
    "knn_accuracy_per_class": mapping_of(finite()), "knn_neighbors": integer(1),
}
MAP_METRICS = {"trustworthiness": optional(finite())}   # null: latent_map.trustworthiness_samples is 0
# The DVC metrics files (params.yaml `paths` key -> what each holds): the headline figures that
# `dvc exp show` and `make exps` list (commands/exps.py). tests/test_exps.py checks them against dvc.yaml.
METRICS_FILES = {"train_metrics": TRAIN_METRICS, "eval_metrics": EVAL_METRICS}
LITERATURE_ROW = {
    "reference": text(), "source": text(), "figure": text(), "reference_value": finite(),
    "this_run": optional(finite()), "comparable": boolean(), "same_recipe": boolean(),
    "differences": list_of(text(), min_len=0),
}


def read_json(path: Path, stage: str):
    """The JSON value in `path`, written by `stage`."""
    path = stage_output(Path(path), stage)
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bad UTF-8
        raise damaged_output(path, f"not valid JSON ({reason(e)})", stage) from None


def check_fields(path: Path, data, rules: dict, stage: str, where: str = "") -> dict:
    """`data` is a JSON object whose keys follow `rules` (name -> Rule); `where` prefixes the key."""
    if not isinstance(data, dict):
        raise damaged_output(path, f"{where or 'the file '}holds {type(data).__name__}, expected a JSON object",
                             stage)
    for key, rule in rules.items():
        if key not in data:
            raise damaged_output(path, f"missing key '{where}{key}' ({rule.allowed})", stage)
        if not rule.check(data[key]):
            raise damaged_output(path, f"'{where}{key}' is {shown(data[key])}; expected {rule.allowed}", stage)
    return data


def split_figures(figures: dict, headline: dict, detail: dict) -> tuple[dict, dict]:
    """A stage's figures as its two files hold them: (the `headline` keys, the `detail` keys)."""
    unplaced = figures.keys() - headline.keys() - detail.keys()
    if unplaced:  # a new figure must be placed in one of the lists above
        raise ValueError(f"figures in neither list of vae_pipeline/outputs.py: {sorted(unplaced)}")
    return ({k: v for k, v in figures.items() if k in headline},
            {k: v for k, v in figures.items() if k in detail})


def read_train_metrics(path: Path, detail_path: Path) -> dict:
    """The train stage's final figures (paths.train_metrics and paths.train_detail, as one dict)."""
    detail = check_fields(detail_path, read_json(detail_path, "train"), TRAIN_DETAIL, "train")
    return {**detail, **check_fields(path, read_json(path, "train"), TRAIN_METRICS, "train")}


def read_eval_metrics(path: Path, detail_path: Path, latent_dim: int) -> dict:
    """The evaluate stage's figures (paths.eval_metrics and paths.eval_detail, as one dict), for a
    model of `latent_dim` dimensions."""
    metrics = check_fields(path, read_json(path, "evaluate"), EVAL_METRICS, "evaluate")
    detail = check_fields(detail_path, read_json(detail_path, "evaluate"), EVAL_DETAIL, "evaluate")
    if detail["latent_dim"] != latent_dim:
        raise damaged_output(detail_path, f"'latent_dim' is {detail['latent_dim']}, but the model has "
                             f"{latent_dim}", "evaluate")
    dims = {str(j) for j in range(latent_dim)}
    for key in ("kl_per_dim", "mu_variance"):
        if detail[key].keys() != dims:
            raise damaged_output(detail_path, f"'{key}' has dimensions {shown(sorted(detail[key]))}, expected "
                                 f"0..{latent_dim - 1}", "evaluate")
    if detail["active_units"] > latent_dim:
        raise damaged_output(detail_path, f"'active_units' is {detail['active_units']}, more than the {latent_dim} "
                             "dimensions", "evaluate")
    return {**detail, **metrics}


def read_map_metrics(path: Path) -> dict:
    """The latent_map stage's figures (paths.map_metrics)."""
    return check_fields(path, read_json(path, "latent_map"), MAP_METRICS, "latent_map")


def read_literature(path: Path) -> list[dict]:
    """The evaluate stage's rows beside published figures (paths.literature)."""
    rows = read_json(path, "evaluate")
    if not isinstance(rows, list):
        raise damaged_output(path, f"holds {type(rows).__name__}, expected a JSON list of rows", "evaluate")
    for i, row in enumerate(rows):
        check_fields(path, row, LITERATURE_ROW, "evaluate", where=f"row {i}: ")
        if row["comparable"] and row["this_run"] is None:
            raise damaged_output(path, f"row {i} is comparable but has no figure of this run", "evaluate")
    return rows


# ---- the training curve --------------------------------------------------------------------

def read_history(path: Path, epochs: int) -> pd.DataFrame:
    """The train stage's curve (paths.train_history): CURVE_COLUMNS, one row per epoch 1..`epochs`."""
    table = read_table(path, "train", {c: "int" if c == "epoch" else "float" for c in CURVE_COLUMNS})
    if table["epoch"].tolist() != list(range(1, epochs + 1)):
        raise damaged_output(path, f"holds epochs {shown(table['epoch'].tolist())}, expected 1 to {epochs} "
                             "(the epochs of the train metrics)", "train")
    return table
