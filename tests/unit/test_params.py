import copy

import pytest
import yaml

from commands.clean import KEPT_BY_CLEAN
from tests.conftest import run_in, set_params
from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.params import Pipeline, load_params, validate
from vae_pipeline.settings import Settings, load_settings

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_defaults_are_the_articles():
    params = load_params()
    t = params.train
    assert (t.latent_dim, t.hidden_dims, t.batch_size, t.epochs, t.lr, t.beta) == (4, [400], 128, 15, 0.001, 1.0)
    assert (params.data.dataset, t.likelihood, t.device) == ("mnist", "bernoulli", "auto")


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "latent_dim", 0, "'train.latent_dim' is 0; allowed: an integer >= 1"),
    ("train", "lr", -0.1, "'train.lr' is -0.1; allowed: a number > 0"),
    ("train", "beta", -1, "'train.beta' is -1; allowed: a number >= 0"),
    ("train", "epochs", "15", "'train.epochs' is '15'; allowed: an integer"),
    ("train", "batch_size", True, "'train.batch_size' is True"),
    ("train", "likelihood", "poisson", "allowed: one of bernoulli, gaussian"),
    ("data", "dataset", "cifar10", "'data.dataset' is 'cifar10'; allowed: one of mnist, fashion-mnist"),
    ("train", "hidden_dims", [], "'train.hidden_dims' is []"),
    ("stack", "host", "stack-host", "'stack.host' is 'stack-host'; allowed: one IP address"),
    ("stack", "host", ":" * 2, "allowed: one IP address (not a wildcard address)"),   # binds every network
])
def test_bad_value_names_key_and_what_is_allowed(section, key, value, message):
    params = copy.deepcopy(DEFAULTS)
    params[section][key] = value
    with pytest.raises(PipelineError) as error:
        validate(params, Settings)
    assert message in str(error.value)


def test_unknown_and_missing_keys():
    params = copy.deepcopy(DEFAULTS)
    params["train"]["learning_rate"] = 0.1
    del params["train"]["seed"]
    params["extra"] = {}
    with pytest.raises(PipelineError) as error:
        validate(params, Settings)
    text = str(error.value)
    assert "unknown key 'train.learning_rate'" in text
    assert "missing key 'train.seed'" in text
    assert "unknown section 'extra'" in text


def test_the_stages_check_their_sections_and_the_settings_every_section(tmp_path):
    """A stage loads only the sections the stages read (a bad operating setting reruns and stops no stage);
    the flows and commands load them all."""
    params = copy.deepcopy(DEFAULTS)
    params["stack"]["mlflow_port"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "params.yaml").train.model_dump() == DEFAULTS["train"]
    with pytest.raises(PipelineError, match="'stack.mlflow_port' is 0"):
        load_settings(tmp_path / "params.yaml")
    assert not Pipeline.model_fields.keys() & {"prefect", "sweep", "retrain", "stack"}
    assert Settings.model_fields.keys() == DEFAULTS.keys()


def test_unreadable_yaml_names_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(PipelineError, match="params.yaml: not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_make_clean_removes_every_output_and_keeps_the_raw_data(project):
    paths = load_params(project / "params.yaml").paths.model_dump()
    # the decision: the data, the MLflow store, its run record and UMAP's compiled code stay
    assert {"raw_dir", "run_record", "tracking_store", "tracking_artifacts", "numba_cache"} == set(KEPT_BY_CLEAN)
    for key, path in paths.items():                         # every path, as a file or a folder with a file
        target = project / path / "x" if key.endswith("_dir") else project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("generated")
    run_in(project, "make", "clean")
    left = {key for key, path in paths.items() if (project / path).exists()}
    assert left == set(KEPT_BY_CLEAN)
    assert (project / "dvc.yaml").exists() and (project / "vae_pipeline").is_dir()


def test_make_clean_refuses_a_path_outside_the_project(project):
    set_params(project, paths={"report": "../outside.html"})
    (project.parent / "outside.html").write_text("not ours")
    (project / "models").mkdir()
    result = run_in(project, "make", "clean", check=False)
    assert result.returncode != 0
    assert "paths.report is '../outside.html', outside the project" in result.stderr
    assert (project.parent / "outside.html").exists() and (project / "models").exists()
