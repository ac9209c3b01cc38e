"""Figures for a trained VAE beyond its training loss, per test image, in nats.

- the negative ELBO, -log p(x|z) + KL(q(z|x) || p(z)), with z drawn from q or z = mu;
- the IWAE estimate of -log p(x) (Burda et al. 2015): with k draws z_i ~ q(z|x),
      -log p(x) ~= -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x).
  It is an upper bound on -log p(x) whose expected value falls as k grows; k = 1
  is the single-draw negative ELBO. log p(x|z) is `log_likelihood`'s, below;
- latent health: KL per latent dimension and the active units (Burda et al.'s
  diagnostic: dimension j is active when Var over the test set of mu_j exceeds
  a threshold, params evaluate.active_threshold; an inactive one has collapsed
  onto the prior);
- beside published figures (`compare`), each with the setup that produced it.
  A reference has two parts:
  measure  what the number means: data set, pixel treatment, likelihood, estimator.
           Only when all of it matches this run is the row "comparable": the two
           numbers are then on the same scale and lower is better.
  recipe   how the published model was built and trained. A comparable row whose
           recipe also matches is a reproduction ("same_recipe"); otherwise the
           differences are listed, so a gap between the numbers can be read.
"""
import ctypes
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vae_pipeline.ml.data import IMAGE_PIXELS
from vae_pipeline.ml.model import GAUSSIAN_VARIANCE, kl_divergence, reparameterize
from vae_pipeline.params import Data, Evaluate, Train

LOG_2PI = math.log(2 * math.pi)
# The gaussian likelihood's log normaliser over an image, 392 log pi (about 448.7 nats): -log p(x|z)
# is the training loss's term plus this. Training leaves it out (no gradient); a density needs it.
GAUSSIAN_LOG_NORMALISER = 0.5 * IMAGE_PIXELS * math.log(2 * math.pi * GAUSSIAN_VARIANCE)


def log_likelihood(logits, x, likelihood: str):
    """log p(x | z) per image, summed over pixels: logits (..., N, 784), x (N, 784) or (N, 1, 28, 28).

    bernoulli: minus the BCE (for grey pixels this is the cross-entropy the training
    loss uses, not a density over [0, 1]); gaussian: N(x; decoder mean, GAUSSIAN_VARIANCE)
    per pixel, the training loss plus GAUSSIAN_LOG_NORMALISER.
    """
    x = x.reshape(-1, IMAGE_PIXELS).expand_as(logits)
    if likelihood == "bernoulli":
        # BCE with logits is softplus(l) - x * l; written out it is faster than F.binary_cross_entropy_with_logits
        # on the (draws, images, 784) tensors of the IWAE estimate, and as exact.
        return -F.softplus(logits).sub_(logits * x).sum(-1)
    squared_error = (torch.sigmoid(logits) - x).pow(2).sum(-1)
    return -squared_error / (2 * GAUSSIAN_VARIANCE) - GAUSSIAN_LOG_NORMALISER


@torch.no_grad()
def elbo_parts(model, x, likelihood: str, batch_size: int, generator=None):
    """Per image: -log p(x|z) with z drawn using `generator` (z = mu when None), and KL per dimension.

    Returns (reconstruction (N,), kl (N, latent_dim), mu (N, latent_dim)).
    """
    recon, kl, mus = [], [], []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        mu, logvar = model.encode(batch)
        z = mu if generator is None else reparameterize(mu, logvar, generator)
        recon.append(-log_likelihood(model.decode_logits(z), batch, likelihood))
        kl.append(kl_divergence(mu, logvar))
        mus.append(mu)
    return torch.cat(recon), torch.cat(kl), torch.cat(mus)


@torch.no_grad()
def mean_posterior_variance(model, x, batch_size: int) -> float:
    """The mean of sigma^2 = exp(log sigma^2) over the images of x and the latent dimensions."""
    return torch.cat([model.encode(x[i:i + batch_size])[1] for i in range(0, len(x), batch_size)]).exp().mean().item()


