"""Damaged outputs and stores through the real entry points: a clear error, exit 2, nothing changed.

A tiny project is built once per run (`dvc repro`, tests/conftest.py built_project). Each test damages
one file a stage wrote, in a copy of it, as a disk that filled up, an interrupted copy or a
hand edit would, and runs the stage that reads that file (`python -m stages.NAME`). It
checks the exit code, the message (the file, what is wrong, the stage to rerun) and that
no file in the project changed. The MLflow store is damaged the same way, and made to
fail at model registration, after a whole training: the previous model, metrics and run
record must stay as they were.
"""
import json
import re
import sqlite3
import struct

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import copy_project, put_data, run_in, set_params
from tests.reliability.helpers import run_stage, snapshot
from vae_pipeline.files import ROOT
from vae_pipeline.params import load_params
from vae_pipeline.tracking.store import training_run

pytestmark = pytest.mark.reliability

EMBEDDINGS_TRAIN, EMBEDDINGS_TEST = "data/embeddings/train.parquet", "data/embeddings/test.parquet"
LATENT_MAP, WEIGHTS, CONFIG = "data/latent_map.parquet", "models/vae.safetensors", "models/vae.json"
TRAIN_METRICS, HISTORY = "reports/metrics/train.json", "reports/metrics/train.csv"
TRAIN_DETAIL, EVAL_DETAIL = "reports/metrics/train_detail.json", "reports/metrics/eval_detail.json"
EVAL_METRICS, LITERATURE = "reports/metrics/eval.json", "reports/metrics/literature.json"
MAP_METRICS = "reports/metrics/map.json"


# ---- ways to damage a file ------------------------------------------------------------------

def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def changed_table(change):
    """A damage that rewrites a parquet file as change(table) (a valid file holding the wrong thing)."""
    def damage(path):
        change(pd.read_parquet(path)).to_parquet(path, index=False)
    return damage


def set_nan(table):
    table.loc[7, "mu_2"] = np.nan
    return table


def set_index(table):
    table.loc[0, "index"] = 2000
    return table


def changed_json(change):
    def damage(path):
        value = json.loads(path.read_text())
        path.write_text(json.dumps(change(value)))
    return damage


def huge_header_length(path):
    """The first 8 bytes (the header's length) say 2**62 bytes."""
    data = path.read_bytes()
    path.write_bytes((2 ** 62).to_bytes(8, "little") + data[8:])


def nan_weight(path):
    """The last float of the file's data, the last tensor's last value, made NaN."""
    data = path.read_bytes()
    path.write_bytes(data[:-4] + struct.pack("<f", float("nan")))


