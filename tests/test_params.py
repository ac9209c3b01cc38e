import copy

import pytest
import yaml

from vae_pipeline.files import ROOT, PipelineError
from vae_pipeline.params import load_params, validate

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_defaults_are_the_articles():
    params = load_params()
    t = params["train"]
    assert (t["latent_dim"], t["hidden_dims"], t["batch_size"], t["epochs"], t["lr"], t["beta"]) == \
        (4, [400], 128, 15, 0.001, 1.0)
    assert (params["data"]["dataset"], t["likelihood"], t["device"]) == ("mnist", "bernoulli", "auto")


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "latent_dim", 0, "'train.latent_dim' is 0; allowed: an integer >= 1"),
    ("train", "lr", -0.1, "'train.lr' is -0.1; allowed: a number > 0"),
    ("train", "beta", -1, "'train.beta' is -1; allowed: a number >= 0"),
    ("train", "epochs", "15", "'train.epochs' is '15'; allowed: an integer"),
    ("train", "batch_size", True, "'train.batch_size' is True"),
    ("train", "likelihood", "poisson", "allowed: one of bernoulli, gaussian"),
    ("data", "dataset", "cifar10", "'data.dataset' is 'cifar10'; allowed: one of mnist, fashion-mnist"),
    ("train", "hidden_dims", [], "'train.hidden_dims' is []"),
])
def test_bad_value_names_key_and_what_is_allowed(section, key, value, message):
    params = copy.deepcopy(DEFAULTS)
    params[section][key] = value
    with pytest.raises(PipelineError) as error:
        validate(params)
    assert message in str(error.value)


def test_unknown_and_missing_keys():
    params = copy.deepcopy(DEFAULTS)
    params["train"]["learning_rate"] = 0.1
    del params["train"]["seed"]
    params["extra"] = {}
    with pytest.raises(PipelineError) as error:
        validate(params)
    text = str(error.value)
    assert "unknown key 'train.learning_rate'" in text
    assert "missing key 'train.seed'" in text
    assert "unknown section 'extra'" in text


def test_unreadable_yaml_names_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(PipelineError, match="params.yaml: not valid YAML"):
        load_params(tmp_path / "params.yaml")
