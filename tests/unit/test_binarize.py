"""data.binarize (static, dynamic) and train.kl_warmup_epochs, down to what train_epoch receives."""
import pytest
import torch

from stages import download, train
from tests.conftest import relocate, section, tiny_params
from vae_pipeline.ml.data import binarize, dataset_dir, load_images
from vae_pipeline.params import Pipeline


def test_a_draw_is_binary_follows_the_grey_values_and_depends_only_on_its_seed():
    x = torch.rand(300, 784)
    first = binarize(x, 0, 0, 1)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert abs(first.mean().item() - x.mean().item()) < 0.01
    assert torch.equal(first, binarize(x, 0, 0, 1))             # a resumed run sees the same images
    assert not torch.equal(first, binarize(x, 0, 0, 2))         # the next epoch's draw
    assert not torch.equal(first, binarize(x, 0, 1, 1))         # the other split's stream
    assert not torch.equal(first, binarize(x, 1, 0, 1))         # another data.binarize_seed


def test_epoch_images_draw_afresh_only_when_dynamic():
    x = torch.rand(50, 784)
    static = section("data", binarize="static", binarize_seed=0)
    assert train.epoch_images(x, static, 1) is x and train.epoch_images(x, static, 2) is x
    dynamic = section("data", binarize="dynamic", binarize_seed=0)
    one, two = train.epoch_images(x, dynamic, 1), train.epoch_images(x, dynamic, 2)
    assert not torch.equal(one, two) and set(one.unique().tolist()) == {0.0, 1.0}


def test_kl_warmup_ramps_beta_from_zero():
    t = section("train", beta=2.0, kl_warmup_epochs=4)
    assert [train.epoch_beta(t, e) for e in range(1, 7)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert train.epoch_beta(section("train", beta=2.0, kl_warmup_epochs=0), 1) == 2.0


@pytest.fixture
def dynamic_params(tmp_path, tiny_source):
    folder, checksums = tiny_source
    params = relocate(tiny_params(folder, checksums, data={"binarize": "dynamic"},
                                  train={"epochs": 3, "kl_warmup_epochs": 2, "hidden_dims": [32]}), tmp_path)
    download.run(params)
    return params


def test_training_sees_a_fresh_draw_each_epoch_and_the_warmup_beta(dynamic_params, monkeypatch):
    seen = []
    real_train_epoch = train.train_epoch

    def recording_train_epoch(model, optimizer, x, t, epoch):
        seen.append((x.clone(), t.beta))
        return real_train_epoch(model, optimizer, x, t, epoch)

    monkeypatch.setattr(train, "train_epoch", recording_train_epoch)
    train.run(dynamic_params)
    images = [x for x, _ in seen]
    assert [beta for _, beta in seen] == [0.0, 0.5, 1.0]
    assert all(set(x.unique().tolist()) == {0.0, 1.0} for x in images)
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    # The test images are one fixed draw, the same every time they are loaded.
    params = Pipeline.of(dynamic_params)
    raw = dataset_dir(params.paths, params.data)
    test_a, _ = load_images(params.data, raw, "test", torch.device("cpu"))
    test_b, _ = load_images(params.data, raw, "test", torch.device("cpu"))
    assert set(test_a.unique().tolist()) == {0.0, 1.0} and torch.equal(test_a, test_b)
    grey, _ = load_images(params.data, raw, "test", torch.device("cpu"), fixed_draw=False)
    assert len(grey.unique()) > 2


@pytest.mark.parametrize("section, key, value, message", [
    ("data", "binarize", "always", "'data.binarize' is 'always'; allowed: one of none, static, dynamic"),
    ("train", "kl_warmup_epochs", -1, "'train.kl_warmup_epochs' is -1; allowed: an integer >= 0"),
    ("evaluate", "iwae_samples", 0, "'evaluate.iwae_samples' is 0; allowed: an integer >= 1"),
])
def test_new_options_are_validated(tmp_path, section, key, value, message):
    from vae_pipeline.errors import PipelineError
    from vae_pipeline.params import validate

    params = tiny_params(tmp_path, {})
    assert params["data"]["binarize"] == "none" and params["train"]["kl_warmup_epochs"] == 0  # defaults unchanged
    params[section][key] = value
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        validate(params)
