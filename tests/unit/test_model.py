import math

import torch

from vae_pipeline.ml.model import VAE, kl_divergence, load_model, save_model, vae_loss


def test_architecture_is_the_articles():
    model = VAE.from_config({"latent_dim": 4, "hidden_dims": [400]})
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if name.endswith("weight")}
    assert sorted(shapes.values()) == sorted([(400, 784), (4, 400), (4, 400), (400, 4), (784, 400)])
    logits, mu, logvar = model(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 784) and mu.shape == logvar.shape == (5, 4)
    assert 0 <= model.decode(mu).min() and model.decode(mu).max() <= 1


def test_loss_matches_a_hand_computation():
    x = torch.tensor([[1.0, 0.0, 0.5] + [0.0] * 781])
    p = torch.full((1, 784), 0.5)
    p[0, :3] = torch.tensor([0.9, 0.2, 0.6])
    logits = torch.log(p / (1 - p))
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    bce = -(math.log(0.9) + math.log(0.8) + 0.5 * math.log(0.6) + 0.5 * math.log(0.4) + 781 * math.log(0.5))
    kl = 0.5 * (1 + 1 - 0 - 1) + 0.5 * (0 + 4 - math.log(4) - 1)
    loss, recon, kl_out = vae_loss(logits, x, mu, logvar, beta=2.0, likelihood="bernoulli")
    assert math.isclose(recon.item(), bce, rel_tol=1e-5)
    assert math.isclose(kl_out.item(), kl, rel_tol=1e-5)
    assert math.isclose(loss.item(), bce + 2.0 * kl, rel_tol=1e-5)
    _, squared, _ = vae_loss(logits, x, mu, logvar, beta=1.0, likelihood="gaussian")
    assert math.isclose(squared.item(), 0.1**2 + 0.2**2 + 0.1**2 + 781 * 0.5**2, rel_tol=1e-5)


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([0.7, -1.2, 0.0]), torch.tensor([-0.5, 0.3, 1.0])
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(400_000, 3)
    log_q = torch.distributions.Normal(mu, std).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    monte_carlo = (log_q - log_p).mean(0)
    assert torch.allclose(kl_divergence(mu, logvar), monte_carlo, atol=0.01)


def test_save_and_load_round_trip(tmp_path):
    model = VAE.from_config({"latent_dim": 3, "hidden_dims": [16, 8]})
    save_model(model, tmp_path, {"likelihood": "bernoulli"})
    loaded, config = load_model(tmp_path)
    assert config == {"latent_dim": 3, "hidden_dims": [16, 8], "likelihood": "bernoulli"}
    z = torch.randn(2, 3)
    assert torch.equal(loaded.decode(z), model.decode(z))
