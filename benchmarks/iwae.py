"""Benchmark: throughput and memory of the IWAE estimate (vae_pipeline/ml/evaluation.py iwae_nll).

    python -m benchmarks.iwae [--images 200] [--k 5000] [--workers 2] [--hidden 200 200] [--latent 50]

Estimates -log p(x) for `images` x `k` (image, draw) pairs with an untrained model of the IWAE
paper's shape (784-200-200-50, tanh) and prints, measured in the same run:
  - pairs per second of iwae_nll with `workers` threads;
  - the matmul bound: pairs per second if the decoder's matmuls alone ran, at the rate one thread
    multiplies these shapes here, times `workers` (the rest, tanh, the likelihood's softplus and the
    log-sum-exp, is what the estimate adds);
  - the same estimate by the plain loop (a whole pass's logits at once, one thread; the estimate
    before it was tuned) on a tenth of the images: the baseline, which must give the same numbers;
  - per CPU second as well as per second: on a shared machine the wall-clock rate is what the other
    jobs left, the CPU-time rate what a free core gives;
  - the time the full test set (10,000 images, same k) would take at the measured rate: an
    extrapolation, said as such;
  - the process's resident memory before and after: it must stay flat however many passes run
    (glibc heap fragmentation once grew it by about 1 MB per pass, evaluation.return_large_blocks_to_the_os).
"""
import argparse
import math
import time

import torch

from vae_pipeline.ml.data import IMAGE_PIXELS
from vae_pipeline.ml.evaluation import LOG_2PI, iwae_nll, log_likelihood
from vae_pipeline.ml.model import VAE

TEST_IMAGES = 10_000


def resident_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20


@torch.no_grad()
def plain_iwae(model, x, k: int, pairs_per_pass: int, generator) -> torch.Tensor:
    """The estimate as first written: a whole pass's logits at once, then the likelihood's sums over them."""
    images = max(1, pairs_per_pass // k)
    draws_per_pass, out = min(k, max(1, pairs_per_pass // images)), []
    for start in range(0, len(x), images):
        batch = x[start:start + images]
        mu, logvar = model.encode(batch)
        log_sum = torch.full((len(batch),), -math.inf)
        for done in range(0, k, draws_per_pass):
            eps = torch.randn((min(draws_per_pass, k - done), *mu.shape), generator=generator)
            z = mu + eps * torch.exp(0.5 * logvar)
            log_w = (log_likelihood(model.decode_logits(z), batch, "bernoulli")
                     - 0.5 * (z.pow(2) + LOG_2PI).sum(-1) + 0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1))
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, dim=0))
        out.append(math.log(k) - log_sum)
    return torch.cat(out)


@torch.no_grad()
def matmul_pairs_per_second(model, rows: int, repeats: int = 5) -> float:
    """(image, draw) pairs per second through the decoder's matmuls alone, on one thread."""
    layers = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    z = torch.randn(rows, layers[0].in_features)

    def decode():
        h = z
        for layer in layers:
            h = torch.nn.functional.linear(h, layer.weight, layer.bias)
    decode()
    started = time.perf_counter()
    for _ in range(repeats):
        decode()
    return rows * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--latent", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--pairs-per-pass", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = VAE(latent_dim=args.latent, hidden_dims=args.hidden, activation=args.activation).eval()
    x = torch.bernoulli(torch.full((args.images, IMAGE_PIXELS), 0.13))
    pairs = args.images * args.k

    torch.set_num_threads(1)
    bound = matmul_pairs_per_second(model, args.pairs_per_pass) * args.workers
    iwae_nll(model, x[:1], "bernoulli", min(args.k, 100), args.pairs_per_pass, workers=args.workers)  # warm-up
    before = resident_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    ours = iwae_nll(model, x, "bernoulli", args.k, args.pairs_per_pass, torch.Generator().manual_seed(0),
                    workers=args.workers)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    after = resident_mb()
    tenth = max(1, args.images // 10)
    started = time.process_time()
    plain = plain_iwae(model, x[:tenth], args.k, args.pairs_per_pass, torch.Generator().manual_seed(0))
    plain_rate = tenth * args.k / (time.process_time() - started)

    rate = pairs / seconds
    cpu_rate = min(pairs / cpu_seconds * args.workers, rate * args.workers)   # if each worker had a core to itself
    print(f"model 784-{'-'.join(map(str, args.hidden))}-{args.latent} {args.activation}, k = {args.k}, "
          f"{args.images} images: {pairs:,} pairs in {seconds:.1f} s")
    print(f"  iwae_nll, {args.workers} worker(s):  {rate:>10,.0f} pairs/s  ({rate / bound:.0%} of the matmul bound; "
          f"{pairs / cpu_seconds:,.0f} per CPU second: what one free core gives)")
    print(f"  matmul bound:             {bound:>10,.0f} pairs/s  (the decoder's matmuls alone, 1 thread x "
          f"{args.workers})")
    print(f"  plain loop, 1 thread:     {plain_rate:>10,.0f} pairs per CPU second (baseline, on {tenth} images; "
          f"same estimate to {(ours[:tenth] - plain).abs().max().item():.1e} nats)")
    print(f"  extrapolated to the full test set ({TEST_IMAGES:,} images x {args.k}): "
          f"{TEST_IMAGES * args.k / rate / 60:.1f} min at this rate; {TEST_IMAGES * args.k / cpu_rate / 60:.1f} min "
          f"with {args.workers} free core(s) (baseline: {TEST_IMAGES * args.k / plain_rate / 60:.1f} min, one core)")
    print(f"  resident memory {before} MB -> {after} MB")


if __name__ == "__main__":
    main()