DAMAGES = [
    # what was tried, the file, the damage, the stage that reads it, the message it must give
    ("embeddings cut in half", EMBEDDINGS_TRAIN, cut_in_half, "latent_map",
     f"{EMBEDDINGS_TRAIN}: not a readable parquet file ("),
    ("embeddings: column logvar_1 missing", EMBEDDINGS_TEST,
     changed_table(lambda t: t.drop(columns="logvar_1")), "evaluate",
     f"{EMBEDDINGS_TEST}: missing column logvar_1 (found: mu_0, mu_1, mu_2, mu_3, logvar_0, logvar_2,"),
    ("embeddings: last row lost", EMBEDDINGS_TRAIN, changed_table(lambda t: t.iloc[:-1]), "latent_map",
     f"{EMBEDDINGS_TRAIN}: 1999 rows, but the data set's train split has 2000 images"),
    ("embeddings: latent width 3, the model's 4", EMBEDDINGS_TRAIN,
     changed_table(lambda t: t.drop(columns=["mu_3", "logvar_3"])), "report",
     f"{EMBEDDINGS_TRAIN}: 3 mu_ columns, but the model has latent_dim 4"),
    ("embeddings: a NaN in mu", EMBEDDINGS_TEST, changed_table(set_nan), "evaluate",
     f"{EMBEDDINGS_TEST}: column mu_2 holds nan at row 7 (NaN, infinite or beyond float32)"),
    ("embeddings: rows in another order", EMBEDDINGS_TRAIN,
     changed_table(lambda t: t.sample(frac=1, random_state=0)), "latent_map",
     f"{EMBEDDINGS_TRAIN}: row 0 has label"),
    ("latent map cut in half", LATENT_MAP, cut_in_half, "report",
     f"{LATENT_MAP}: not a readable parquet file ("),
    ("latent map: an index past the split", LATENT_MAP, changed_table(set_index), "report",
     f"{LATENT_MAP}: row 0 has index 2000, outside the 2000 images of the train split"),
    ("latent map: 100 rows lost", LATENT_MAP, changed_table(lambda t: t.iloc[:-100]), "report",
     f"{LATENT_MAP}: 1900 rows, expected 2000"),
    ("map.json: trustworthiness a string", MAP_METRICS, changed_json(lambda m: {**m, "trustworthiness": "high"}),
     "report", f"{MAP_METRICS}: 'trustworthiness' is "),
    ("weights: header length 2**62 bytes", WEIGHTS, huge_header_length, "embed",
     f"{WEIGHTS}: not a valid safetensors file (its header length is {2 ** 62} bytes"),
    ("weights cut in half", WEIGHTS, cut_in_half, "embed",
     f"{WEIGHTS}: not a valid safetensors file (tensor "),
    ("config: hidden_dims [300], the weights' [400]", CONFIG,
     changed_json(lambda c: {**c, "hidden_dims": [300]}), "evaluate",
     f"{WEIGHTS}: weights do not match vae.json (encoder.0.0.weight is F32 [400, 784] in the file, "
     "vae.json implies F32 [300, 784])"),
    ("weights: a NaN", WEIGHTS, nan_weight, "report",
     f"{WEIGHTS}: tensor to_mu.weight holds NaN or infinite values"),
    ("eval.json cut in half", EVAL_METRICS, cut_in_half, "report",
     f"{EVAL_METRICS}: not valid JSON (JSONDecodeError: "),
    ("eval.json: iwae_nll missing", EVAL_METRICS,
     changed_json(lambda m: {k: v for k, v in m.items() if k != "iwae_nll"}), "report",
     f"{EVAL_METRICS}: missing key 'iwae_nll' (a finite number)"),
    ("train.json: test_kl NaN", TRAIN_METRICS, changed_json(lambda m: {**m, "test_kl": float("nan")}),
     "report", f"{TRAIN_METRICS}: 'test_kl' is nan; expected a finite number"),
    ("train_detail.json: epochs missing", TRAIN_DETAIL,
     changed_json(lambda m: {k: v for k, v in m.items() if k != "epochs"}), "report",
     f"{TRAIN_DETAIL}: missing key 'epochs' (an integer >= 1)"),
    ("literature.json: an object, not a list", LITERATURE, changed_json(lambda rows: rows[0]), "report",
     f"{LITERATURE}: holds dict, expected a JSON list of rows"),
    ("train.csv: last epoch lost", HISTORY,
     lambda path: path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1])), "report",
     f"{HISTORY}: holds epochs [1], expected 1 to 2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, name, damage, stage, message", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_a_damaged_output_is_named_with_the_stage_to_rerun(built_project, tmp_path, reliability,
                                                           case, name, damage, stage, message):
    project = copy_project(built_project, tmp_path)
    damage(project / name)
    code, error, stray = run_stage(project, stage)
    reliability("damaged output", f"{case} ({stage} reads it)", error, code, stray)
    assert code == 2
    assert error.startswith(message), error
    assert error.endswith(f"; rerun the {writer_of(name)} stage (dvc repro {writer_of(name)})"), error
    assert stray == []


def writer_of(name: str) -> str:
    """The stage that writes output `name`, as dvc.yaml says."""
    params = load_params()
    for stage, entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        for out in [*entry.get("outs", []), *entry.get("metrics", []), *entry.get("plots", [])]:
            path = re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(getattr(getattr(params, m[1]), m[2])),
                          next(iter(out)) if isinstance(out, dict) else out)
            if name == path or name.startswith(path + "/"):
                return stage
    raise AssertionError(f"no stage of dvc.yaml writes {name}")


# ---- the raw labels and the MLflow store ----------------------------------------------------------

def test_a_label_outside_the_classes_is_named(project, tiny_source, reliability):
    raw = put_data(project, tiny_source)
    labels = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[8 + 3] = 12                     # the 4th label: class 12 of a 10-class data set
    labels.write_bytes(bytes(data))
    code, error, stray = run_stage(project, "train")
    reliability("bad input", "IDX label 12 in a 10-class data set", error, code, stray)
    assert code == 2
    assert error == ("data/raw/mnist/t10k-labels-idx1-ubyte: label 12 at row 3, but the data set has 10 "
                     "classes (0..9); rerun the download stage (dvc repro download)")
    assert stray == []


def test_a_tracking_store_that_is_not_a_database_stops_train_at_once(project, tiny_source, reliability):
    put_data(project, tiny_source)
    (project / "mlflow.db").write_bytes(b"not a database, a disk error's leftovers\n" * 200)
    damaged = (project / "mlflow.db").read_bytes()
    code, error, stray = run_stage(project, "train")
    reliability("fault", "MLflow store mlflow.db is not an SQLite database", error, code, stray)
    assert code == 2
    assert error == ("mlflow.db: not a usable SQLite database (file is not a database); move it aside to start "
                     "a new store, or restore it from a backup")
    assert (project / "mlflow.db").read_bytes() == damaged and stray == []


def new_store(database) -> None:
    """A new MLflow SQLite store at `database`, its tables created by mlflow itself."""
    import mlflow

    mlflow.MlflowClient(f"sqlite:///{database}").search_experiments(max_results=1)


