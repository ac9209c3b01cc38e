"""The article's VAE, its loss, and saving/loading it as tensors only.

Encoder 784 -> hidden -> (mu, log sigma^2); decoder latent -> hidden -> 784.
The decoder returns logits: the loss uses them directly (numerically stable
BCE), and `decode` applies the sigmoid to give pixel values in [0, 1].
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vae_pipeline.datasets import IMAGE_PIXELS, IMAGE_SIZE
from vae_pipeline.files import PipelineError, atomic_path, stage_output, write_json



def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, latent_dim: int = 4, hidden_dims: list[int] = (400,)):
        super().__init__()
        self.config = {"latent_dim": latent_dim, "hidden_dims": list(hidden_dims)}
        hidden = list(hidden_dims)
        self.encoder = nn.Sequential(mlp([IMAGE_PIXELS, *hidden]), nn.ReLU())
        self.to_mu = nn.Linear(hidden[-1], latent_dim)
        self.to_logvar = nn.Linear(hidden[-1], latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden), IMAGE_PIXELS])

    def encode(self, x):
        h = self.encoder(x.view(-1, IMAGE_PIXELS))
        return self.to_mu(h), self.to_logvar(h)

    def decode_logits(self, z):
        return self.decoder(z)

    def decode(self, z):
        """Pixel values in [0, 1], shape (N, 784)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x, sample: bool = True, generator=None):
        """Logits of the reconstruction, mu and logvar. `sample=False` decodes z = mu."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator) if sample else mu
        return self.decode_logits(z), mu, logvar


def reparameterize(mu, logvar, generator=None):
    """z = mu + sigma * eps with eps ~ N(0, I): sampling that gradients can pass through."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_divergence(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, I)) in closed form, per sample and latent dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


class SummedBCEWithLogits(torch.autograd.Function):
    """F.binary_cross_entropy_with_logits(logits, x, reduction="sum"), twice as fast on the CPU.

    BCE with logits is softplus(l) - x*l, and softplus(l) = relu(l) - log(sigmoid(|l|)).
    torch computes softplus with log1p, which its CPU kernels do not vectorise (2.4 ms
    for one batch's 100,352 pixels, 15% of a float32 training step on one thread);
    sigmoid and log are vectorised (0.1 and 0.35 ms). The value is the same
    up to float rounding (below 1e-7 per pixel); the gradient is the exact one,
    sigmoid(l) - x, written out so the backward pass is one sigmoid.
    """

    @staticmethod
    def forward(ctx, logits, x):
        ctx.save_for_backward(logits, x)
        return (F.relu(logits) - x * logits - torch.log(torch.sigmoid(logits.abs()))).sum()

    @staticmethod
    def backward(ctx, grad):
        logits, x = ctx.saved_tensors
        grad_x = -grad * logits if ctx.needs_input_grad[1] else None
        return grad * (torch.sigmoid(logits) - x), grad_x


def reconstruction_loss(logits, x, likelihood: str):
    """Summed over pixels and batch: BCE (bernoulli) or squared error (gaussian), in float32."""
    x = x.view(-1, IMAGE_PIXELS)
    logits = logits.float()  # under bf16 autocast the decoder's logits are bf16: sum in float32
    if likelihood == "bernoulli":
        return SummedBCEWithLogits.apply(logits, x)
    return F.mse_loss(torch.sigmoid(logits), x, reduction="sum")


# The gaussian likelihood is N(x; decoder mean, 1/2) per pixel: then -log p(x|z) is the
# squared error plus this constant (392 log pi, about 448.7 nats). Training minimises the
# squared error alone (same gradients); the evaluation adds the constant for a proper density.
GAUSSIAN_VARIANCE = 0.5
GAUSSIAN_LOG_NORMALISER = 0.5 * IMAGE_PIXELS * math.log(2 * math.pi * GAUSSIAN_VARIANCE)


def log_likelihood(logits, x, likelihood: str):
    """log p(x | z) per image, summed over pixels: logits (..., N, 784), x (N, 784) or (N, 1, 28, 28).

    bernoulli: minus the BCE (for grey pixels this is the cross-entropy the training
    loss uses, not a density over [0, 1]); gaussian: see GAUSSIAN_VARIANCE.
    """
    x = x.reshape(-1, IMAGE_PIXELS).expand_as(logits)
    if likelihood == "bernoulli":
        # BCE with logits is softplus(l) - x * l; written out it is faster than F.binary_cross_entropy_with_logits
        # on the (draws, images, 784) tensors of the IWAE estimate, and as exact.
        return -F.softplus(logits).sub_(logits * x).sum(-1)
    squared_error = (torch.sigmoid(logits) - x).pow(2).sum(-1)
    return -squared_error / (2 * GAUSSIAN_VARIANCE) - GAUSSIAN_LOG_NORMALISER


def vae_loss(logits, x, mu, logvar, beta: float, likelihood: str):
    """(loss, reconstruction, kl), each summed over the batch: loss = recon + beta * KL."""
    recon = reconstruction_loss(logits, x, likelihood)
    kl = kl_divergence(mu.float(), logvar.float()).sum()
    return recon + beta * kl, recon, kl


def save_model(model: VAE, model_dir: Path, extra_config: dict | None = None) -> None:
    """Weights as safetensors plus the config as JSON: no pickle anywhere."""
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(model_dir / "vae.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(model_dir / "vae.json", {**model.config, **(extra_config or {})})


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """The model saved by `save_model`, in eval mode, and its config."""
    model_dir = Path(model_dir)
    weights, config_path = model_dir / "vae.safetensors", model_dir / "vae.json"
    for path in (weights, config_path):
        stage_output(path, "train")
    try:
        config = json.loads(config_path.read_text())
        model = VAE(config["latent_dim"], config["hidden_dims"])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise PipelineError(f"{config_path}: not a model config ({type(e).__name__}: {e}); "
                            "rerun the train stage (dvc repro train)") from None
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own types for corrupt files
        raise PipelineError(f"{weights}: not a valid safetensors file ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise PipelineError(f"{weights}: weights do not match {config_path.name} "
                            f"({str(e).splitlines()[0]}); rerun the train stage (dvc repro train)") from None
    return model.to(device).eval(), config


class ImageDecoder(nn.Module):
    """The decoder alone: latent vectors (N, latent_dim) -> images (N, 28, 28) in [0, 1].

    This is what the MLflow model registry holds. One tensor in and one out is
    what torch.export (MLflow's pickle-free `pt2` format) accepts; the VAE's own
    forward returns a tuple.
    """

    def __init__(self, decoder: nn.Sequential):
        super().__init__()
        self.decoder = decoder

    def forward(self, z):
        return torch.sigmoid(self.decoder(z)).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
