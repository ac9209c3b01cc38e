"""Benchmark: UMAP of the 60,000 training mu to 2-D, as the latent_map stage runs it.

    python -m benchmarks.umap [--subsample N]

Ways, each timed in fresh processes (numba's cache only matters to a new one):
  random_state 42     the article's: reproducible, but UMAP then runs on one core;
  random_state null   not reproducible, UMAP's parallel code on every core;
  42 + exact kNN      the neighbours from scikit-learn's KD-tree, handed to UMAP as
                      `precomputed_knn`: no pynndescent, whose search numba compiles
                      afresh in every process (its functions cannot be cached).
Timings per way:
  first call   a fresh Python with an empty numba cache: numba compiles UMAP's code;
  cached call  a second fresh Python with that cache filled (what the stage's
               NUMBA_CACHE_DIR in the project buys every later run);
  warm refit   a second fit in that same process: nothing left to compile or load.
Wall seconds, and CPU seconds (all threads) in brackets: on a busy machine the CPU
seconds are the fairer figure. Needs data/embeddings/train.parquet (`dvc repro embed`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import machine
from vae_pipeline.files import ROOT, PipelineError, project_path
from vae_pipeline.params import load_params

# TODO(lead): stages/latent_map.py (issue 3) is not on this branch: once merged, build the reducer
# with the stage's own code instead of repeating its arguments; until then, its params.yaml defaults.
DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean", "random_state": 42}
WAYS = {"random_state 42": (42, False), "random_state null (parallel)": (None, False),
        "random_state 42, exact kNN (KD-tree)": (42, True)}


def map_params(params: dict) -> dict:
    return {**DEFAULTS, **params.get("latent_map", {})}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> list[float]:
    """[wall, CPU] seconds since `start`."""
    return [time.perf_counter() - start[0], time.process_time() - start[1]]


def child(random_state: int | None, exact_knn: bool, subsample: int | None, refit: bool) -> None:
    """One measured process: import umap, fit (and fit again); prints a JSON line of seconds."""
    start = clock()
    import numpy as np
    import pandas as pd
    import umap
    figures = {"import": since(start)}

    params = load_params()
    p = map_params(params)
    table = pd.read_parquet(project_path(params["paths"]["embeddings_dir"]) / "train.parquet")
    mu = table[[c for c in table.columns if c.startswith("mu_")]].to_numpy(np.float32)[:subsample]
    for run in ["fit", "refit"][:2 if refit else 1]:
        start = clock()
        knn = None
        if exact_knn:
            from sklearn.neighbors import NearestNeighbors
            search = NearestNeighbors(n_neighbors=p["n_neighbors"], metric=p["metric"], n_jobs=1).fit(mu)
            distances, indices = search.kneighbors(mu)  # each point's first neighbour is itself, as in UMAP
            knn = (indices, distances.astype(np.float32), None)
        # As the stage: a fixed random_state makes UMAP single-threaded; null lets it use every core.
        reducer = umap.UMAP(n_components=2, n_neighbors=p["n_neighbors"], min_dist=p["min_dist"],
                            metric=p["metric"], random_state=random_state,
                            n_jobs=1 if random_state is not None else -1, precomputed_knn=knn or (None,) * 3)
        reducer.fit_transform(mu)
        figures[run] = since(start)
    print(json.dumps({**figures, "points": len(mu)}))


def measure(way: tuple, subsample: int | None, cache: str, refit: bool = False) -> dict:
    """Seconds of one child process; `process` is its whole life (wall), less the refit."""
    random_state, exact_knn = way
    cmd = [sys.executable, "-m", "benchmarks.umap", "--child", json.dumps([random_state, exact_knn])]
    cmd += ["--refit"] * refit + (["--subsample", str(subsample)] if subsample else [])
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "NUMBA_CACHE_DIR": cache},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"UMAP child process failed:\n{result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["process"] = time.perf_counter() - started - figures.get("refit", [0, 0])[0]
    return figures


def seconds(pair: list[float]) -> str:
    return f"{pair[0]:.1f} s ({pair[1]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsample", type=int, help="map only the first N mu (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--refit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(*json.loads(args.child), args.subsample, args.refit)

    params = load_params()
    path = project_path(params["paths"]["embeddings_dir"]) / "train.parquet"
    if not path.exists():
        raise PipelineError(f"{path}: missing; run the pipeline first (dvc repro embed)")
    p = map_params(params)
    print(f"machine: {machine()}")
    print(f"UMAP n_neighbors {p['n_neighbors']}, min_dist {p['min_dist']}, metric {p['metric']}; "
          f"mu from {path.relative_to(ROOT)}")
    rows = []
    for label, way in WAYS.items():
        with tempfile.TemporaryDirectory(prefix="bench-numba-") as cache:
            first = measure(way, args.subsample, cache)
            cached = measure(way, args.subsample, cache, refit=True)
        rows.append((label, first, cached))
        print(f"{label}: first call fit {seconds(first['fit'])}, cached call fit {seconds(cached['fit'])}, "
              f"warm refit {seconds(cached['refit'])}", flush=True)
    print(f"\n| {rows[0][1]['points']:,} points; wall s (CPU s) | import umap: first | cached | "
          "fit: first call | cached call | warm refit | process: first | cached |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, first, cached in rows:
        print(f"| {label} | {seconds(first['import'])} | {seconds(cached['import'])} | {seconds(first['fit'])} | "
              f"{seconds(cached['fit'])} | {seconds(cached['refit'])} | {first['process']:.1f} s | "
              f"{cached['process']:.1f} s |")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        raise SystemExit(f"error: {e}")
