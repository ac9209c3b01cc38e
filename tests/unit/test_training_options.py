"""The model options of params.yaml `train` (issue 24): activation, objective and k, the learning-rate
schedule, the validation split and early stopping, the time budget; and their rules."""
import copy
import math

import pytest
import torch
import yaml

from stages.train import load_checkpoint, save_checkpoint, train_epoch
from tests.conftest import section
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.ml import training
from vae_pipeline.ml.model import ACTIVATIONS, VAE, k_draw_loss, load_model, save_model, vae_loss
from vae_pipeline.params import Train, validate

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_activations_are_the_rules_choices():
    assert f"one of {', '.join(ACTIVATIONS)}" == Train.rule("activation").allowed


def test_a_default_model_file_names_no_activation_and_another_loads_back_as_saved(tmp_path):
    save_model(VAE.from_config(section("train")), tmp_path / "relu", {"likelihood": "bernoulli"})
    assert "activation" not in (tmp_path / "relu" / "vae.json").read_text()    # byte for byte as before the key

    torch.manual_seed(0)
    model = VAE.from_config(section("train", activation="tanh", hidden_dims=[16, 8])).eval()
    save_model(model, tmp_path / "tanh", {"likelihood": "bernoulli"})
    loaded, config = load_model(tmp_path / "tanh")
    assert config["activation"] == "tanh" and isinstance(loaded.encoder[0][1], torch.nn.Tanh)
    z = torch.randn(5, 4)
    assert torch.equal(loaded.decode(z), model.decode(z))


@pytest.mark.parametrize("key, value, message", [
    ("patience", 5, "'train.patience' is 5; allowed: null, or an integer >= 1 when train.validation_split > 0"),
    ("validation_split", 0.9, "'train.validation_split' is 0.9; allowed: a number >= 0 and <= 0.5"),
    ("objective", "vae", "'train.objective' is 'vae'; allowed: one of elbo, iwae"),
    ("iwae_k", 0, "'train.iwae_k' is 0; allowed: an integer >= 1 and <= 10000"),
    ("lr_schedule", "step", "allowed: one of none, burda, cosine"),
    ("max_minutes", 0, "'train.max_minutes' is 0; allowed: null or a number > 0"),
])
def test_a_bad_option_names_the_key_and_what_is_allowed(key, value, message):
    params = copy.deepcopy(DEFAULTS)
    params["train"][key] = value
    with pytest.raises(PipelineError, match="params.yaml: invalid params") as error:
        validate(params)
    assert message in str(error.value)


def test_early_stopping_is_allowed_with_a_validation_split():
    params = copy.deepcopy(DEFAULTS)
    params["train"].update(patience=5, validation_split=0.1)
    assert validate(params).train.patience == 5


def test_one_draw_of_the_elbo_is_the_articles_loss():
    torch.manual_seed(0)
    model, x = VAE.from_config({"latent_dim": 3, "hidden_dims": [16]}), torch.rand(6, 784)
    torch.manual_seed(1)
    logits, mu, logvar = model(x)
    expected = vae_loss(logits, x, mu, logvar, 1.5, "bernoulli")
    torch.manual_seed(1)
    got = k_draw_loss(model, x, 1.5, "bernoulli", "elbo", 1)
    for a, b in zip(got, expected):
        assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_the_iwae_bound_is_below_the_mean_elbo_of_the_same_draws_and_is_it_for_one_draw():
    torch.manual_seed(0)
    model, x = VAE.from_config({"latent_dim": 3, "hidden_dims": [16]}), torch.bernoulli(torch.full((8, 784), 0.3))
    losses = {}
    for objective, k in [("iwae", 20), ("elbo", 20), ("iwae", 1)]:
        torch.manual_seed(2)
        losses[objective, k] = k_draw_loss(model, x, 1.0, "bernoulli", objective, k)[0].item()
    assert losses["iwae", 20] < losses["elbo", 20] - 1        # -log mean w <= -mean log w, strictly here
    torch.manual_seed(2)
    elbo_one = k_draw_loss(model, x, 1.0, "bernoulli", "elbo", 1)[0].item()
    # One draw: the same bound, with the KL estimated from the draw instead of in closed form.
    assert losses["iwae", 1] == pytest.approx(elbo_one, abs=0.5 * len(x) * 3)


