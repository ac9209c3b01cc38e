"""The recipes (recipes/*.yaml, flows/recipe.py): each is checked by the typed settings before anything
runs, a bad one stops with its file and key named, and each has its line in docs/recipes.md."""
import re

import pytest

from flows import recipe
from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.files import ROOT
from vae_pipeline.ml.evaluation import compare
from vae_pipeline.params import load_params

NAMES = recipe.recipe_names()


def test_there_are_the_article_the_papers_vae_and_one_more():
    assert {"article", "iwae-paper-vae"} < set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_keeps_the_rules_of_params_yaml(name):
    overrides, path = recipe.read_recipe(name)
    settings = recipe.checked(overrides, path)
    for key, value in recipe.flatten(overrides).items():
        section, field = key.split(".")
        assert getattr(getattr(settings, section), field) == value


def test_the_article_recipe_is_the_default_pipeline():
    overrides, path = recipe.read_recipe("article")
    assert overrides == {}
    assert recipe.command("article", overrides, []) == ["dvc", "exp", "run", "-n", "recipe-article"]
    assert recipe.checked(overrides, path).train == load_params().train


def test_the_papers_recipe_is_the_papers_vae_measured_as_the_paper_does():
    settings = recipe.checked(*recipe.read_recipe("iwae-paper-vae"))
    t = settings.train
    assert (t.hidden_dims, t.latent_dim, t.activation, t.objective, t.batch_size, t.lr_schedule) == \
        ([200, 200], 50, "tanh", "elbo", 20, "burda")
    assert settings.data.binarize == "dynamic" and settings.evaluate.iwae_samples == 5000


def test_a_recipe_becomes_the_set_params_of_one_named_experiment():
    overrides = {"train": {"hidden_dims": [200, 200], "activation": "tanh", "max_minutes": None, "lr": 0.001},
                 "data": {"binarize": "dynamic"}}
    assert recipe.command("x", overrides, ["--queue"]) == [
        "dvc", "exp", "run", "-n", "recipe-x", "-S", "train.hidden_dims=[200,200]", "-S", "train.activation='tanh'",
        "-S", "train.max_minutes=null", "-S", "train.lr=0.001", "-S", "data.binarize='dynamic'", "--queue"]


def test_an_unknown_key_stops_the_recipe_naming_its_file_and_the_key(tmp_path, monkeypatch, capsys):
    (tmp_path / "typo.yaml").write_text("train:\n  epoch: 30\n  activation: tanh\n")
    monkeypatch.setattr(recipe, "RECIPES_DIR", tmp_path)
    assert exit_code(lambda: recipe.main(["typo"])) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'typo.yaml'}: invalid params:")
    assert "unknown key 'train.epoch' (allowed: " in error and error.count("\n") == 2   # that key alone


@pytest.mark.parametrize("text, message", [
    ("train: [1, 2]\n", "expected sections of params.yaml"),
    ("train:\n  lr: -1\n", "'train.lr' is -1; allowed: a number > 0"),
    ("training:\n  lr: 0.1\n", "unknown section 'training'"),
    ("train: {epochs: [\n", "not valid YAML"),
])
def test_a_bad_recipe_is_refused_before_anything_runs(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(PipelineError, match=re.escape(message)):
        recipe.checked(*recipe.read_recipe("bad", tmp_path))


def test_an_unknown_recipe_lists_the_recipes(capsys):
    assert exit_code(lambda: recipe.main(["no-such-recipe"])) == 2
    assert f"the recipes: {', '.join(NAMES)}" in capsys.readouterr().err


def test_each_recipe_has_its_line_in_docs_recipes_md():
    docs = (ROOT / "docs" / "recipes.md").read_text()
    listed = re.findall(r"^\| `([\w-]+)` \|", docs, re.MULTILINE)
    assert listed == NAMES


def test_the_papers_recipe_sits_beside_the_papers_rows_in_the_literature_table():
    """Same data treatment and estimator: comparable; of the recipe only the shortened epochs differ."""
    settings = recipe.checked(*recipe.read_recipe("iwae-paper-vae"))
    vae, iwae = [row for row in compare(settings.data, settings.train, settings.evaluate, {"iwae_nll": 88.0,
                                                                                           "neg_elbo": 95.0})
                 if row["reference"].startswith("Burda")]
    assert vae["comparable"] and vae["this_run"] == 88.0 and vae["reference_value"] == 86.76
    assert vae["differences"] == [f"epochs: {settings.train.epochs} here, 3280 there"]
    assert iwae["comparable"] and "objective: ELBO here, IWAE bound, k = 50 there" in iwae["differences"]
    iwae_train = settings.train.model_copy(update={"objective": "iwae", "iwae_k": 50, "epochs": 3280})
    assert compare(settings.data, iwae_train, settings.evaluate, {"iwae_nll": 85.0, "neg_elbo": 90.0})[2]["same_recipe"]
