"""The estimators of vae_pipeline/ml/evaluation.py and the literature table."""
import math

import numpy as np
import torch
from torch.distributions import Normal

from tests.conftest import tiny_params
from vae_pipeline.ml.evaluation import active_units, compare, elbo_parts, iwae_nll, log_likelihood
from vae_pipeline.ml.model import VAE, vae_loss
from vae_pipeline.params import Pipeline


def tiny_model(latent_dim=3, seed=0) -> VAE:
    torch.manual_seed(seed)
    return VAE.from_config({"latent_dim": latent_dim, "hidden_dims": [32]}).eval()


def binary_images(n=40, seed=1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=generator)


def test_iwae_with_one_draw_is_the_elbo_on_the_same_draw():
    model, x = tiny_model(), binary_images()
    nll = iwae_nll(model, x, "bernoulli", k=1, pairs_per_pass=1000, generator=torch.Generator().manual_seed(5))

    # The single-draw negative ELBO, -log p(x|z) + log q(z|x) - log p(z), computed independently
    # with torch.distributions on the draw the same seed gives.
    with torch.no_grad():
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((1, *mu.shape), generator=torch.Generator().manual_seed(5))[0]
        z = mu + eps * std
        p = torch.sigmoid(model.decode_logits(z))
        log_p_x = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)
        log_q = Normal(mu, std).log_prob(z).sum(-1)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(nll, -(log_p_x + log_prior - log_q), rtol=1e-5, atol=1e-3)


def test_iwae_with_one_draw_matches_the_stages_elbo_on_the_same_draws():
    model, x = tiny_model(), binary_images(n=8).repeat(500, 1)
    nll = iwae_nll(model, x, "bernoulli", 1, pairs_per_pass=len(x), generator=torch.Generator().manual_seed(0))
    recon, kl, _ = elbo_parts(model, x, "bernoulli", len(x), torch.Generator().manual_seed(0))
    # Same draws, same reconstruction term: they differ only in the KL, estimated from the one draw
    # (log q - log p) by IWAE and in closed form by elbo_parts, a difference that averages to zero.
    diff = (nll - (recon + kl.sum(1))).reshape(500, 8)
    assert diff.abs().mean() > 0.05  # not the same numbers draw by draw
    assert (diff.mean(0).abs() < 4 * diff.std(0) / math.sqrt(500)).all()


def test_iwae_estimate_falls_as_k_grows_and_stays_below_the_negative_elbo():
    model, x = tiny_model(latent_dim=2), binary_images(n=30)
    estimates = {k: iwae_nll(model, x, "bernoulli", k, pairs_per_pass=5000,
                             generator=torch.Generator().manual_seed(1)).mean().item()
                 for k in (1, 10, 100, 1000)}
    ks = sorted(estimates)
    for small, large in zip(ks, ks[1:]):
        assert estimates[large] <= estimates[small] + 0.05, estimates
    assert estimates[1000] < estimates[1] - 0.5, estimates  # the bound really does tighten
    recon, kl, _ = elbo_parts(model, x, "bernoulli", 30, torch.Generator().manual_seed(1))
    assert estimates[100] < (recon + kl.sum(1)).mean().item()