def test_an_iwae_epoch_trains():
    torch.manual_seed(0)
    model, x = VAE.from_config({"latent_dim": 3, "hidden_dims": [16]}), torch.rand(64, 784)
    t = section("train", objective="iwae", iwae_k=5, batch_size=16, precision="fp32")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = train_epoch(model, optimizer, x, t, 1)
    for epoch in range(2, 5):
        last = train_epoch(model, optimizer, x, t, epoch)
    assert all(map(math.isfinite, last)) and last[0] < first[0]


def test_the_burda_schedule_at_3280_epochs_is_the_papers():
    factors = [training.lr_factor("burda", epoch, 3280) for epoch in range(1, 3281)]
    stages = [round(-7 * math.log10(f)) for f in factors]
    assert [stages.count(i) for i in range(8)] == [3 ** i for i in range(8)]
    assert stages == sorted(stages)


def test_a_shortened_burda_schedule_keeps_its_shares_and_cosine_ends_at_a_hundredth():
    stages = [round(-7 * math.log10(training.lr_factor("burda", e, 328))) for e in range(1, 329)]
    assert stages[0] == 0 and stages[-1] == 7 and abs(stages.count(7) - 328 * 2187 / 3280) < 1   # 2/3 of the run
    assert training.lr_factor("cosine", 1, 50) == 1.0
    assert training.lr_factor("cosine", 50, 50) == pytest.approx(0.01)
    assert training.lr_factor("none", 7, 50) == 1.0


def test_the_validation_images_come_from_the_training_images_alone_and_always_the_same():
    x = torch.arange(100, dtype=torch.float32).unsqueeze(1)
    state = torch.get_rng_state()
    kept, held_out = training.carve_validation(x, 0.2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)            # the training's random numbers untouched
    assert len(held_out) == 20 and len(kept) == 80
    assert sorted(torch.cat([kept, held_out]).flatten().tolist()) == list(range(100))
    assert torch.equal(training.carve_validation(x, 0.2, seed=3)[1], held_out)
    assert not torch.equal(training.carve_validation(x, 0.2, seed=4)[1], held_out)
    assert training.carve_validation(x, 0, seed=3) == (x, None)
    with pytest.raises(ValueError):
        training.carve_validation(x[:3], 0.2, seed=3)               # holds out no image


def test_early_stopping_keeps_the_best_epoch_and_its_state_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = VAE.from_config({"latent_dim": 2, "hidden_dims": [8]})
    optimizer = torch.optim.Adam(model.parameters())
    stopping = training.EarlyStopping(patience=2)
    for epoch, loss in enumerate([10.0, 8.0, 9.0], start=1):
        stopping.update(model, epoch, loss)
        if epoch == 2:
            best = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model.to_mu.bias += 1                                    # the weights move on after the best epoch
    assert (stopping.best_epoch, stopping.best_loss) == (2, 8.0) and not stopping.stop(3) and stopping.stop(4)

    path = tmp_path / "train.pt"
    save_checkpoint(path, model, optimizer, 3, [[e, 1, 1, 1, 1, 1, 1, 0.5] for e in (1, 2, 3)], "key",
                    stopping.state())
    done, history, state = load_checkpoint(path, model, optimizer, "key")
    resumed = training.EarlyStopping(patience=2)
    resumed.restore(state)
    assert done == 3 and len(history) == 3 and (resumed.best_epoch, resumed.best_loss) == (2, 8.0)
    assert all(torch.equal(resumed.best_weights[k], best[k]) for k in best)


def test_the_time_budget_counts_every_epoch_and_never_stops_before_the_first():
    assert not training.out_of_time([], 0.001)
    assert not training.out_of_time([20.0, 20.0], None)
    assert not training.out_of_time([20.0, 20.0], 1)                # 40 s spent + 20 s = the minute
    assert training.out_of_time([20.0, 20.0, 15.0], 1)             # 55 s + another ~18 s: past it
    assert training.time_left([10.0] * 3, 100, None) == 1000
    assert training.time_left([10.0] * 3, 100, 1) == 30             # the budget ends first
    assert [training.duration(s) for s in (42, 425, 3790)] == ["42 s", "7 min 05 s", "1 h 03 min"]
