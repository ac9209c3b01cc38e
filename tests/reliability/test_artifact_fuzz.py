"""Property-based tests of the readers of what one stage hands to the next.

Each kind of file a stage reads (the embed stage's parquet, the latent map, the model's
safetensors and config, the metrics JSON and the training curve) is written valid, then
damaged by hypothesis: at the byte level (flipped, set, deleted bytes, truncation,
appended junk) or in its structure (a column dropped, renamed or of another type, a value
NaN, infinite or out of range, rows lost or shuffled; a tensor of another shape, a config
key changed; a JSON key deleted or of another type). The stages' own read functions must
return a valid result (checked here) or raise the project's PipelineError naming the file;
any other exception fails the test. At least tests.reliability.fuzzing.EXAMPLES examples per kind.
"""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import strategies as st
from safetensors.torch import save_file

from tests.reliability.fuzzing import fuzz_reader, mutate, mutation, outcome_row
from vae_pipeline.ml.model import CONFIG_FILE, VAE, WEIGHTS_FILE, load_model, save_model
from vae_pipeline.outputs import (
    CURVE_COLUMNS,
    latent_columns,
    read_eval_metrics,
    read_history,
    read_latent_map,
    read_literature,
    read_map_metrics,
    read_mu,
    read_train_metrics,
)

pytestmark = pytest.mark.reliability

# Small files: a fuzz example takes milliseconds. A split of 8 images of 3 classes, a 2-D latent space.
LABELS = np.array([0, 2, 1, 1, 0, 2, 2, 1], np.uint8)
LATENT_DIM = 2
CONFIG = {"latent_dim": LATENT_DIM, "hidden_dims": [3], "likelihood": "bernoulli"}
ODD_VALUES = [math.nan, math.inf, -math.inf, 1e300, -1, 0, 0.5, 3, 255, 2**40]


# ---- damage ---------------------------------------------------------------------------------

# One change to a table: (kind, which column or row, a value).
table_damage = st.one_of(
    st.tuples(st.just("drop_column"), st.integers(0, 20), st.none()),
    st.tuples(st.just("rename_column"), st.integers(0, 20), st.sampled_from(["mu_9", "label ", "x2", "index"])),
    st.tuples(st.just("retype"), st.integers(0, 20), st.sampled_from(["str", "float64", "int8", "bool", "object"])),
    st.tuples(st.just("set_value"), st.integers(0, 200), st.sampled_from(ODD_VALUES)),
    st.tuples(st.just("drop_row"), st.integers(0, 20), st.none()),
    st.tuples(st.just("duplicate_row"), st.integers(0, 20), st.none()),
    st.tuples(st.just("shuffle"), st.integers(0, 2**16), st.none()),
    st.tuples(st.just("add_column"), st.integers(0, 20), st.sampled_from(["mu_2", "logvar_2", "extra"])),
)


def damage_table(table: pd.DataFrame, damages) -> pd.DataFrame:
    """`table` with each damage that pandas can make applied (one it cannot, e.g. NaN as int8, is left out)."""
    table = table.copy()
    for damage in damages:
        try:
            table = damage_once(table, *damage)
        except (TypeError, ValueError, OverflowError):
            pass
    return table.reset_index(drop=True)


