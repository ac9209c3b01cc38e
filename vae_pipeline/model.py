"""The article's VAE and its loss (Kingma & Welling 2014; as in pytorch/examples vae/main.py).

Encoder 784 -> hidden -> (mu, log sigma^2); decoder latent -> hidden -> 784.
The decoder returns logits: the loss uses them directly (numerically stable
BCE), and `decode` applies the sigmoid to give pixel values in [0, 1].

Around it: fast_bce.py (the BCE the loss uses), model_files.py (saving and
loading), evaluation.py (log p(x|z) in nats, the IWAE estimate), mlflow_decoder.py
(the decoder as an MLflow model).
"""
import torch
import torch.nn.functional as F
from torch import nn

from vae_pipeline.datasets import IMAGE_PIXELS
from vae_pipeline.fast_bce import SummedBCEWithLogits

# The gaussian likelihood is N(x; decoder mean, 1/2) per pixel: -log p(x|z) is then the squared
# error plus a constant. Training minimises the squared error alone (the constant has no
# gradient); the evaluation adds the constant for a proper density (evaluation.log_likelihood).
GAUSSIAN_VARIANCE = 0.5


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, *, latent_dim: int, hidden_dims: list[int]):
        super().__init__()
        hidden = list(hidden_dims)
        self.config = {"latent_dim": latent_dim, "hidden_dims": hidden}
        self.encoder = nn.Sequential(mlp([IMAGE_PIXELS, *hidden]), nn.ReLU())
        self.to_mu = nn.Linear(hidden[-1], latent_dim)
        self.to_logvar = nn.Linear(hidden[-1], latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden), IMAGE_PIXELS])

    @classmethod
    def from_config(cls, config: dict) -> "VAE":
        """The VAE of a config holding latent_dim and hidden_dims (params.yaml train, or vae.json)."""
        return cls(latent_dim=config["latent_dim"], hidden_dims=config["hidden_dims"])

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


def reconstruction_loss(logits, x, likelihood: str):
    """-log p(x|z) up to a constant, summed over pixels and batch, in float32:
    BCE (bernoulli) or squared error / (2 GAUSSIAN_VARIANCE) (gaussian)."""
    x = x.view(-1, IMAGE_PIXELS)
    logits = logits.float()  # under bf16 autocast the decoder's logits are bf16: sum in float32
    if likelihood == "bernoulli":
        return SummedBCEWithLogits.apply(logits, x)
    # Per image first, then the batch (as the fast BCE): one whole-batch sum would round by thread count.
    squared_error = F.mse_loss(torch.sigmoid(logits), x, reduction="none").sum(-1).sum()
    return squared_error / (2 * GAUSSIAN_VARIANCE)


def vae_loss(logits, x, mu, logvar, beta: float, likelihood: str):
    """(loss, reconstruction, kl), each summed over the batch: loss = recon + beta * KL."""
    recon = reconstruction_loss(logits, x, likelihood)
    kl = kl_divergence(mu.float(), logvar.float()).sum()
    return recon + beta * kl, recon, kl
