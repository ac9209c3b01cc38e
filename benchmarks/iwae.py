"""Benchmark: throughput and memory of the IWAE estimate (vae_pipeline/evaluation.py).

    python -m benchmarks.iwae [--k 5000] [--images 20] [--latent 50] [--threads 1]

Decodes `images` x `k` (image, draw) pairs with an untrained model and prints
pairs per second and the process's resident memory before and after. Memory
must stay flat however many passes run (glibc heap fragmentation once grew it
by about 1 MB per pass, see evaluation.return_large_blocks_to_the_os).
"""
import argparse
import time

import torch

from vae_pipeline.ml.data import IMAGE_PIXELS
from vae_pipeline.ml.evaluation import iwae_nll
from vae_pipeline.ml.model import VAE


def resident_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--latent", type=int, default=50)
    parser.add_argument("--pairs-per-pass", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VAE.from_config({"latent_dim": args.latent, "hidden_dims": [400]}).eval()
    x = torch.bernoulli(torch.full((args.images, IMAGE_PIXELS), 0.13))
    iwae_nll(model, x[:1], "bernoulli", min(args.k, 100), args.pairs_per_pass)  # warm-up
    before = resident_mb()
    started = time.perf_counter()
    iwae_nll(model, x, "bernoulli", args.k, args.pairs_per_pass, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - started
    pairs = args.images * args.k
    print(f"{pairs:,} pairs in {seconds:.1f}s: {pairs / seconds:,.0f} pairs/s "
          f"({args.threads} thread(s)); resident memory {before} MB -> {resident_mb()} MB")


if __name__ == "__main__":
    main()
