"""Benchmark: what logging a training to the team stack costs against the embedded store.

    python -m stages.download                      # the data, once
    make stack                                     # the stack, on params.yaml's ports
    python -m benchmarks.tracking_overhead [--epochs N] [--repeats N] [--threads N]

Runs the train stage's own `run(params)` in this process, taking turns between
the two stores (so a busy machine slows both alike): the embedded SQLite store
(in a scratch folder, its tables made before the first training) and the stack's
`mlflow server` on PostgreSQL with artifacts in SeaweedFS's S3. Each training
writes its model and metrics into the scratch folder, never into the project.

Printed per store: the median seconds of the whole stage and of its tracking
calls (connect, the run's params and tags, one request per epoch, the final
artifacts, the pt2 export and the registration), and the stack's overhead:
(stage on the stack - stage embedded) / stage embedded. Issue 13 asks for at
most 5%.
"""
import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, median
from stack.settings import Stack
from stages import train
from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.ml.data import dataset_dir
from vae_pipeline.params import validate
from vae_pipeline.settings import Settings, load_settings
from vae_pipeline.tracking import runs, store

# The tracking calls the train stage makes, by the module it calls them from.
TRACKING_CALLS = {store: ("connect",), runs: ("start_training_run", "log_epoch", "finish_training_run")}


def timed_tracking() -> dict[str, float]:
    """Wrap the tracking calls the train stage makes; the returned dict adds up their seconds."""
    spent = {"seconds": 0.0}
    for module, name in ((module, name) for module, names in TRACKING_CALLS.items() for name in names):
        original = getattr(module, name)

        @functools.wraps(original)
        def wrapper(*args, _original=original, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - started
        setattr(module, name, wrapper)
    return spent


def one_training(params: Settings, uri: str, scratch: Path, spent: dict) -> tuple[float, float]:
    """Train once, logging to `uri`; return (stage seconds, tracking seconds)."""
    paths = {key: str(scratch / key / Path(getattr(params.paths, key)).name)
             for key in ("model_dir", "checkpoint_dir", "train_metrics", "train_detail", "train_history")}
    params = params.model_copy(update={"mlflow": params.mlflow.model_copy(update={"tracking_uri": uri}),
                                       "paths": params.paths.model_copy(update=paths)})
    spent["seconds"] = 0.0
    started = time.perf_counter()
    train.run(params)
    return time.perf_counter() - started, spent["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml train.epochs")
    parser.add_argument("--repeats", type=int, default=2, help="trainings per store (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="default: params.yaml train.threads")
    args = parser.parse_args()

    os.environ.pop("MLFLOW_TRACKING_URI", None)   # it would win over each training's own store
    params = load_settings()
    changed = params.model_dump()
    if args.epochs:
        changed["train"]["epochs"] = args.epochs
    if args.threads is not None:
        changed["train"]["threads"] = args.threads
    params = validate(changed, Settings)                # the options checked as params.yaml's keys
    raw = dataset_dir(params.paths, params.data)
    if not raw.is_dir():
        raise PipelineError(f"{raw}: missing; run `python -m stages.download` first")
    stack = Stack.from_params()
    try:
        store.check_reachable(stack.mlflow_url, 5)
    except PipelineError as e:
        raise PipelineError(f"{e} (`make stack` starts it)") from None

    times = {"embedded": [], "stack": []}
    with tempfile.TemporaryDirectory(prefix="tracking-overhead-") as folder:
        uris = {"embedded": f"sqlite:///{folder}/mlflow.db", "stack": stack.mlflow_url}
        # Untimed: each store's tables and the experiment exist before the first training, as they do
        # after a checkout's first run (a new SQLite file takes seconds to get its tables).
        for uri in uris.values():
            mlflow = params.mlflow.model_copy(update={"tracking_uri": uri})
            store.experiment_id(store.connect(mlflow, params.paths), mlflow, params.paths)
        spent = timed_tracking()
        for repeat in range(args.repeats):
            for kind, uri in uris.items():
                times[kind].append(one_training(params, uri, Path(folder) / f"{kind}-{repeat}", spent))
                print(f"  {kind:<9} stage {times[kind][-1][0]:6.1f} s, tracking {times[kind][-1][1]:5.1f} s",
                      flush=True)

    import torch
    print(f"\n{machine(torch)}")
    print(f"{params.train.epochs} epochs, {args.repeats} trainings per store, medians:")
    stage = {kind: median(t for t, _ in found) for kind, found in times.items()}
    logged = {kind: median(s for _, s in found) for kind, found in times.items()}
    for kind in times:
        print(f"  {kind:<9} stage {stage[kind]:6.1f} s   tracking {logged[kind]:5.1f} s "
              f"({100 * logged[kind] / stage[kind]:.1f}% of the stage)")
    print(f"the stack's overhead: {100 * (stage['stack'] - stage['embedded']) / stage['embedded']:+.1f}% of the "
          f"stage (tracking calls alone: {100 * (logged['stack'] - logged['embedded']) / stage['embedded']:+.1f}%)")


if __name__ == "__main__":
    sys.exit(exit_code(main))
