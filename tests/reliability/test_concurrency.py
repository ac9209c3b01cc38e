"""Eight trainings logging to one MLflow store at the same time lose nothing.

Eight processes, released together, each log what a training logs, through
the functions the train stage calls: `store.connect`, `start_training_run`
(params and tags), `log_epoch` once per epoch (seven metrics), `log_metrics`
for the final figures, then the run is marked FINISHED. They log back to back,
with no training in between: the worst case for the store. (The model upload
and registration of `finish_training_run` are left out: they take seconds of
CPU per run and write files, not metric rows.) Then every metric's history of
every run is read back and counted, for the embedded SQLite store and for an
`mlflow server` on 127.0.0.1.

Before any of that, a run logs its data set as an input: eight new runs of one
experiment logging the same data set together each find it or add it once.
"""
import multiprocessing
import time

import pytest
import torch

from vae_pipeline.ml.data import FILES
from vae_pipeline.params import Pipeline, load_params
from vae_pipeline.tracking import runs, store

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

WRITERS = 8
EPOCHS = 15
EPOCH_METRICS = ["train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl", "seconds"]
FINAL_METRICS = ["test_loss_mu", "test_recon_mu", "best_test_loss", "train_seconds"]


def writer_params(uri: str, folder, index: int) -> Pipeline:
    """The project's params, logging to `uri`; each writer has its own checkpoint folder (its open-run file)."""
    params = load_params()
    return params.model_copy(update={
        "mlflow": params.mlflow.model_copy(update={"tracking_uri": uri}),
        "paths": params.paths.model_copy(update={"raw_dir": str(folder / "raw"),
                                                  "checkpoint_dir": str(folder / f"checkpoints-{index}")}),
        "train": params.train.model_copy(update={"beta": float(index)})})  # a run name per writer, as a sweep


def log_like_a_training(uri: str, folder, index: int, start, results) -> None:
    """One writer (runs in its own process): what the train stage logs, as fast as it can."""
    params = writer_params(uri, folder, index)
    try:
        start.wait(timeout=300)  # every writer is ready: go
        started = time.monotonic()
        client = store.connect(params.mlflow, params.paths)
        opened = time.monotonic()
        run_id = runs.start_training_run(client, params, torch.device("cpu"), f"writer-{index}", [])
        for epoch in range(1, EPOCHS + 1):
            row = {"epoch": epoch, **{name: 100.0 * index + epoch + k / 10 for k, name in enumerate(EPOCH_METRICS)}}
            runs.log_epoch(client, run_id, row)
        store.log_metrics(client, run_id, {name: float(index) for name in FINAL_METRICS}, step=EPOCHS)
        client.set_terminated(run_id, status="FINISHED")
        results.put((index, run_id, None, (opened - started, time.monotonic() - opened)))
    except BaseException as e:  # reported to the test, which counts it as a failed writer
        message = (str(e).strip().splitlines() or [""])[0][:300]
        results.put((index, None, f"{type(e).__name__}: {message}", None))


