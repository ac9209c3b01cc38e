"""Benchmark: the article's training loop against the project's train_epoch.

    python -m benchmarks.train [--epochs N] [--threads N]

Both train the same model from the same initial weights, with the same
hyperparameters (params.yaml's train section, seed included), on the same data
and machine. They take turns epoch by epoch, so a busy machine slows both alike.

The article's loop is the article's code: torchvision's MNIST data set (one PIL
image per sample, ToTensor) through DataLoader(batch_size=128, shuffle=True),
sigmoid + F.binary_cross_entropy, Adam, `loss.item()` every batch. The project's
is stages.train.train_epoch on the images held as one tensor, in float32 and,
where the hardware multiplies bf16 natively, also in bf16.

Printed: seconds per epoch (median), samples/s, the speed-up, the test loss of
each after the same epochs (the project's `evaluate`, float32, same z draws),
and the hardware bound: an epoch's matmul FLOPs over the matmul rate torch
reaches here at the model's shapes, measured between the epochs.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import machine, median
from stages.train import evaluate, train_epoch
from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.ml.data import FILES, IMAGE_PIXELS, dataset_dir, load_images
from vae_pipeline.ml.model import VAE, setup_torch, uses_bf16
from vae_pipeline.settings import Settings, load_settings

# --- The article's code, as published (plus `.to(device)` so it also runs on a GPU; its 784 is IMAGE_PIXELS) ---


class ArticleVAE(nn.Module):
    def __init__(self, latent_dim=2):
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_PIXELS, 400)
        self.fc_mu = nn.Linear(400, latent_dim)
        self.fc_logvar = nn.Linear(400, latent_dim)
        self.fc3 = nn.Linear(latent_dim, 400)
        self.fc4 = nn.Linear(400, IMAGE_PIXELS)

    def encode(self, x):
        h = F.relu(self.fc1(x))
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, IMAGE_PIXELS))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def article_loss(recon_x, x, mu, logvar, beta):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, IMAGE_PIXELS), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + beta * KLD


def article_epoch(model, optimizer, train_loader, beta, device):
    model.train()
    train_loss = 0
    for data, _ in train_loader:
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = article_loss(recon_batch, data, mu, logvar, beta)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss / len(train_loader.dataset)


def article_loader(params: Settings, batch_size: int, folder: Path):
    """torchvision's MNIST on the project's IDX files: linked into the raw/ folder it expects."""
    from torchvision import datasets, transforms  # only the baseline needs torchvision

    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).symlink_to(dataset_dir(params.paths, params.data) / name)
    dataset = datasets.MNIST(folder, train=True, download=False, transform=transforms.ToTensor())
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


# --- The hardware bound ---

def linear_shapes(model) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def epoch_flops(model, n: int) -> float:
    """Matmul FLOPs of an epoch: 2*in*out per sample and layer forward, twice that backward."""
    return 3 * 2 * n * sum(i * o for i, o in linear_shapes(model))


def matmul_rate(model, batch_size: int, device, dtype, seconds: float = 0.4) -> float:
    """GFLOP/s torch sustains on a training step's matmuls, at the model's shapes and batch size:
    every layer's forward x W^T, input gradient g W and weight gradient g^T x."""
    ops = [(torch.rand(batch_size, i, device=device, dtype=dtype), torch.rand(o, i, device=device, dtype=dtype),
            torch.rand(batch_size, o, device=device, dtype=dtype)) for i, o in linear_shapes(model)]
    flops = 3 * 2 * batch_size * sum(i * o for i, o in linear_shapes(model))

    def step():
        for x, w, g in ops:
            torch.mm(x, w.t()), torch.mm(g, w), torch.mm(g.t(), x)

    for _ in range(5):
        step()
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            step()
        repeats += 10
        if device.type == "cuda":
            torch.cuda.synchronize()
    return flops * repeats / (time.perf_counter() - started) / 1e9


# --- Taking turns ---

def swap_rng(state):
    """Install `state` (None: leave as is) as torch's RNG state; return the state it replaces.

    Each contender keeps its own random stream, so taking turns changes nobody's draws:
    the project's run here is the train stage's run, draw for draw.
    """
    old = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    if state is not None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])
    return old