def zero_table_root(database, table: str) -> None:
    """Overwrite the first page of `table` in an SQLite file with zeros, as a bad disk block would."""
    with sqlite3.connect(database) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    with open(database, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes(page_size))


def test_a_damaged_tracking_store_stops_train_before_it_reads_the_data(project, reliability):
    """A damaged page of the model registry's table: mlflow would meet it only at registration, after the
    last epoch. The store's check finds it first of all: here no data was downloaded, and the error is
    still the store's."""
    new_store(project / "mlflow.db")
    zero_table_root(project / "mlflow.db", "model_versions")
    code, error, stray = run_stage(project, "train")
    reliability("fault", "MLflow store damaged (model registry's page zeroed), no data yet", error, code, stray)
    assert code == 2
    assert error.startswith("mlflow.db: ") and "SQLite database" in error, error
    assert "train-images" not in error and stray == []


def refuse(database, trigger: str, table: str, when: str = "") -> None:
    """An SQLite trigger that aborts every insert into or update of `table` (as a store gone read-only would)."""
    with sqlite3.connect(database) as db:
        db.execute(f"CREATE TRIGGER {trigger} BEFORE {'UPDATE' if when else 'INSERT'} ON {table} {when} "
                   "BEGIN SELECT RAISE(ABORT, 'the store refuses this write'); END")


@pytest.mark.slow
def test_a_store_failing_at_the_end_of_train_or_at_registration_leaves_the_previous_outputs_whole(
        built_project, tmp_path, reliability):
    """A whole training, then the store refuses to finish its run; later the registry refuses the evaluated
    model's version (SQLite triggers). Each time the stage's previous outputs and the run record stay as they
    were; train keeps the last epoch's checkpoint, and each rerun moves its new set in together."""
    project = copy_project(built_project, tmp_path)
    # A store of its own, empty: the new weights' version is its first.
    (project / "mlflow.db").unlink()
    new_store(project / "mlflow.db")
    refuse(project / "mlflow.db", "refuse_finish", "runs", "WHEN NEW.status = 'FINISHED'")
    params = set_params(project, train={"seed": 1})                # other weights than the built ones
    record_file = params["paths"]["run_record"]
    outputs = [record_file, TRAIN_METRICS, TRAIN_DETAIL, HISTORY, WEIGHTS, CONFIG]
    before = {name: (project / name).read_bytes() for name in outputs}
    recorded = training_run(load_params(project / "params.yaml").paths, project)

    code, error, stray = run_stage(project, "train")
    checkpoint = f"{params['paths']['checkpoint_dir']}/train.pt"
    reliability("fault", "the store refuses to finish the run after the last epoch (outputs must stay the old set)",
                error, code, [name for name in stray if name != checkpoint])
    assert code == 2 and error.startswith("mlflow.db: finishing MLflow run "), error
    assert {name: (project / name).read_bytes() for name in outputs if name != record_file} == \
        {name: data for name, data in before.items() if name != record_file}
    # The record may gain the run of the staged model that never moved in; the model on disk keeps its own.
    assert training_run(load_params(project / "params.yaml").paths, project) == recorded
    assert checkpoint in stray                                     # kept on purpose: the rerun resumes
    assert not [p for p in snapshot(project) if ".staged-" in p]

    with sqlite3.connect(project / "mlflow.db") as db:
        db.execute("DROP TRIGGER refuse_finish")
    rerun = run_in(project, "python", "-m", "stages.train")
    assert "resuming from" in rerun.stderr and "epoch  1/" not in rerun.stderr
    assert all((project / name).read_bytes() != before[name] for name in outputs if name != CONFIG)
    assert not (project / checkpoint).exists()

    refuse(project / "mlflow.db", "refuse_versions", "model_versions")
    outputs = [record_file, EVAL_METRICS, EVAL_DETAIL, LITERATURE]
    before = {name: (project / name).read_bytes() for name in outputs}
    code, error, stray = run_stage(project, "evaluate")
    reliability("fault", "model registration fails after the evaluation (outputs must stay the old set)",
                error, code, stray)
    assert code == 2
    # (mlflow's message names the registry's failure, not the trigger's words)
    assert error.startswith("mlflow.db: registering the evaluated decoder failed") \
        and "Model Version creation error" in error, error
    assert {name: (project / name).read_bytes() for name in outputs} == before and stray == []

    with sqlite3.connect(project / "mlflow.db") as db:
        db.execute("DROP TRIGGER refuse_versions")
    run_in(project, "python", "-m", "stages.evaluate")
    assert all((project / name).read_bytes() != before[name] for name in outputs)
    record = training_run(load_params(project / "params.yaml").paths, project)
    assert record is not None and record["model_version"] == "1"   # the new weights' own record