def all_at_once(writer, args) -> tuple[list, list[int]]:
    """Run WRITERS processes of `writer(*args(i), start, results)`, released together by the barrier
    `start`; each puts one outcome on `results`. Returns the outcomes and the exit codes."""
    # Forked after torch and mlflow are imported (seconds each), before anything opened the store:
    # each writer opens its own connections, as a separate training would.
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(WRITERS), context.Queue()
    processes = [context.Process(target=writer, args=(*args(i), start, results)) for i in range(WRITERS)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return outcomes, [process.exitcode for process in processes]


def eight_writers_at_once(uri: str, folder) -> dict:
    """Run WRITERS writer processes together; count what the store holds afterwards."""
    import mlflow

    (folder / "raw" / "mnist").mkdir(parents=True)
    (folder / "raw" / "mnist" / "train-images-idx3-ubyte").write_bytes(b"tags hash the data files")
    outcomes, exit_codes = all_at_once(log_like_a_training, lambda i: (uri, folder, i))

    errors = sorted(f"writer {i}: {error}" for i, _, error, _ in outcomes if error)
    try:
        client = mlflow.MlflowClient(uri)
        stored = client.search_runs([e.experiment_id for e in client.search_experiments()])
        logged = {run.info.run_id: {name: len(client.get_metric_history(run.info.run_id, name))
                                    for name in EPOCH_METRICS + FINAL_METRICS}
                  for run in stored}
    except Exception as e:  # e.g. a SQLite store left half-created by writers that raced to create it
        errors.append(f"store unreadable afterwards: {(str(e).strip().splitlines() or [''])[0][:300]}")
        stored, logged = [], {}
    return {
        "errors": errors,
        "runs": {run_id for _, run_id, _, _ in outcomes if run_id},
        "exit_codes": exit_codes,
        "statuses": {run.info.run_id: run.info.status for run in stored},
        "params": {run.info.run_id: run.data.params for run in stored},
        "latest": {run.info.run_id: run.data.metrics for run in stored},
        "logged": logged,
        "points": sum(sum(counts.values()) for counts in logged.values()),
        "expected": WRITERS * (EPOCHS * len(EPOCH_METRICS) + len(FINAL_METRICS)),
        # Slowest writer: seconds to open the store, seconds to log everything.
        "open_seconds": max((s[0] for *_, s in outcomes if s), default=0.0),
        "log_seconds": max((s[1] for *_, s in outcomes if s), default=0.0),
    }


def check_nothing_lost(found: dict, store: str, reliability) -> None:
    finished = sum(status == "FINISHED" for status in found["statuses"].values())
    reliability("concurrency", f"{WRITERS} runs logging at once ({EPOCHS} epochs x {len(EPOCH_METRICS)} "
                f"metrics) to {store}",
                f"{found['points']}/{found['expected']} points stored, {finished}/{WRITERS} runs FINISHED, "
                f"{len(found['errors'])} errors; open {found['open_seconds']:.0f}s, log "
                f"{found['log_seconds']:.0f}s" + "".join(f"; {error}" for error in found["errors"][-1:]))
    assert found["errors"] == [] and found["exit_codes"] == [0] * WRITERS
    assert len(found["runs"]) == WRITERS and set(found["statuses"]) == found["runs"]
    assert set(found["statuses"].values()) == {"FINISHED"}
    expected_params = len(runs.flat_params(load_params()))
    assert sorted(int(float(p["train.beta"])) for p in found["params"].values()) == list(range(WRITERS))
    for run_id, counts in found["logged"].items():
        assert counts == {**{m: EPOCHS for m in EPOCH_METRICS}, **{m: 1 for m in FINAL_METRICS}}, run_id
        params = found["params"][run_id]
        assert len(params) == expected_params, run_id
        # Each writer's own figures, in its own run (writer i logs beta = i, last test_loss = 100 i + 15.3).
        index = int(float(params["train.beta"]))
        assert found["latest"][run_id]["test_loss"] == pytest.approx(100 * index + EPOCHS + 0.3), run_id
    assert found["points"] == found["expected"]


def test_eight_runs_log_at_once_to_the_sqlite_store(tmp_path, reliability):
    found = eight_writers_at_once(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    check_nothing_lost(found, "one SQLite store", reliability)


def test_eight_runs_log_at_once_to_an_mlflow_server(tmp_path, mlflow_server, reliability):
    url, _ = mlflow_server
    found = eight_writers_at_once(url, tmp_path)
    check_nothing_lost(found, "an mlflow server", reliability)


def log_one_data_set(uri: str, index: int, rounds: int, start, results) -> None:
    """One writer: in each round a new run logs that round's data set, all writers together."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("data-sets").experiment_id
    errors = []
    for round_ in range(rounds):
        params = load_params()
        checksums = {name: f"{round_:064x}" for name in FILES}                  # a data set new to the store
        params = params.model_copy(update={"data": params.data.model_copy(update={"sha256": checksums})})
        run_id = client.create_run(experiment).info.run_id
        start.wait(timeout=120)
        try:
            runs.log_data_input(client, run_id, params)
        except Exception as e:  # counted by the test
            errors.append(f"writer {index}, round {round_}: {(str(e).strip().splitlines() or [''])[0][:200]}")
    results.put(errors)


def test_eight_runs_logging_one_new_data_set_at_once_each_get_it(tmp_path, reliability):
    # The store looks the data set up, then inserts it: without a retry, about one call in five
    # failed here on its unique key (32 of 160 in one try), as one writer did on the stack's PostgreSQL.
    import mlflow

    uri, rounds = f"sqlite:///{tmp_path}/mlflow.db", 5
    mlflow.MlflowClient(uri).create_experiment("data-sets")
    outcomes, _ = all_at_once(log_one_data_set, lambda i: (uri, i, rounds))
    errors = [error for outcome in outcomes for error in outcome]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("data-sets").experiment_id])
    digests = [inp.dataset.digest for run in runs for inp in run.inputs.dataset_inputs]
    reliability("concurrency", f"{WRITERS} new runs logging one new data set at once, {rounds} rounds",
                f"{len(errors)} errors; {len(runs)} runs, {len(set(digests))} data sets"
                + "".join(f"; {error}" for error in errors[-1:]))
    assert errors == []
    assert len(runs) == WRITERS * rounds and len(digests) == len(runs) and len(set(digests)) == rounds
