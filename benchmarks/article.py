"""Benchmark baseline: the article's training script alone, as its reader runs it.

    python -m benchmarks.article [--epochs N]

Its model, loss and loop (benchmarks/train.py keeps them as published): torchvision's
MNIST through DataLoader(batch_size=128, shuffle=True), Adam, train.epochs epochs
(the article's 15), torch's default thread count, no evaluation, nothing saved.
Prints one line: the loop's seconds (the epochs alone) and the whole process's.
benchmarks/pipeline.py runs it in the same run as the pipeline, to compare the two.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

PROCESS_STARTED = time.perf_counter()

import torch  # noqa: E402  (after the clock: the article's script pays this import too)

from benchmarks.train import ArticleVAE, article_epoch, article_loader  # noqa: E402
from vae_pipeline.errors import exit_code  # noqa: E402
from vae_pipeline.settings import load_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="default: train.epochs")
    args = parser.parse_args()
    params = load_settings()
    t = params.train
    epochs = args.epochs or t.epochs
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(t.seed)
    model = ArticleVAE(t.latent_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    with tempfile.TemporaryDirectory(prefix="bench-article-") as folder:
        loader = article_loader(params, t.batch_size, Path(folder))
        started = time.perf_counter()
        for _ in range(epochs):
            loss = article_epoch(model, optimizer, loader, t.beta, device)
        loop = time.perf_counter() - started
    print(f"article loop: {epochs} epochs in {loop:.1f} s ({loop / epochs:.2f} s an epoch, train loss {loss:.2f}, "
          f"{torch.get_num_threads()} threads); whole script {time.perf_counter() - PROCESS_STARTED:.1f} s")


if __name__ == "__main__":
    sys.exit(exit_code(main))
