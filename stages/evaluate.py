"""Stage evaluate: figures on the test set that mean the same thing in every run; the model registered.

Writes its figures (nats per test image unless named otherwise) in two files: the headline
ones, iwae_nll and knn_accuracy, in <paths.eval_metrics> (DVC metrics), the rest in
<paths.eval_detail> (which key goes where: vae_pipeline/outputs.py EVAL_METRICS, EVAL_DETAIL):
  neg_elbo, recon, kl            the negative ELBO and its two parts, z drawn from q with evaluate.seed
  neg_elbo_mu, recon_mu          the same with z = mu (the KL does not depend on z)
  iwae_nll                       the IWAE estimate of -log p(x) with evaluate.iwae_samples draws (<= neg_elbo),
                                 iwae_nll_se its standard error over the test images
  kl_per_dim, mu_variance        per latent dimension; active_units counts Var(mu_j) > evaluate.active_threshold
  knn_accuracy(_per_class)       class of each test mu from its nearest train mu (the embed stage's)
and <paths.literature>: this run beside published figures (vae_pipeline/ml/evaluation.py).
The report stage shows them all. The evaluated decoder is then registered in MLflow's model registry
with these figures (vae_pipeline/tracking/registry.py register_decoder): a model is registered once it
is evaluated, and a change to the registered model's code reruns this stage alone.

The ELBO uses beta = 1 whatever train.beta was: it is the bound on log p(x), not the
training objective. See vae_pipeline/ml/evaluation.py log_likelihood for what "nats" means per likelihood.

None of it needs the latent map: the flow runs this stage and the latent_map stage (which
measures the map's trustworthiness) at once.
"""
import logging
import time

import torch

from vae_pipeline.errors import failing_as
from vae_pipeline.files import project_path, replace_together, write_json
from vae_pipeline.ml.data import class_names, dataset_dir, load_images, read_labels
from vae_pipeline.ml.evaluation import active_units, compare, elbo_parts, iwae_nll, mean_posterior_variance
from vae_pipeline.ml.model import load_model, setup_torch
from vae_pipeline.outputs import EVAL_DETAIL, EVAL_METRICS, read_mu, split_figures
from vae_pipeline.params import Pipeline
from vae_pipeline.tracking import store
from vae_pipeline.tracking.registry import register_decoder
from vae_pipeline.tracking.store import EVAL_METRIC_PREFIX

log = logging.getLogger("evaluate")


def knn_accuracy(train_mu, train_labels, test_mu, test_labels, neighbours: int, classes: list[str]):
    from sklearn.neighbors import KNeighborsClassifier  # imported here: slow, and only this stage needs it
    predicted = KNeighborsClassifier(n_neighbors=neighbours).fit(train_mu, train_labels).predict(test_mu)
    correct = predicted == test_labels
    per_class = {name: float(correct[test_labels == c].mean())
                 for c, name in enumerate(classes) if (test_labels == c).any()}
    return float(correct.mean()), per_class