def test_iwae_does_not_depend_on_how_the_work_is_chunked():
    model, x = tiny_model(), binary_images(n=10)
    one_pass = iwae_nll(model, x, "bernoulli", 20, pairs_per_pass=200, generator=torch.Generator().manual_seed(3))
    # One image and 3 draws at a time: other random numbers, so equal only within sampling noise.
    small = iwae_nll(model, x, "bernoulli", 20, pairs_per_pass=3, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(one_pass.mean(), small.mean(), atol=1.0)
    same = iwae_nll(model, x, "bernoulli", 20, pairs_per_pass=200, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one_pass, same)


def test_gaussian_likelihood_is_a_proper_density():
    torch.manual_seed(0)
    logits, x = torch.randn(5, 784), torch.rand(5, 784)
    expected = Normal(torch.sigmoid(logits), math.sqrt(0.5)).log_prob(x).sum(-1)
    assert torch.allclose(log_likelihood(logits, x, "gaussian"), expected, rtol=1e-5)
    # The training loss is the squared error: the same up to a constant, so the same gradients.
    _, squared_error, _ = vae_loss(logits, x, torch.zeros(5, 2), torch.zeros(5, 2), 1.0, "gaussian")
    assert math.isclose(-expected.sum().item() - squared_error.item(), 5 * 392 * math.log(math.pi), rel_tol=1e-4)


def test_bernoulli_likelihood_is_minus_the_training_bce():
    torch.manual_seed(0)
    logits, x = torch.randn(6, 784) * 5, torch.rand(6, 784)
    _, bce, _ = vae_loss(logits, x, torch.zeros(6, 2), torch.zeros(6, 2), 1.0, "bernoulli")
    assert math.isclose(-log_likelihood(logits, x, "bernoulli").sum().item(), bce.item(), rel_tol=1e-5)


def test_a_zeroed_dimension_is_not_active_and_has_no_kl():
    model, x = tiny_model(latent_dim=4), binary_images()
    with torch.no_grad():
        # Dimension 2 collapsed onto the prior: mu = 0 and log sigma^2 = 0 for every image.
        for layer in (model.to_mu, model.to_logvar):
            layer.weight[2] = 0
            layer.bias[2] = 0
    _, kl, mu = elbo_parts(model, x, "bernoulli", batch_size=16)
    n_active, variance = active_units(mu.numpy(), 0.0)
    assert variance[2] == 0 and (np.delete(variance, 2) > 0).all()
    assert n_active == 3
    assert kl.mean(0)[2] == 0 and (kl.mean(0)[[0, 1, 3]] > 0).all()
    assert active_units(np.array([[0.0, 0.0], [0.3, 0.05]]), 0.01)[0] == 1   # variances 0.0225 and 0.000625


def test_literature_rows_compare_only_matching_setups(tmp_path):
    def compare_to(params, metrics):
        typed = Pipeline.of(params)
        return compare(typed.data, typed.train, typed.evaluate, metrics)

    params = tiny_params(tmp_path, {})
    metrics = {"neg_elbo": 130.0, "iwae_nll": 125.0}
    pytorch, burda_vae, burda_iwae = compare_to(params, metrics)
    # Default run: same measure as the PyTorch example, other recipe.
    assert pytorch["comparable"] and pytorch["this_run"] == 130.0 and not pytorch["same_recipe"]
    assert "architecture: 784-400-4, relu here, 784-400-20, relu there" in pytorch["differences"]
    assert not burda_vae["comparable"] and burda_vae["this_run"] is None
    assert "binarize: none here, dynamic there" in burda_vae["differences"]
    assert "iwae_samples: 10 here, 5000 there" in burda_vae["differences"]

    params["train"].update(latent_dim=20, epochs=10)
    assert compare_to(params, metrics)[0]["same_recipe"]
    params["train"].update(beta=4.0)
    assert not compare_to(params, metrics)[0]["same_recipe"]

    params["data"]["binarize"] = "dynamic"
    params["evaluate"]["iwae_samples"] = 5000
    rows = compare_to(params, metrics)
    assert not rows[0]["comparable"]
    assert rows[1]["comparable"] and rows[1]["this_run"] == 125.0 and rows[2]["this_run"] == 125.0
    assert "objective: beta-ELBO, beta = 4 here, IWAE bound, k = 50 there" in rows[2]["differences"]


def test_trustworthiness_of_a_map_that_keeps_the_neighbours_is_near_1_and_of_a_shuffled_one_near_half():
    from stages.latent_map import map_trustworthiness

    rng = np.random.default_rng(0)
    mu = rng.normal(size=(600, 4)).astype(np.float32)
    mu[:, 2:] *= 0.01                                # all the structure in the first two dimensions

    def score(xy):
        return map_trustworthiness(mu, xy, samples=300, neighbours=5, seed=0)

    assert score(mu[:, :2]) > 0.99
    assert score(rng.permutation(mu[:, :2])) < 0.6
