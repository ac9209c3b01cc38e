"""Stage latent_map: UMAP of the encoder's mu to 2-D, as the article draws its latent space.

Reads the embed stage's parquet of one split (params `latent_map.split`) and
writes one row per image: x, y, its label, and `index`, its row in the split
(the report uses it to show the image under the mouse).

UMAP's numba code is compiled on first use; NUMBA_CACHE_DIR points numba at
the project's `.numba_cache/` so a second run reuses the compiled code.
This module is named latent_map, not umap: a `umap.py` here would shadow the package.
"""
import logging
import os
import time

import numpy as np
import pandas as pd

from vae_pipeline import tracking
from vae_pipeline.files import ROOT, PipelineError, atomic_path, project_path

log = logging.getLogger("latent_map")


def load_mu(path) -> tuple[np.ndarray, np.ndarray]:
    """mu (N, d) as float32 and the labels from an embed stage parquet file."""
    if not path.exists():
        raise PipelineError(f"{path}: missing; run the embed stage first (dvc repro embed)")
    table = pd.read_parquet(path)
    mu_columns = [c for c in table.columns if c.startswith("mu_")]
    if not mu_columns or "label" not in table.columns:
        raise PipelineError(f"{path}: expected columns mu_0.. and label, found {', '.join(table.columns)}")
    return table[mu_columns].to_numpy(np.float32), table["label"].to_numpy()


def run(params: dict) -> dict:
    p, paths = params["latent_map"], params["paths"]
    source = project_path(paths["embeddings_dir"]) / f"{p['split']}.parquet"
    mu, labels = load_mu(source)
    index = np.arange(len(mu))
    if p["subsample"] is not None and p["subsample"] < len(mu):
        rng = np.random.default_rng(p["random_state"] or 0)
        index = np.sort(rng.choice(len(mu), p["subsample"], replace=False))
    if len(index) <= p["n_neighbors"]:
        raise PipelineError(f"params.yaml: latent_map.n_neighbors is {p['n_neighbors']} but only "
                            f"{len(index)} points are mapped; lower it or raise latent_map.subsample")

    # Set before numba is first imported (by umap, just below); a value already set wins.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    import umap

    # A fixed random_state makes UMAP single-threaded; null lets it use every core.
    reducer = umap.UMAP(n_components=2, n_neighbors=p["n_neighbors"], min_dist=p["min_dist"],
                        metric=p["metric"], random_state=p["random_state"],
                        n_jobs=1 if p["random_state"] is not None else -1,
                        verbose=True, tqdm_kwds={"disable": None})
    log.info("UMAP of %d x %d mu from %s (numba cache %s)", len(index), mu.shape[1], source,
             os.environ["NUMBA_CACHE_DIR"])
    started = time.perf_counter()
    xy = reducer.fit_transform(mu[index])
    seconds = time.perf_counter() - started

    table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": labels[index], "index": index})
    path = project_path(paths["latent_map"])
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("%s: %d points, UMAP took %.1fs", path, len(table), seconds)
    tracking.attach_to_training_run(params, metrics={"umap_seconds": seconds})
    return {"path": path, "points": len(table), "seconds": seconds}


if __name__ == "__main__":
    from vae_pipeline.cli import main
    main(run)