def run(params: Pipeline | dict) -> dict:
    params = Pipeline.of(params)
    t, e, paths = params.train, params.evaluate, params.paths
    device = setup_torch(t.device, t.threads)
    # Everything this stage reads, read (and checked) first: a damaged input stops it in seconds.
    model, config = load_model(project_path(paths.model_dir), device)
    likelihood = config["likelihood"]
    raw = dataset_dir(paths, params.data)
    x, test_labels = load_images(params.data, raw, "test", device)
    embeddings, classes = project_path(paths.embeddings_dir), class_names(params.data)
    # Each split's table must be of the model's width and hold the data set's labels, row for row.
    split_labels = {"train": read_labels(raw, "train", len(classes)), "test": test_labels}
    mu_of = {split: read_mu(embeddings / f"{split}.parquet", split, labels, config["latent_dim"])[0]
             for split, labels in split_labels.items()}
    seconds = {}

    started = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(e.seed)
    recon, kl, mu = elbo_parts(model, x, likelihood, t.eval_batch_size, generator)
    recon_mu, _, _ = elbo_parts(model, x, likelihood, t.eval_batch_size)
    kl_per_dim = kl.mean(0).cpu().numpy()
    n_active, variance = active_units(mu.cpu().numpy(), e.active_threshold)
    seconds["elbo"] = time.perf_counter() - started
    log.info("negative ELBO %.2f (recon %.2f + KL %.2f), z = mu: %.2f; %d of %d latent units active",
             recon.mean() + kl.sum(1).mean(), recon.mean(), kl.sum(1).mean(),
             recon_mu.mean() + kl.sum(1).mean(), n_active, len(variance))

    started = time.perf_counter()
    log.info("IWAE estimate with k = %d on %d images ...", e.iwae_samples, len(x))
    generator = torch.Generator(device=device).manual_seed(e.seed)
    nll = iwae_nll(model, x, likelihood, e.iwae_samples, e.batch_size, generator, progress=True)
    seconds["iwae"] = time.perf_counter() - started

    metrics = {
        "dataset": params.data.dataset, "binarize": params.data.binarize,
        "likelihood": likelihood, "test_images": len(x),
        "neg_elbo": (recon.mean() + kl.sum(1).mean()).item(),
        "recon": recon.mean().item(), "kl": kl.sum(1).mean().item(),
        "neg_elbo_mu": (recon_mu.mean() + kl.sum(1).mean()).item(), "recon_mu": recon_mu.mean().item(),
        "iwae_nll": nll.mean().item(), "iwae_samples": e.iwae_samples,
        # Standard error of the mean over test images: how far another test set could move it.
        "iwae_nll_se": (nll.std() / len(nll) ** 0.5).item(),
        "kl_per_dim": {str(j): float(v) for j, v in enumerate(kl_per_dim)},
        "mu_variance": {str(j): float(v) for j, v in enumerate(variance)},
        "active_units": n_active, "latent_dim": len(variance),
        "mean_posterior_var": mean_posterior_variance(model, x, t.eval_batch_size),
    }
    log.info("IWAE -log p(x) %.2f (k = %d), %.2f below the negative ELBO, %.0fs", metrics["iwae_nll"],
             e.iwae_samples, metrics["neg_elbo"] - metrics["iwae_nll"], seconds["iwae"])
    if metrics["iwae_nll"] > metrics["neg_elbo"]:
        log.warning("the IWAE estimate is above the negative ELBO: the bound is tight here and the "
                    "difference is sampling noise; raise evaluate.iwae_samples")

    started = time.perf_counter()
    metrics["knn_accuracy"], metrics["knn_accuracy_per_class"] = knn_accuracy(
        mu_of["train"], split_labels["train"], mu_of["test"], split_labels["test"], e.knn_neighbors, classes)
    metrics["knn_neighbors"] = e.knn_neighbors
    seconds["knn"] = time.perf_counter() - started
    log.info("kNN (k = %d) class accuracy of test mu against train mu: %.4f",
             e.knn_neighbors, metrics["knn_accuracy"])

    rows = compare(params.data, t, e, metrics)
    for row in rows:
        log.info("%s: %s", row["reference"],
                 f"{row['this_run']:.2f} here, {row['reference_value']} there" if row["comparable"]
                 else "not comparable (" + "; ".join(row["differences"][:2]) + ")")
    outputs = [project_path(path) for path in (paths.eval_metrics, paths.eval_detail, paths.literature)]
    with replace_together(*outputs) as staged:   # every file new, or every one as it was
        for path, value in zip(staged, [*split_figures(metrics, EVAL_METRICS, EVAL_DETAIL), rows]):
            write_json(path, value)
        # Before the files move in, so a store that fails leaves the previous figures whole: the files
        # and times on the run that trained the model (the times only there: in eval.json they would make
        # every rerun a new output); then the evaluated decoder registered, these figures its logged
        # model's metrics and its run's (MLflow compares runs and ranks models by them, and the champion
        # gate, vae_pipeline/tracking/champion.py, compares versions by them).
        where = store.store_name(store.tracking_uri(params.mlflow, params.paths))
        with failing_as(f"{where}: registering the evaluated decoder",
                        "the previous figures are kept: rerun the evaluate stage (dvc repro evaluate) once the "
                        "store works"):
            store.attach_to_training_run(
                params, metrics={f"{EVAL_METRIC_PREFIX}seconds_{part}": s for part, s in seconds.items()},
                artifacts=staged, artifact_dir="metrics")
            register_decoder(params, model, {EVAL_METRIC_PREFIX + k: v for k, v in metrics.items()
                                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics


if __name__ == "__main__":
    from vae_pipeline.errors import main
    from vae_pipeline.params import load_params

    main(lambda: run(load_params()))
