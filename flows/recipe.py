"""`python -m flows.recipe NAME [DVC ARGS...]` (`make run RECIPE=NAME`): a named parameter set as a DVC experiment.

A recipe is recipes/NAME.yaml: params.yaml overrides, section by section (docs/recipes.md lists them
and what each reached). It runs as

    dvc exp run -n recipe-NAME -S section.key=value ...   [DVC ARGS, e.g. --queue or --temp]

so params.yaml is never edited by hand: DVC sets the values for the experiment (in the workspace, as
`dvc exp run -S` does; `git checkout params.yaml` returns to the committed ones), records it as the
experiment recipe-NAME (`make exps`, `dvc exp show`), and its training is an MLflow run of its own.
Before anything runs, params.yaml with the recipe applied is checked by the typed settings
(vae_pipeline/settings.py): an unknown or wrong key stops it with the recipe file and the key named.
"""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from vae_pipeline.errors import PipelineError
from vae_pipeline.files import ROOT
from vae_pipeline.params import read_params, validate
from vae_pipeline.settings import Settings

RECIPES_DIR = ROOT / "recipes"
EXPERIMENT_PREFIX = "recipe-"       # the DVC experiment of recipe NAME is recipe-NAME


def recipe_names(folder: Path | None = None) -> list[str]:
    return sorted(path.stem for path in (folder or RECIPES_DIR).glob("*.yaml"))


def read_recipe(name: str, folder: Path | None = None) -> tuple[dict, Path]:
    """The overrides of recipe `name` as written, {section: {key: value}}, and its file."""
    folder = folder or RECIPES_DIR
    path = folder / f"{name}.yaml"
    if "/" in name or not path.is_file():
        raise PipelineError(f"no recipe '{name}' in {folder}; the recipes: {', '.join(recipe_names(folder))} "
                            "(python -m flows.recipe NAME)")
    try:
        overrides = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise PipelineError(f"{path}: expected sections of params.yaml, each a mapping of keys to values "
                            "(train: {epochs: 30})")
    return overrides, path


def flatten(overrides: dict) -> dict:
    """{section: {key: value}} as {"section.key": value}."""
    return {f"{section}.{key}": value for section, keys in overrides.items() for key, value in keys.items()}


def checked(overrides: dict, path: Path, params_file: Path | None = None) -> Settings:
    """params.yaml with the recipe's overrides, checked: every error names the recipe file and the key."""
    params, source = read_params(params_file)
    validate(params, Settings, source)               # params.yaml's own errors under its own name
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in params.items()}
    for section, keys in overrides.items():
        if section not in merged:
            merged[section] = {}
        merged[section].update(keys)
    return validate(merged, Settings, str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))


def set_param(key: str, value) -> str:
    """KEY=VALUE as `dvc exp run -S` reads it (Hydra's override grammar): strings quoted, the rest as JSON
    (lists, numbers, true/false, null)."""
    if isinstance(value, str):
        return f"{key}='{value}'"
    return f"{key}={json.dumps(value, separators=(',', ':'))}"


def command(name: str, overrides: dict, dvc_args: list[str]) -> list[str]:
    sets = [arg for key, value in flatten(overrides).items() for arg in ("-S", set_param(key, value))]
    return ["dvc", "exp", "run", "-n", EXPERIMENT_PREFIX + name, *sets, *dvc_args]


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise PipelineError(f"usage: python -m flows.recipe NAME [dvc exp run args]; the recipes: "
                            f"{', '.join(recipe_names())}")
    name, dvc_args = argv[0], argv[1:]
    overrides, path = read_recipe(name)
    checked(overrides, path)
    cmd = command(name, overrides, dvc_args)
    print(shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    from vae_pipeline.errors import exit_code

    sys.exit(exit_code(lambda: main(sys.argv[1:])))   # DVC's exit code, or 2 with one line for a bad recipe
