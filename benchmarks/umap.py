"""Benchmark: UMAP of the 60,000 training mu to 2-D, with the latent_map stage's own code.

    python -m benchmarks.umap [--subsample N]

Ways (`latent_map.random_state`, `latent_map.neighbours`), each timed in fresh
processes (numba's cache only matters to a new one):
  42, exact           the default: the article's seed, neighbours from scikit-learn's
                      KD-tree handed to UMAP (no pynndescent search to compile);
  null, exact         not reproducible, UMAP's parallel code on every core;
  42, nndescent       the article's bare `UMAP(random_state=42)`: pynndescent's
                      approximate search, which numba compiles afresh in every process;
  null, nndescent     the same on every core.
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
from vae_pipeline.errors import PipelineError, exit_code, stage_output
from vae_pipeline.files import ROOT, project_path
from vae_pipeline.settings import load_settings

WAYS = {"random_state 42, exact neighbours (default)": (42, "exact"),
        "random_state null, exact neighbours": (None, "exact"),
        "random_state 42, nndescent (the article's call)": (42, "nndescent"),
        "random_state null, nndescent": (None, "nndescent")}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> list[float]:
    """[wall, CPU] seconds since `start`."""
    return [time.perf_counter() - start[0], time.process_time() - start[1]]


def child(random_state: int | None, neighbours: str, subsample: int | None, refit: bool) -> None:
    """One measured process: import umap, fit (and fit again); prints a JSON line of seconds."""
    start = clock()
    import umap  # noqa: F401  (timed apart from the fit: numba compiles pynndescent at import)

    from stages.latent_map import fit_map
    from vae_pipeline.ml.data import class_names, dataset_dir, read_labels
    from vae_pipeline.outputs import read_mu
    figures = {"import": since(start)}

    params = load_settings()
    p = params.latent_map.model_copy(update={"random_state": random_state, "neighbours": neighbours})
    labels = read_labels(dataset_dir(params.paths, params.data), "train", len(class_names(params.data)))
    mu, _ = read_mu(project_path(params.paths.embeddings_dir) / "train.parquet", "train", labels)
    mu = mu[:subsample]
    for run in ["fit", "refit"][:2 if refit else 1]:
        start = clock()
        fit_map(mu, p)
        figures[run] = since(start)
    print(json.dumps({**figures, "points": len(mu)}))


def measure(way: tuple, subsample: int | None, cache: str, refit: bool = False) -> dict:
    """Seconds of one child process; `process` is its whole life (wall), less the refit."""
    cmd = [sys.executable, "-m", "benchmarks.umap", "--child", json.dumps(way)]
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

    params = load_settings()
    path = stage_output(project_path(params.paths.embeddings_dir) / "train.parquet", "embed")
    p = params.latent_map
    print(f"machine: {machine()}")
    print(f"UMAP n_neighbors {p.n_neighbors}, min_dist {p.min_dist}, metric {p.metric}; "
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
    sys.exit(exit_code(main))
