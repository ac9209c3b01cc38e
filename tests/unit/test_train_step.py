"""The fast training step computes the same thing as a plain, article-style one.

train_epoch is tuned for speed (fused Adam, a hand-written BCE, index_select,
optional bf16): these tests pin its maths to a straightforward reference, so
speed work cannot silently change the results. No timings here: see benchmarks/.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from stages.train import evaluate, train_epoch
from tests.conftest import section
from vae_pipeline.files import ROOT
from vae_pipeline.ml.model import VAE, SummedBCEWithLogits, idle_cores, setup_torch

T = section("train", batch_size=32, beta=1.5, likelihood="bernoulli", precision="fp32", seed=0, eval_batch_size=50)


def reference_epoch(model, optimizer, x, t):
    """The article's loop on tensors: sigmoid + F.binary_cross_entropy, the KL formula, fancy indexing."""
    order = torch.randperm(len(x))
    total = 0.0
    for start in range(0, len(x), t["batch_size"]):
        batch = x[order[start:start + t["batch_size"]]]
        mu, logvar = model.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy(torch.sigmoid(model.decode_logits(z)), batch, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = recon + t["beta"] * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(x)


def twin_models():
    torch.manual_seed(3)
    a = VAE.from_config({"latent_dim": 3, "hidden_dims": [24]})
    b = VAE.from_config({"latent_dim": 3, "hidden_dims": [24]})
    b.load_state_dict(a.state_dict())
    return a, b


def test_fast_epoch_matches_the_reference_step():
    torch.set_num_threads(1)
    x = torch.rand(100, 784)  # 100 = 3 full batches and a short one
    fast, ref = twin_models()
    fast_opt = torch.optim.Adam(fast.parameters(), lr=1e-3, fused=True)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        fast_loss, fast_recon, fast_kl = train_epoch(fast, fast_opt, x, T, epoch)
        torch.manual_seed(epoch)
        ref_loss = reference_epoch(ref, ref_opt, x, T)
        assert fast_loss == pytest.approx(ref_loss, rel=1e-5)
        assert fast_loss == pytest.approx(fast_recon + T["beta"] * fast_kl, rel=1e-5)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert evaluate(fast, x, T) == pytest.approx(evaluate(ref, x, T), rel=1e-5)


def test_summed_bce_matches_torch_in_value_and_gradient():
    logits = torch.cat([torch.randn(2000) * 6, torch.tensor([0.0, -0.0, 40.0, -40.0, 1e-8])]).double()
    x = torch.rand(len(logits)).double()
    x[-5:] = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5]).double()
    ours_in, torch_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    x_ours, x_torch = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = SummedBCEWithLogits.apply(ours_in, x_ours)
    expected = F.binary_cross_entropy_with_logits(torch_in, x_torch, reduction="sum")
    ours.backward()
    expected.backward()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(ours_in.grad, torch_in.grad, atol=1e-12)  # exact, 0.5 - x at logit 0 too
    assert torch.allclose(x_ours.grad, x_torch.grad, atol=1e-12)
    # float32, as in training: per-pixel rounding stays far below the 1% the benchmarks allow.
    ours32 = SummedBCEWithLogits.apply(logits.float(), x.float())
    assert ours32.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bf16_epoch_stays_close_and_keeps_float32_weights():
    torch.set_num_threads(1)
    x = (torch.rand(256, 784) > 0.7).float()
    fp32, bf16 = twin_models()
    losses = {}
    for name, model, precision in (("fp32", fp32, "fp32"), ("bf16", bf16, "bf16")):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        torch.manual_seed(0)
        for epoch in (1, 2, 3):
            losses[name] = train_epoch(model, optimizer, x, T.model_copy(update={"precision": precision}), epoch)[0]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.01)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert evaluate(bf16, x, T)[0] == pytest.approx(evaluate(fp32, x, T)[0], rel=0.01)


def test_thread_count_zero_means_the_idle_cores():
    assert 1 <= idle_cores(2, seconds=0.05) <= 2
    assert idle_cores(1, seconds=0.05) == 1
    before = torch.get_num_threads()
    try:
        setup_torch("cpu", 3)
        assert torch.get_num_threads() == 3
        setup_torch("cpu", 0)
        assert 1 <= torch.get_num_threads() <= len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


# Run as a stage runs (through vae_pipeline.errors.main), in a fresh process: MKL fixes its numerics
# at its first call, and this test process has called it long before.
ON_ONE_AND_ON_TWO_THREADS = f"""
import json
import torch
from stages.train import evaluate, train_epoch
from vae_pipeline.errors import main
from vae_pipeline.ml.model import VAE
from vae_pipeline.params import Train

T = Train(**{T.model_dump()!r})

def train_on(threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = VAE.from_config({{"latent_dim": 4, "hidden_dims": [400]}})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(512, 784, generator=torch.Generator().manual_seed(1))
    figures = train_epoch(model, optimizer, x, T, 1)
    figures += evaluate(model, x, T) + evaluate(model, x, T, sample=False)
    return list(model.parameters()), figures

def compare(params):
    (weights_1, figures_1), (weights_2, figures_2) = train_on(1), train_on(2)
    print(json.dumps({{"weights": all(map(torch.equal, weights_1, weights_2)), "figures": [figures_1, figures_2]}}))

main(lambda: compare(None))
"""


@pytest.fixture(scope="module")
def on_one_and_on_two_threads():
    """An epoch of training and the figures of `evaluate`, on 1 and on 2 threads (read-only)."""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    result = subprocess.run([sys.executable, "-c", ON_ONE_AND_ON_TWO_THREADS], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_a_stage_trains_to_the_same_weights_on_one_and_on_two_threads(on_one_and_on_two_threads):
    """train.threads 0 takes the idle cores, which vary with the load: a rerun must not depend on it."""
    assert on_one_and_on_two_threads["weights"]


def test_the_loss_figures_are_the_same_on_one_and_on_two_threads(on_one_and_on_two_threads):
    """The losses of train.json (train_epoch, evaluate) too, to the last bit."""
    first, second = on_one_and_on_two_threads["figures"]
    assert first == second