def timed(device, fn):
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="epochs of each (default: train.epochs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: train.threads; 0 = all cores)")
    args = parser.parse_args()

    params = load_settings()
    t = params.train
    epochs = args.epochs or t.epochs
    if t.hidden_dims != [400] or t.likelihood != "bernoulli":
        raise PipelineError("benchmarks.train compares against the article's model: it needs "
                            "train.hidden_dims [400] and train.likelihood bernoulli")
    device = setup_torch(t.device, t.threads if args.threads is None else args.threads)
    x_train, _ = load_images(params.data, dataset_dir(params.paths, params.data), "train", device)
    x_test, _ = load_images(params.data, dataset_dir(params.paths, params.data), "test", device)
    n = len(x_train)

    # Contenders: the article, the project in float32 and, where it is native, in bf16.
    precisions = ["fp32", "bf16"] if uses_bf16(device, "auto") or t.precision == "bf16" else ["fp32"]
    configured = "bf16" if uses_bf16(device, t.precision) else "fp32"
    models, optimizers, rng = {}, {}, {}
    torch.manual_seed(t.seed)
    start_state = swap_rng(None)
    for name in ["article"] + [f"project {p}" for p in precisions]:
        swap_rng(start_state)  # every model starts from the same weights and the same random stream
        models[name] = ArticleVAE(t.latent_dim).to(device) if name == "article" else \
            VAE.from_config(t).to(device)
        fused = name != "article"  # the article uses Adam's defaults; the train stage the fused kernel
        optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=t.lr, fused=fused or None)
        rng[name] = swap_rng(None)
    for a, p in zip(models["article"].parameters(), models["project fp32"].parameters()):
        assert a.shape == p.shape and torch.equal(a, p), "the article's and the project's models differ"

    print(f"machine: {machine(torch)}; device {device}")
    print(f"{epochs} epochs of {n} images, batch {t.batch_size}, lr {t.lr}, beta {t.beta}, "
          f"seed {t.seed}; train.precision {t.precision} -> {configured}")
    seconds = {name: [] for name in models}
    rates = {p: [] for p in precisions}
    loader_seconds = []
    with tempfile.TemporaryDirectory(prefix="bench-mnist-") as folder:
        loader = article_loader(params, t.batch_size, Path(folder))
        for epoch in range(1, epochs + 1):
            figures = []
            for name, model in models.items():
                rng[name] = swap_rng(rng[name])
                if name == "article":
                    # timed() calls the lambda at once: the loop's variables are the current ones.
                    took, loss = timed(device, lambda: article_epoch(model, optimizers[name], loader,  # noqa: B023
                                                                     t.beta, device))
                else:
                    precision = name.split()[1]
                    took, (loss, _, _) = timed(device, lambda: train_epoch(
                        model, optimizers[name], x_train, t.model_copy(update={"precision": precision}),  # noqa: B023
                        epoch))  # noqa: B023
                rng[name] = swap_rng(rng[name])
                seconds[name].append(took)
                figures.append(f"{name} {took:.2f}s (train loss {loss:.2f})")
            for p in precisions:
                dtype = torch.bfloat16 if p == "bf16" else torch.float32
                rates[p].append(matmul_rate(models["project fp32"], t.batch_size, device, dtype))
            if epoch <= 3:  # the DataLoader alone: PIL images and ToTensor, no training
                loader_seconds.append(timed(device, lambda: sum(1 for _ in loader))[0])
            print(f"epoch {epoch:2d}: " + ", ".join(figures) + ", matmuls " +
                  ", ".join(f"{p} {rates[p][-1]:.0f} GFLOP/s" for p in precisions), flush=True)

    # Test loss: every model through the project's evaluate (float32, the same z draws).
    test_loss = {}
    for name, model in models.items():
        if name == "article":
            as_project = VAE.from_config(t).to(device)
            with torch.no_grad():
                for p, a in zip(as_project.parameters(), model.parameters()):
                    p.copy_(a)
            model = as_project
        test_loss[name] = evaluate(model, x_test, t)[0]

    flops = epoch_flops(models["project fp32"], n)
    bound = {p: flops / (median(rates[p]) * 1e9) for p in precisions}  # seconds per epoch
    base = median(seconds["article"])
    print(f"\n{epochs} epochs; {machine(torch)}")
    print("| loop | s/epoch (median) | samples/s | speed-up | test loss | vs article | "
          "epoch / fp32 bound | epoch / own-precision bound |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in models:
        s = median(seconds[name])
        precision = "fp32" if name == "article" else name.split()[1]
        print(f"| {name} | {s:.2f} | {n / s:,.0f} | {base / s:.2f}x | {test_loss[name]:.2f} | "
              f"{100 * (test_loss[name] / test_loss['article'] - 1):+.2f}% | {s / bound['fp32']:.2f}x | "
              f"{s / bound[precision]:.2f}x |")
    print()
    print(f"DataLoader alone (PIL + ToTensor, no training): {median(loader_seconds):.2f} s per epoch")
    print(f"epoch FLOPs: {flops / 1e9:.0f} GFLOP (every linear layer, forward + 2x backward; autograd "
          f"skips the first layer's input gradient, so "
          f"{(flops - 2 * n * IMAGE_PIXELS * t.hidden_dims[0]) / 1e9:.0f} "
          "GFLOP actually run)")
    for p in precisions:
        print(f"matmul rate {p}: median {median(rates[p]):.0f} GFLOP/s (best {max(rates[p]):.0f}) at batch "
              f"{t.batch_size} -> bound {bound[p]:.2f} s per epoch")

    # The targets, for the configured precision; the bound is the fp32 one, as the issue defines it.
    project = f"project {configured}"
    s = median(seconds[project])
    checks = [
        (f"{project} >= 3x faster than the article's loop", base / s >= 3, f"{base / s:.2f}x"),
        ("test losses within 1%", abs(test_loss[project] / test_loss["article"] - 1) <= 0.01,
         f"{test_loss[project]:.2f} vs {test_loss['article']:.2f}"),
        (f"{project} epoch within 1.5x of the fp32 matmul bound", s / bound["fp32"] <= 1.5,
         f"{s:.2f} s / {bound['fp32']:.2f} s = {s / bound['fp32']:.2f}x"),
    ]
    for what, ok, figure in checks:
        print(f"{'ok  ' if ok else 'MISS'} {what}: {figure}")


if __name__ == "__main__":
    sys.exit(exit_code(main))