def return_large_blocks_to_the_os() -> None:
    """Have glibc hand every freed block over 1 MB straight back to the OS.

    By default glibc raises its mmap threshold after a large block is freed, so
    from then on the IWAE loop's tensors (tens of MB each pass) come from the
    heap, which fragments: memory grew about 1 MB per pass, and a k = 5000 run
    reached 20 GB before the OOM killer ended it. A fixed threshold keeps memory
    flat. Does nothing where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 20)


# (image, draw) pairs decoded at once: their 784 logits (800 KB) stay in the core's cache between the matmul
# that makes them and the likelihood's sums, and every tensor of a chunk is under the 1 MB above which glibc
# maps fresh pages from the OS (return_large_blocks_to_the_os), which it then faults in one by one. A whole
# pass at once (10,000 pairs: 31 MB of logits) went through memory several times: 1.45x slower.
ROWS_IN_CACHE = 256


def draws_log_likelihood(model, z, x, likelihood: str) -> torch.Tensor:
    """log_likelihood(model.decode_logits(z), x, likelihood), z (draws, images, latent), x (images, ...),
    computed ROWS_IN_CACHE pairs at a time: the same numbers bit for bit (each pair's logits and sums
    are the same operations on the same values), faster."""
    draws, images = z.shape[:2]
    draws_at_once, images_at_once = max(1, ROWS_IN_CACHE // images), min(images, ROWS_IN_CACHE)
    x = x.reshape(images, -1)
    out = torch.empty((draws, images), device=z.device)
    for d in range(0, draws, draws_at_once):
        for i in range(0, images, images_at_once):
            chunk = z[d:d + draws_at_once, i:i + images_at_once]
            out[d:d + draws_at_once, i:i + images_at_once] = log_likelihood(
                model.decode_logits(chunk), x[i:i + images_at_once], likelihood)
    return out


@torch.no_grad()
def iwae_nll(model, x, likelihood: str, k: int, pairs_per_pass: int, generator=None,
             progress: bool = False, workers: int | None = None) -> torch.Tensor:
    """The IWAE estimate of -log p(x) for every image of x, shape (N,).

    At most `pairs_per_pass` (image, draw) pairs go through the decoder at once:
    a running log-sum-exp over chunks of draws keeps memory flat however large k is.
    `workers` threads (default: one per core this process may use) each take whole passes, one
    torch thread each: on a loaded machine torch's own threads wait for each other at every op
    (2 ran 2-5x slower than 1), independent passes do not, so they take every core whatever
    train.threads is. The draws are made in order here: the estimate is the same for any workers.
    """
    return_large_blocks_to_the_os()
    workers = 1 if x.device.type != "cpu" else workers or len(os.sched_getaffinity(0))   # a GPU: one worker
    images_per_pass = max(1, pairs_per_pass // k)
    draws_per_pass = min(k, max(1, pairs_per_pass // images_per_pass))

    @torch.no_grad()   # grad mode is per thread too
    def estimate(batch, mu, logvar, draws: list) -> torch.Tensor:
        log_sum = torch.full((len(batch),), -math.inf, device=x.device)
        for eps in draws:
            z = mu + eps * torch.exp(0.5 * logvar)                                # (draws, images, latent)
            log_p_z = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
            log_q_z = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
            log_weights = draws_log_likelihood(model, z, batch, likelihood) + log_p_z - log_q_z   # (draws, images)
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_weights, dim=0))
        return math.log(k) - log_sum

    threads, estimates, pending = torch.get_num_threads(), [], deque()
    torch.set_num_threads(1)
    try:
        # The thread count is per thread (OpenMP's): each worker sets its own.
        with (ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool,
              tqdm(total=len(x), desc=f"IWAE k={k}", unit="img", disable=None if progress else True,
                   leave=False) as bar):
            for start in range(0, len(x), images_per_pass):
                batch = x[start:start + images_per_pass]
                mu, logvar = model.encode(batch)
                draws = [torch.randn((min(draws_per_pass, k - done), *mu.shape), generator=generator,
                                     device=x.device) for done in range(0, k, draws_per_pass)]
                pending.append(pool.submit(estimate, batch, mu, logvar, draws))
                while len(pending) > 2 * workers or (pending and start + images_per_pass >= len(x)):
                    estimates.append(pending.popleft().result())   # in order; at most 2 passes queued each
                    bar.update(len(estimates[-1]))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(estimates)


def active_units(mu: np.ndarray, threshold: float) -> tuple[int, np.ndarray]:
    """How many latent dimensions vary (Var over images of mu_j > threshold), and each variance."""
    variance = np.asarray(mu, dtype=np.float64).var(axis=0)
    return int((variance > threshold).sum()), variance


# ---- published figures ------------------------------------------------------------------------

REFERENCES = [
    {
        "reference": "PyTorch examples, VAE (vae/main.py)",
        "source": "https://github.com/pytorch/examples/tree/main/vae",
        "figure": "test loss per image: BCE + KL, z drawn from q (the negative ELBO)",
        "value": 105.6,
        "metric": "neg_elbo",
        "measure": {"dataset": "mnist", "binarize": "none", "likelihood": "bernoulli"},
        "recipe": {"architecture": "784-400-20, relu", "epochs": 10, "batch_size": 128, "lr": 0.001,
                   "objective": "ELBO"},
    },
    {
        "reference": "Burda et al. 2015, Table 1: VAE, 1 stochastic layer",
        "source": "https://arxiv.org/abs/1509.00519",
        "figure": "test -log p(x), IWAE estimate with k = 5000",
        "value": 86.76,
        "metric": "iwae_nll",
        "measure": {"dataset": "mnist", "binarize": "dynamic", "likelihood": "bernoulli",
                    "iwae_samples": 5000},
        "recipe": {"architecture": "784-200-200-50, tanh", "epochs": 3280, "batch_size": 20,
                   "lr": "0.001 * 10^(-i/7) over 8 stages", "objective": "ELBO"},
    },
    {
        "reference": "Burda et al. 2015, Table 1: IWAE k = 50, 1 stochastic layer",
        "source": "https://arxiv.org/abs/1509.00519",
        "figure": "test -log p(x), IWAE estimate with k = 5000",
        "value": 84.78,
        "metric": "iwae_nll",
        "measure": {"dataset": "mnist", "binarize": "dynamic", "likelihood": "bernoulli",
                    "iwae_samples": 5000},
        "recipe": {"architecture": "784-200-200-50, tanh", "epochs": 3280, "batch_size": 20,
                   "lr": "0.001 * 10^(-i/7) over 8 stages", "objective": "IWAE bound, k = 50"},
    },
]


def this_run(data: Data, train: Train, evaluate: Evaluate) -> dict:
    """This run's setup, in the terms the references use."""
    objective = "ELBO" if train.iwae_k == 1 else f"ELBO, k = {train.iwae_k}"
    if train.objective == "iwae":
        objective = f"IWAE bound, k = {train.iwae_k}"
    if train.beta != 1:
        objective = f"beta-{objective}, beta = {train.beta:g}"
    if train.kl_warmup_epochs:
        objective += f", KL warm-up over {train.kl_warmup_epochs} epochs"
    lr = {"none": train.lr, "burda": f"{train.lr:g} * 10^(-i/7) over 8 stages",
          "cosine": f"{train.lr:g}, cosine to 1/100"}[train.lr_schedule]
    return {
        "dataset": data.dataset,
        "binarize": data.binarize,
        "likelihood": train.likelihood,
        "iwae_samples": evaluate.iwae_samples,
        "architecture": "-".join(map(str, [IMAGE_PIXELS, *train.hidden_dims, train.latent_dim]))
                        + f", {train.activation}",
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "lr": lr,
        "objective": objective,
    }


def compare(data: Data, train: Train, evaluate: Evaluate, metrics: dict) -> list[dict]:
    """One row per reference: its figure, this run's (only when comparable) and how the setups differ."""
    ours = this_run(data, train, evaluate)
    rows = []
    for ref in REFERENCES:
        measure_diffs = [f"{key}: {ours[key]} here, {value} there"
                         for key, value in ref["measure"].items() if ours[key] != value]
        recipe_diffs = [f"{key}: {ours[key]} here, {value} there"
                        for key, value in ref["recipe"].items() if ours[key] != value]
        comparable = not measure_diffs
        rows.append({
            "reference": ref["reference"],
            "source": ref["source"],
            "figure": ref["figure"],
            "reference_value": ref["value"],
            "this_run": metrics[ref["metric"]] if comparable else None,
            "comparable": comparable,
            "same_recipe": comparable and not recipe_diffs,
            # What makes the numbers mean different things, then what makes the models differ.
            "differences": measure_diffs + recipe_diffs,
        })
    return rows
