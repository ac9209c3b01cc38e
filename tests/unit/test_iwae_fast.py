"""The fast IWAE estimate (vae_pipeline/ml/evaluation.py): its log-likelihood is the plain formula's bit for
bit (the default pipeline's figures stay as they were), and the estimate does not depend on how many
workers share the passes."""
import torch

from vae_pipeline.ml.evaluation import ROWS_IN_CACHE, draws_log_likelihood, iwae_nll, log_likelihood
from vae_pipeline.ml.model import VAE


def model_and_images(binary: bool):
    torch.manual_seed(0)
    model = VAE.from_config({"latent_dim": 5, "hidden_dims": [32, 24], "activation": "tanh"}).eval()
    with torch.no_grad():
        model.decoder[-1].bias.mul_(20)                     # logits far from 0 as well: |l| > 17 included
    x = torch.rand(7, 784)
    return model, (torch.bernoulli(x) if binary else x)


def test_the_fast_log_likelihood_is_the_plain_one():
    for binary in (True, False):
        model, x = model_and_images(binary)
        z = torch.randn(3 * ROWS_IN_CACHE // 7 + 5, 7, 5)   # more rows than one chunk, and a short last chunk
        with torch.no_grad():
            plain = log_likelihood(model.decode_logits(z), x, "bernoulli")
            fast = draws_log_likelihood(model, z, x, "bernoulli")
            assert plain.abs().max() > 500 and fast.shape == plain.shape
            assert torch.equal(fast, plain)
            assert torch.equal(draws_log_likelihood(model, z, x, "gaussian"),
                               log_likelihood(model.decode_logits(z), x, "gaussian"))
            wide = torch.randn(2, ROWS_IN_CACHE + 9, 5)             # more images than one chunk
            x_wide = x.repeat(40, 1)[:ROWS_IN_CACHE + 9]
            assert torch.equal(draws_log_likelihood(model, wide, x_wide, "bernoulli"),
                               log_likelihood(model.decode_logits(wide), x_wide, "bernoulli"))


def test_the_estimate_is_the_same_for_any_number_of_workers():
    model, x = model_and_images(True)
    estimates = [iwae_nll(model, x, "bernoulli", 30, pairs_per_pass=60, generator=torch.Generator().manual_seed(4),
                          workers=workers) for workers in (1, 2, 3)]
    assert estimates[0].shape == (7,) and torch.isfinite(estimates[0]).all()
    assert all(torch.equal(estimates[0], e) for e in estimates[1:])
    assert torch.get_num_threads() >= 1