def damage_once(table: pd.DataFrame, kind: str, at: int, value) -> pd.DataFrame:
    columns = list(table.columns)
    if kind == "add_column":
        return table.assign(**{value: np.float32(at)})
    if not columns or (table.empty and kind != "drop_column"):
        return table
    column = columns[at % len(columns)]
    if kind == "drop_column":
        return table.drop(columns=column)
    if kind == "rename_column":
        return table.rename(columns={column: value})
    if kind == "retype":
        return table.assign(**{column: table[column].astype(value)})
    if kind == "set_value":
        values = table[column].to_numpy(dtype=object).copy()
        values[(at // len(columns)) % len(table)] = value
        return table.assign(**{column: pd.Series(values, index=table.index).infer_objects()})
    if kind == "drop_row":
        return table.drop(index=table.index[at % len(table)])
    if kind == "duplicate_row":
        return pd.concat([table, table.iloc[[at % len(table)]]])
    return table.sample(frac=1, random_state=at)   # shuffle


# A table damaged in its structure, then (or instead) in its bytes.
table_damages = st.tuples(st.lists(table_damage, max_size=3), st.lists(mutation, max_size=3))


def write_damaged_table(path, table: pd.DataFrame, damages) -> None:
    structure, mutations = damages
    try:
        damage_table(table, structure).to_parquet(path, index=False)
    except (TypeError, ValueError, OverflowError):  # a damage pyarrow cannot write at all: keep the table
        table.to_parquet(path, index=False)
    path.write_bytes(mutate(path.read_bytes(), mutations))


def json_paths(value, prefix=()):
    """Every place in a JSON value: the keys and indices that lead to it."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from json_paths(item, (*prefix, i))


# One change to a JSON value: (delete or replace, which place, the new value).
json_damage = st.tuples(st.sampled_from(["delete", "replace"]), st.integers(0, 500),
                        st.sampled_from([None, "x", "", True, [], {}, *ODD_VALUES]))


def damage_json(value, damages):
    value = json.loads(json.dumps(value))
    for kind, at, new in damages:
        places = list(json_paths(value))[1:]      # not the whole value
        if not places:
            return new
        *parent_path, last = places[at % len(places)]
        parent = value
        for step in parent_path:
            parent = parent[step]
        if kind == "delete":
            del parent[last]
        else:
            parent[last] = new
    return value


json_damages = st.tuples(st.lists(json_damage, max_size=3), st.lists(mutation, max_size=3))


def write_damaged_json(path, value, damages) -> None:
    structure, mutations = damages
    path.write_bytes(mutate(json.dumps(damage_json(value, structure)).encode(), mutations))


# ---- the valid files ------------------------------------------------------------------------

def embeddings_table() -> pd.DataFrame:
    values = np.random.default_rng(0).normal(size=(len(LABELS), 2 * LATENT_DIM)).astype(np.float32)
    return pd.DataFrame({**dict(zip(latent_columns(LATENT_DIM), values.T)), "label": LABELS.astype(np.int64)})


MAP_INDEX = np.array([5, 0, 7, 2, 3, 6])      # 6 of the 8 images, in the map's own order


def latent_map_table() -> pd.DataFrame:
    xy = np.random.default_rng(1).normal(size=(len(MAP_INDEX), 2)).astype(np.float32)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": LABELS[MAP_INDEX].astype(np.int64),
                         "index": MAP_INDEX})


TRAIN_METRICS = {"test_recon": 140.5, "test_kl": 10.5}
TRAIN_DETAIL = {"test_loss": 151.0, "train_loss": 150.2, "test_loss_mu": 149.0, "test_recon_mu": 138.5,
                "best_test_loss": 150.9, "epochs": 3, "device": "cpu"}
EVAL_METRICS = {"iwae_nll": 148.0, "knn_accuracy": 0.75}
EVAL_DETAIL = {"dataset": "mnist", "binarize": "none", "likelihood": "bernoulli", "test_images": 8,
               "neg_elbo": 151.0, "recon": 140.5, "kl": 10.5, "neg_elbo_mu": 149.0, "recon_mu": 138.5,
               "iwae_samples": 10, "iwae_nll_se": 1.5, "active_units": 2, "mean_posterior_var": 0.4,
               "kl_per_dim": {"0": 6.0, "1": 4.5}, "mu_variance": {"0": 0.9, "1": 0.5}, "latent_dim": LATENT_DIM,
               "knn_accuracy_per_class": {"0": 1.0, "1": 0.5}, "knn_neighbors": 5}
MAP_METRICS = {"trustworthiness": 0.97}
LITERATURE = [{"reference": "Kingma & Welling 2014", "source": "arXiv:1312.6114", "figure": "-log p(x)",
               "reference_value": 96.0, "this_run": 148.0, "comparable": True, "same_recipe": False,
               "differences": ["epochs: 3 here, 1000 there"]},
              {"reference": "Burda et al. 2016", "source": "arXiv:1509.00519", "figure": "IWAE",
               "reference_value": 84.78, "this_run": None, "comparable": False, "same_recipe": False,
               "differences": ["binarize: none here, dynamic there"]}]
HISTORY = pd.DataFrame([[epoch, 160.0 - epoch, 150.0, 10.0, 161.0 - epoch, 151.0, 10.0] for epoch in (1, 2, 3)],
                       columns=CURVE_COLUMNS)


# ---- the tests --------------------------------------------------------------------------------

def test_embeddings_parquet(tmp_path, reliability):
    path = tmp_path / "train.parquet"

    def valid(found):
        mu, labels = found
        assert mu.shape == (len(LABELS), LATENT_DIM) and mu.dtype == np.float32 and np.isfinite(mu).all()
        np.testing.assert_array_equal(labels, LABELS)

    counts = fuzz_reader(table_damages, lambda damage: write_damaged_table(path, embeddings_table(), damage),
                         lambda: read_mu(path, "train", LABELS, LATENT_DIM), path, valid)
    reliability("fuzz", "read_mu on damaged embeddings parquet (hypothesis)", outcome_row(counts))


def test_latent_map_parquet(tmp_path, reliability):
    path = tmp_path / "latent_map.parquet"

    def valid(table):
        index = table["index"].to_numpy()
        assert len(table) == len(MAP_INDEX) and len(set(index)) == len(index)
        assert ((0 <= index) & (index < len(LABELS))).all()
        np.testing.assert_array_equal(table["label"], LABELS[index])
        assert np.isfinite(table[["x", "y"]].to_numpy(np.float32)).all()

    counts = fuzz_reader(table_damages, lambda damage: write_damaged_table(path, latent_map_table(), damage),
                         lambda: read_latent_map(path, "train", LABELS, len(MAP_INDEX)), path, valid)
    reliability("fuzz", "read_latent_map on a damaged latent map parquet (hypothesis)", outcome_row(counts))


# Damage to the model: the weights' bytes, the config's, the config's values, or a tensor of another shape.
model_damages = st.tuples(
    st.sampled_from([WEIGHTS_FILE, CONFIG_FILE]), st.lists(mutation, max_size=3),
    st.lists(json_damage, max_size=2),
    st.one_of(st.none(), st.tuples(st.integers(0, 20), st.integers(-1, 2), st.integers(0, 1))),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),     # a new header length (the first 8 bytes)
)


def test_model_safetensors_and_config(tmp_path, reliability):
    torch.manual_seed(0)
    model = VAE.from_config(CONFIG)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}

    def write(damages):
        target, mutations, config_damage, reshape, header_length = damages
        save_model(model, tmp_path, {"likelihood": CONFIG["likelihood"]})
        if reshape is not None:               # one tensor one row or column longer or shorter
            which, grow, axis = reshape
            name = sorted(state)[which % len(state)]
            shape = list(state[name].shape)
            shape[axis % len(shape)] = max(0, shape[axis % len(shape)] + grow)
            save_file({**state, name: torch.zeros(shape)}, str(tmp_path / WEIGHTS_FILE))
        if config_damage:
            write_damaged_json(tmp_path / CONFIG_FILE, CONFIG, (config_damage, []))
        if header_length is not None:
            weights = (tmp_path / WEIGHTS_FILE).read_bytes()
            (tmp_path / WEIGHTS_FILE).write_bytes(header_length.to_bytes(8, "little") + weights[8:])
        (tmp_path / target).write_bytes(mutate((tmp_path / target).read_bytes(), mutations))

    def valid(found):
        loaded, config = found
        assert loaded.to_mu.out_features == config["latent_dim"] and config["hidden_dims"]
        assert all(torch.isfinite(p).all() for p in loaded.parameters())
        assert loaded.decode(torch.zeros(1, config["latent_dim"])).shape == (1, 784)

    counts = fuzz_reader(model_damages, write, lambda: load_model(tmp_path), tmp_path, valid)
    reliability("fuzz", "load_model on damaged safetensors, headers and configs (hypothesis)", outcome_row(counts))


# A stage's headline figures and its detail are read together: each file, and its partner valid.
PAIRS = {"train.json": "train_detail.json", "eval.json": "eval_detail.json"}
FIGURES = {"train.json": TRAIN_METRICS, "train_detail.json": TRAIN_DETAIL, "eval.json": EVAL_METRICS,
           "eval_detail.json": EVAL_DETAIL}


def pair_reader(name: str):
    """The stage's reader on file `name` with its partner beside it, valid; it gives back what it
    read of file `name`."""
    headline = name if name in PAIRS else next(h for h, d in PAIRS.items() if d == name)
    files = [headline, PAIRS[headline]]
    read_pair = read_train_metrics if headline == "train.json" else \
        lambda *paths: read_eval_metrics(*paths, LATENT_DIM)

    def read(path):
        other = next(n for n in files if n != name)
        (path.parent / other).write_text(json.dumps(FIGURES[other]))
        figures = read_pair(*(path.parent / n for n in files))
        return {key: figures[key] for key in json.loads(path.read_bytes())}
    return read


@pytest.mark.parametrize("name, value, read", [
    *((name, value, pair_reader(name)) for name, value in FIGURES.items()),
    ("literature.json", LITERATURE, read_literature),
    ("map.json", MAP_METRICS, read_map_metrics),
])
def test_metrics_json(tmp_path, reliability, name, value, read):
    path = tmp_path / name

    def valid(found):
        assert found == json.loads(path.read_bytes())
        for leaf in found if isinstance(found, list) else [found]:
            assert all(math.isfinite(v) for v in leaf.values() if isinstance(v, float))

    counts = fuzz_reader(json_damages, lambda damage: write_damaged_json(path, value, damage),
                         lambda: read(path), path, valid)
    reliability("fuzz", f"the report's reader of a damaged {name} (hypothesis)", outcome_row(counts))


def test_training_curve_csv(tmp_path, reliability):
    path, epochs = tmp_path / "train.csv", len(HISTORY)

    def write(damages):
        structure, mutations = damages
        damage_table(HISTORY, structure).to_csv(path, index=False)
        path.write_bytes(mutate(path.read_bytes(), mutations))

    def valid(table):
        assert table["epoch"].tolist() == list(range(1, epochs + 1))
        assert np.isfinite(table[CURVE_COLUMNS].to_numpy(np.float32)).all()

    counts = fuzz_reader(table_damages, write, lambda: read_history(path, epochs), path, valid)
    reliability("fuzz", "read_history on a damaged train.csv (hypothesis)", outcome_row(counts))


def test_the_undamaged_files_read_back_exactly(tmp_path):
    """The properties are not vacuous: every valid file above is read as it was written."""
    embeddings_table().to_parquet(tmp_path / "train.parquet", index=False)
    mu, labels = read_mu(tmp_path / "train.parquet", "train", LABELS, LATENT_DIM)
    np.testing.assert_array_equal(mu, embeddings_table()[latent_columns(LATENT_DIM)[:LATENT_DIM]].to_numpy())
    latent_map_table().to_parquet(tmp_path / "map.parquet", index=False)
    pd.testing.assert_frame_equal(read_latent_map(tmp_path / "map.parquet", "train", LABELS, len(MAP_INDEX)),
                                  latent_map_table())
    model = VAE.from_config(CONFIG)
    save_model(model, tmp_path, {"likelihood": CONFIG["likelihood"]})
    loaded, config = load_model(tmp_path)
    assert config == CONFIG and all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters()))
    for name, value, read in [*((name, value, pair_reader(name)) for name, value in FIGURES.items()),
                              ("literature.json", LITERATURE, read_literature),
                              ("map.json", MAP_METRICS, read_map_metrics)]:
        (tmp_path / name).write_text(json.dumps(value))
        assert read(tmp_path / name) == value
    assert read_train_metrics(tmp_path / "train.json", tmp_path / "train_detail.json") == \
        {**TRAIN_METRICS, **TRAIN_DETAIL}
    assert read_eval_metrics(tmp_path / "eval.json", tmp_path / "eval_detail.json", LATENT_DIM) == \
        {**EVAL_METRICS, **EVAL_DETAIL}
    HISTORY.to_csv(tmp_path / "train.csv", index=False)
    pd.testing.assert_frame_equal(read_history(tmp_path / "train.csv", len(HISTORY)), HISTORY)
