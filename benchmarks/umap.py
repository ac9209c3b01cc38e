"""Benchmark: UMAP of the 60,000 training mu to 2-D, as the latent_map stage runs it.

    python -m benchmarks.umap [--subsample N]

For random_state 42 (the article's: reproducible, but UMAP then runs on one core)
and null (not reproducible, every core), three timings:
  first call   a fresh Python with an empty numba cache: numba compiles UMAP's code;
  cached call  a second fresh Python with that cache filled (what the stage's
               NUMBA_CACHE_DIR in the project buys every later run);
  warm refit   a second fit in that same process: UMAP's own work, nothing compiled or loaded.
Each call runs in its own process (numba's cache only matters to a new one).
Needs data/embeddings/train.parquet: run the pipeline (`dvc repro embed`) first.
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

# TODO(lead): once stages/latent_map.py (issue 3) is merged, build the reducer with the stage's own
# code instead of repeating its arguments here; until then these are its params.yaml defaults.
DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean", "random_state": 42}


def map_params(params: dict) -> dict:
    return {**DEFAULTS, **params.get("latent_map", {})}


def child(random_state: int | None, subsample: int | None, refit: bool) -> None:
    """One measured process: import umap, fit (and fit again); prints a JSON line of seconds."""
    started = time.perf_counter()
    import numpy as np
    import pandas as pd
    import umap
    imported = time.perf_counter() - started

    params = load_params()
    p = map_params(params)
    path = project_path(params["paths"]["embeddings_dir"]) / "train.parquet"
    table = pd.read_parquet(path)
    mu = table[[c for c in table.columns if c.startswith("mu_")]].to_numpy(np.float32)[:subsample]
    fits = []
    for _ in range(2 if refit else 1):
        # As the stage: a fixed random_state makes UMAP single-threaded; null lets it use every core.
        reducer = umap.UMAP(n_components=2, n_neighbors=p["n_neighbors"], min_dist=p["min_dist"],
                            metric=p["metric"], random_state=random_state,
                            n_jobs=1 if random_state is not None else -1)
        started = time.perf_counter()
        reducer.fit_transform(mu)
        fits.append(time.perf_counter() - started)
    print(json.dumps({"import": imported, "fit": fits[0], "refit": fits[-1] if refit else 0.0,
                      "points": len(mu)}))


def measure(random_state: int | None, subsample: int | None, cache: str, refit: bool = False) -> dict:
    """Seconds of one child process; `process` is its whole life, less the refit."""
    cmd = [sys.executable, "-m", "benchmarks.umap", "--child", json.dumps(random_state)]
    if refit:
        cmd.append("--refit")
    if subsample:
        cmd += ["--subsample", str(subsample)]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "NUMBA_CACHE_DIR": cache},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"UMAP child process failed:\n{result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {**figures, "process": time.perf_counter() - started - figures["refit"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subsample", type=int, help="map only the first N mu (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--refit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(json.loads(args.child), args.subsample, args.refit)

    params = load_params()
    path = project_path(params["paths"]["embeddings_dir"]) / "train.parquet"
    if not path.exists():
        raise PipelineError(f"{path}: missing; run the pipeline first (dvc repro embed)")
    p = map_params(params)
    print(f"machine: {machine()}")
    print(f"UMAP n_neighbors {p['n_neighbors']}, min_dist {p['min_dist']}, metric {p['metric']}; "
          f"mu from {path.relative_to(ROOT)}")
    rows = []
    for random_state in (p["random_state"] if p["random_state"] is not None else 42, None):
        with tempfile.TemporaryDirectory(prefix="bench-numba-") as cache:
            first = measure(random_state, args.subsample, cache)
            cached = measure(random_state, args.subsample, cache, refit=True)
        label = f"random_state {random_state}" if random_state is not None else "random_state null (parallel)"
        rows.append((label, first, cached))
        print(f"{label}: first call fit {first['fit']:.1f} s, cached call fit {cached['fit']:.1f} s, "
              f"warm refit {cached['refit']:.1f} s", flush=True)
    print(f"\n| {rows[0][1]['points']:,} points | import umap | first call: fit | whole process | "
          "cached call: fit | whole process | warm refit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, first, cached in rows:
        print(f"| {label} | {cached['import']:.1f} s | {first['fit']:.1f} s | {first['process']:.1f} s | "
              f"{cached['fit']:.1f} s | {cached['process']:.1f} s | {cached['refit']:.1f} s |")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        raise SystemExit(f"error: {e}")
