"""Benchmark: latency and throughput of `make serve`, the decoder on MLflow's scoring server.

    make serve                                   # terminal 1
    python -m benchmarks.serve [--requests N]    # terminal 2

For batches of 1 and 256 latent vectors: a few warm-up requests, then N requests one
after another on one keep-alive connection (a bounded loop: 2 x N requests in all).
Each request is timed from sending to the parsed JSON answer, as a client sees it.
Prints the median and 99th percentile latency, requests per second and images per
second. Loopback only: the server is the one on 127.0.0.1 at params.yaml serve.port
(env VAE_SERVE_PORT wins), as `make serve` starts it.
"""
import argparse
import time

import numpy as np
import requests

from benchmarks.common import machine
from commands.serve import HOST, port
from vae_pipeline.settings import load_settings

BATCHES = (1, 256)
WARM_UP = 5


def timed_requests(session, url: str, z: np.ndarray, n: int) -> np.ndarray:
    """Seconds of each of n POSTs of z (after WARM_UP untimed ones); every answer checked."""
    body = {"inputs": z.tolist()}
    seconds = []
    for i in range(WARM_UP + n):
        started = time.perf_counter()
        answer = session.post(url, json=body, timeout=60)
        predictions = answer.json()["predictions"]
        elapsed = time.perf_counter() - started
        if answer.status_code != 200 or len(predictions) != len(z):
            raise SystemExit(f"{url} answered HTTP {answer.status_code}: {answer.text[:300]}")
        if i >= WARM_UP:
            seconds.append(elapsed)
    return np.array(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per batch size")
    args = parser.parse_args()
    params = load_settings()
    url = f"http://{HOST}:{port(params.serve)}/invocations"
    latent_dim = params.train.latent_dim
    print(f"# {url}, {args.requests} requests per batch size\n# {machine()}")
    print("| batch | median latency | p99 latency | requests/s | images/s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    with requests.Session() as session:
        for batch in BATCHES:
            z = rng.standard_normal((batch, latent_dim)).astype(np.float32)
            seconds = timed_requests(session, url, z, args.requests)
            rate = len(seconds) / seconds.sum()
            print(f"| {batch} | {np.median(seconds) * 1e3:.1f} ms | {np.percentile(seconds, 99) * 1e3:.1f} ms "
                  f"| {rate:.3g} | {rate * batch:,.0f} |")


if __name__ == "__main__":
    main()
