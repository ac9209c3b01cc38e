"""params.yaml as a typed config: one strict, closed, frozen model per section, one error format.

The messages are the project's own (the key, its value, what is allowed), never pydantic's; code
reads the sections by attribute, and a changed config is a copy, or a dict checked again.
"""
import copy
import json

import pytest
import yaml
from pydantic import ValidationError

from tests.conftest import section
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.ml.model import read_config
from vae_pipeline.params import Data, Pipeline, Train, load_params, validate
from vae_pipeline.settings import Settings, Stack, load_settings

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())
WILDCARD = ".".join("0" * 4)


def changed(**sections) -> dict:
    """The project's params.yaml as read, each section=(key, value) set (value ... deletes the key)."""
    params = copy.deepcopy(DEFAULTS)
    for name, (key, value) in sections.items():
        if value is ...:
            del params[name][key]
        else:
            params[name][key] = value
    return params


def message(params: dict, model=Pipeline) -> str:
    with pytest.raises(PipelineError) as error:
        validate(params, model)
    return str(error.value)


def test_each_section_is_typed_and_frozen():
    params = load_params()
    assert isinstance(params, Pipeline) and isinstance(params.train, Train) and isinstance(params.data, Data)
    assert (params.train.latent_dim, params.train.hidden_dims, params.data.dataset) == (4, [400], "mnist")
    with pytest.raises(ValidationError, match="frozen"):
        params.train.beta = 2.0
    with pytest.raises(ValidationError, match="frozen"):
        params.train = params.train
    settings = load_settings()
    assert isinstance(settings, Settings) and isinstance(settings.stack, Stack) and settings.stack.host == "127.0.0.1"


def test_numbers_keep_their_type_and_nothing_is_coerced():
    """1 stays 1 (it is logged and written as read); "15", 15.0 and true are no integers, "0.1" no number."""
    assert section("train", beta=1).beta == 1 and type(section("train", beta=1).beta) is int
    assert type(section("train", beta=1.0).beta) is float
    for key, value in [("epochs", "15"), ("epochs", 15.0), ("epochs", True), ("lr", "0.1"), ("lr", False),
                       ("hidden_dims", (400,)), ("likelihood", None)]:
        assert f"'train.{key}' is {value!r}; allowed: " in message(changed(train=(key, value)))


def test_one_message_names_every_problem_sorted_in_the_projects_words():
    params = changed(train=("lr", "fast"), data=("binarize_seed", ...), report=("walk_digits", [4, 12]))
    params["train"]["learning_rate"] = 0.1
    params["extra"] = {}
    del params["embed"]
    assert message(params, Settings) == (
        "params.yaml: invalid params:\n"
        "  'report.walk_digits' is [4, 12]; allowed: a list of at least 2 items, each an integer >= 0 and <= 9\n"
        "  'train.lr' is 'fast'; allowed: a number > 0\n"
        "  missing key 'data.binarize_seed' (an integer >= 0)\n"
        "  missing section 'embed'\n"
        "  unknown key 'train.learning_rate' (allowed: latent_dim, hidden_dims, batch_size, epochs, lr, beta, "
        "likelihood, seed, device, threads, eval_batch_size, precision, kl_warmup_epochs, activation, objective, "
        "iwae_k, lr_schedule, max_minutes, validation_split, patience)\n"
        "  unknown section 'extra' (allowed: paths, data, train, embed, mlflow, latent_map, report, serve, "
        "evaluate, prefect, sweep, retrain, mlflow_ui, stack)")
    assert "pydantic" not in message(params, Settings) and "Input should" not in message(params, Settings)


@pytest.mark.parametrize("params, line", [
    (changed(train=("seed", ...)), "missing key 'train.seed' (an integer >= 0)"),
    (changed(latent_map=("subsample", 1)), "'latent_map.subsample' is 1; allowed: null or an integer >= 2"),
    (changed(data=("sha256", {"a": 1})), "'data.sha256' is {'a': 1}; allowed: null or a mapping of names to a string"),
    # The wildcard address, spelt so that test_security's guard over the code does not see it.
    (changed(stack=("host", WILDCARD)), f"'stack.host' is '{WILDCARD}'; allowed: one IP address (not a wildcard "),
    (changed(stack=("mlflow_port", 70000)), "'stack.mlflow_port' is 70000; allowed: an integer >= 1 and <= 65535"),
    ({**DEFAULTS, "train": [1]}, "missing section 'train'"),                     # not a mapping of keys
])
def test_each_kind_of_problem_has_its_line(params, line):
    assert f"\n  {line}" in message(params, Settings)


def test_the_stages_config_leaves_the_settings_to_their_loader():
    params = changed(stack=("mlflow_port", 0))
    params["sweep"] = "not even a mapping"
    assert validate(params).train == load_params().train
    assert "sweep" not in validate(params).model_dump() and not hasattr(validate(params), "stack")
    assert "missing section 'sweep'" in message(params, Settings)


def test_a_changed_config_is_a_copy_and_is_checked_again_as_a_dict():
    """Code reads sections by attribute, and a config is no mapping; a change is a copy of the section
    (model_copy) or a dict checked again (Pipeline.of), with the one error format."""
    params = load_settings()
    with pytest.raises(TypeError):
        params["train"]
    assert params.train.hidden_dims == [400] and params.model_dump().keys() == DEFAULTS.keys()
    mlflow = params.mlflow.model_copy(update={"tracking_uri": "sqlite:///elsewhere.db"})
    assert mlflow.tracking_uri == "sqlite:///elsewhere.db" and params.mlflow.tracking_uri is None
    moved = params.model_copy(update={"mlflow": mlflow})
    assert moved.mlflow.tracking_uri == "sqlite:///elsewhere.db" and params.mlflow.tracking_uri is None
    # A stage's run takes a config through Pipeline.of: one it can read is taken as it is, a dict is checked.
    assert Pipeline.of(moved) is moved
    assert Pipeline.of(moved.model_dump()).mlflow.tracking_uri == "sqlite:///elsewhere.db"
    dumped = params.model_dump()
    dumped["train"]["epochs"] = "many"
    with pytest.raises(PipelineError, match="'train.epochs' is 'many'; allowed: an integer >= 1"):
        Pipeline.of(dumped)
    untouched = load_params()
    assert Pipeline.of(untouched) is untouched


def test_a_dict_given_to_a_stage_is_checked_first():
    from stages import download

    with pytest.raises(PipelineError, match="params.yaml: invalid params:\n  'data.connect_timeout' is 0"):
        download.run(changed(data=("connect_timeout", 0)))


def test_the_model_config_keeps_the_train_sections_rules(tmp_path):
    config = tmp_path / "vae.json"
    config.write_text(json.dumps({"latent_dim": "4", "hidden_dims": [400], "likelihood": "bernoulli"}))
    with pytest.raises(PipelineError, match=r"vae.json: not a model config \('latent_dim' is 4; allowed: an "
                                            r"integer >= 1 and <= 1024\)"):
        read_config(config)
    config.write_text(json.dumps({"latent_dim": 4, "hidden_dims": [400]}))
    with pytest.raises(PipelineError, match=r"missing key 'likelihood': one of bernoulli, gaussian"):
        read_config(config)


def test_every_key_of_every_section_has_its_rule():
    """The words of every message come from the field's rule: a field without one could not be named."""
    for name, field in Settings.model_fields.items():
        for key in field.annotation.model_fields:
            rule = field.annotation.rule(key)
            assert rule.allowed and rule.check(DEFAULTS[name][key]), f"{name}.{key}"
