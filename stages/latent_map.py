"""Stage latent_map: UMAP of the encoder's mu to 2-D, as the article draws its latent space.

Reads the embed stage's parquet of one split (params `latent_map.split`) and
writes one row per image: x, y, its label, and `index`, its row in the split
(the report uses it to show the image under the mouse). Beside it, in <paths.map_metrics>
(DVC metrics), the map's trustworthiness: how well its 2-D neighbourhoods keep the
neighbours of the points in mu, measured on a random subsample of the map's points
(sklearn's measure holds all pairwise distances of the points it is given).
The map needs only mu, not the model's evaluation: the flow runs this stage and the
evaluate stage at once. It logs nothing to MLflow (importing MLflow alone costs 2 s here, on the
pipeline's longest path): the report stage attaches the trustworthiness to the training's run.

Neighbours (`latent_map.neighbours`): UMAP starts from each point's n_neighbors
nearest neighbours. `exact` finds them with scikit-learn (a KD-tree: under a second
for 60,000 points in 4-D) and hands them to UMAP; `nndescent` lets UMAP search
them approximately with pynndescent, as a bare `UMAP(random_state=42)` does. Both
are deterministic for a fixed random_state; exact is ~30 s faster, because numba
compiles pynndescent's search afresh in every process (BENCHMARKS.md).

UMAP's numba code is compiled on first use; NUMBA_CACHE_DIR (when unset: params
`paths.numba_cache`, in the project's home) points numba at a folder where a second
run, in any checkout or experiment, reuses the compiled code (also for the three
functions umap-learn leaves uncached: see fit_map).
This module is named latent_map, not umap: a `umap.py` here would shadow the package.
"""
import logging
import os
import time
import warnings

import numpy as np
import pandas as pd

from vae_pipeline.errors import PipelineError
from vae_pipeline.files import home_path, project_path, replace_together, write_json
from vae_pipeline.ml.data import class_names, dataset_dir, read_labels
from vae_pipeline.outputs import MAP_METRICS, latent_map_rows, read_mu, split_figures
from vae_pipeline.params import LatentMap, Pipeline

log = logging.getLogger("latent_map")


def exact_neighbours(points: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of each point's k nearest points, itself first, as UMAP's own search returns them."""
    from sklearn.neighbors import NearestNeighbors
    distances, indices = NearestNeighbors(n_neighbors=k, metric=metric).fit(points).kneighbors(points)
    return indices, distances.astype(np.float32)


def fit_map(points: np.ndarray, p: LatentMap) -> np.ndarray:
    """The 2-D UMAP of `points` (N, d) with the `latent_map` params `p`."""
    # NUMBA_CACHE_DIR (run() sets it) is read when numba is first imported: by umap, just below.
    import umap
    import umap.layouts
    import umap.umap_

    # umap-learn compiles these three without numba's cache: ~6 s in every run. Cached, they load.
    for compiled in (umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths,
                     umap.layouts._nb_optimize_layout_euclidean_single_epoch):
        compiled.enable_caching()

    knn = (None, None, None)
    if p.neighbours == "exact":
        started = time.perf_counter()
        knn = (*exact_neighbours(points, p.n_neighbors, p.metric), None)
        log.info("exact %d nearest neighbours of %d points: %.1fs", p.n_neighbors, len(points),
                 time.perf_counter() - started)
    # A fixed random_state makes UMAP single-threaded; null lets it use every core.
    reducer = umap.UMAP(n_components=2, n_neighbors=p.n_neighbors, min_dist=p.min_dist,
                        metric=p.metric, random_state=p.random_state, n_epochs=p.n_epochs,
                        n_jobs=1 if p.random_state is not None else -1, precomputed_knn=knn,
                        verbose=True, tqdm_kwds={"disable": None})
    # verbose UMAP prints its own repr first: keep the neighbour arrays in it to a line or two.
    with warnings.catch_warnings(), np.printoptions(threshold=0, edgeitems=1, linewidth=1000):
        # Given neighbours but no search index, UMAP warns that it cannot map new points: not needed here.
        warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
        return reducer.fit_transform(points)


def map_trustworthiness(mu: np.ndarray, xy: np.ndarray, samples: int, neighbours: int, seed: int) -> float:
    """Trustworthiness (sklearn) of the map `xy` of the points `mu`, on `samples` of them picked with `seed`."""
    from sklearn.manifold import trustworthiness  # imported here: slow, and only this stage needs it
    picked = np.random.default_rng(seed).choice(len(mu), size=min(samples, len(mu)), replace=False)
    return float(trustworthiness(mu[picked], xy[picked], n_neighbors=neighbours))


def run(params: Pipeline | dict) -> dict:
    params = Pipeline.of(params)
    p, paths = params.latent_map, params.paths
    source = project_path(paths.embeddings_dir) / f"{p.split}.parquet"
    # Checked row for row against the data set's labels (its smallest file): a table cut short or of
    # other data stops here. The model is not read here, so any latent width will do.
    labels = read_labels(dataset_dir(paths, params.data), p.split, len(class_names(params.data)))
    mu, labels = read_mu(source, p.split, labels)
    index = np.arange(len(mu))
    if latent_map_rows(len(mu), p.subsample) < len(mu):
        rng = np.random.default_rng(p.random_state or 0)
        index = np.sort(rng.choice(len(mu), p.subsample, replace=False))
    if len(index) <= p.n_neighbors:
        raise PipelineError(f"params.yaml: latent_map.n_neighbors is {p.n_neighbors} but only "
                            f"{len(index)} points are mapped; lower it or raise latent_map.subsample")

    log.info("UMAP of %d x %d mu from %s (%s neighbours)", len(index), mu.shape[1], source, p.neighbours)
    started = time.perf_counter()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(home_path(paths.numba_cache)))   # a value already set wins
    xy = fit_map(mu[index], p)
    seconds = time.perf_counter() - started

    figures = {"trustworthiness": None}
    if p.trustworthiness_samples:
        figures["trustworthiness"] = map_trustworthiness(mu[index], xy, p.trustworthiness_samples,
                                                         p.trustworthiness_neighbors, p.random_state or 0)
        log.info("trustworthiness %.4f (%d neighbours, %d points)", figures["trustworthiness"],
                 p.trustworthiness_neighbors, min(p.trustworthiness_samples, len(index)))

    table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": labels[index], "index": index})
    path, metrics_path = project_path(paths.latent_map), project_path(paths.map_metrics)
    with replace_together(path, metrics_path) as (tmp, metrics_tmp):   # both new, or both as they were
        table.to_parquet(tmp, index=False)
        write_json(metrics_tmp, split_figures(figures, MAP_METRICS, {})[0])
    log.info("%s: %d points, UMAP took %.1fs", path, len(table), seconds)
    return {"path": path, "points": len(table), "seconds": seconds, **figures}


if __name__ == "__main__":
    from vae_pipeline.errors import main
    from vae_pipeline.params import load_params

    main(lambda: run(load_params()))
