"""Benchmark: what MLflow's system metrics cost a training (params.yaml mlflow.system_metrics_interval).

    python -m benchmarks.system_metrics [--pairs N] [--epochs N] [--interval S]

Two measures, in this process, on the downloaded data (`python -m stages.download` first):
  - one sample: the monitor's own work per sample, timed directly: reading CPU, memory,
    disk and network (psutil) and logging them in one request to a scratch SQLite store;
    its share of a training is that time over the sampling interval;
  - trainings: N pairs of short trainings (train stage, --epochs epochs, 1 thread), one
    without the monitor and one with it, in turn; the sum of the epoch times of each
    (the run's `train_seconds`), the median of each kind and the difference.
Each training writes to a temporary folder (model, metrics, its own MLflow store), never
to the project's.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine
from vae_pipeline.params import validate
from vae_pipeline.settings import Settings, load_settings


def one_sample_seconds(store: Path, samples: int = 20) -> tuple[float, float]:
    """Median wall seconds of one monitor sample (collect the metrics, log them to a run), and its
    mean CPU seconds (this process; the wall time includes waiting for the store's disk)."""
    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    uri = f"sqlite:///{store}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("system-metrics")).info.run_id
    monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
    seconds = []
    cpu = time.process_time()
    for _ in range(samples):
        started = time.perf_counter()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), (time.process_time() - cpu) / samples


def training_seconds(params: Settings, folder: Path, interval) -> float:
    """The epoch seconds of one training in `folder` with system metrics every `interval` s (None: off)."""
    import mlflow

    from stages.train import run
    from vae_pipeline.tracking.store import training_run

    folder.mkdir()
    paths = {key: path if key == "raw_dir" else str(folder / path)   # the downloaded data stay where they are
             for key, path in params.paths.model_dump().items()}
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    params = params.model_copy(update={
        "paths": params.paths.model_copy(update=paths),
        "mlflow": params.mlflow.model_copy(update={"tracking_uri": uri, "system_metrics_interval": interval})})
    run(params)
    record = training_run(params.paths, folder)
    return mlflow.MlflowClient(uri).get_run(record["run_id"]).data.metrics["train_seconds"]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=None, help="seconds; default: params.yaml's")
    args = parser.parse_args()
    params = load_settings()
    interval = args.interval or params.mlflow.system_metrics_interval or 10
    changed = params.model_dump()
    changed["train"].update(epochs=args.epochs, threads=1)
    params = validate(changed, Settings)                # --epochs checked as params.yaml's train.epochs
    with tempfile.TemporaryDirectory() as tmp:
        sample, sample_cpu = one_sample_seconds(Path(tmp) / "sample.db")
        times = {None: [], interval: []}
        for pair in range(args.pairs):
            for setting in times:
                times[setting].append(training_seconds(params, Path(tmp) / f"{pair}-{setting}", setting))
    print(f"# {machine(torch)}")
    print(f"one sample (collect + log): {sample * 1e3:.1f} ms wall = {sample / interval:.3%} of a {interval:g} s "
          f"interval; {sample_cpu * 1e3:.1f} ms CPU = {sample_cpu / interval:.3%}")
    if not args.pairs:
        return
    off, on = statistics.median(times[None]), statistics.median(times[interval])
    print(f"{args.pairs} pairs of {args.epochs}-epoch trainings, epoch seconds summed:")
    print(f"  without system metrics: {', '.join(f'{s:.2f}' for s in times[None])} s (median {off:.2f})")
    print(f"  every {interval:g} s:          {', '.join(f'{s:.2f}' for s in times[interval])} s (median {on:.2f})")
    print(f"  difference of the medians: {on - off:+.2f} s ({(on - off) / off:+.1%})")


if __name__ == "__main__":
    main()
