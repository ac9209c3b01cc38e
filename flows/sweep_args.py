"""A sweep's settings from the command line: `python -m flows.sweep -S KEY=VALUE ...`, as `dvc exp run -S`.

    python -m flows.sweep -S 'sweep.beta=[1,4]' -S 'sweep.latent_dim=[2]' -S sweep.epochs=1

Each VALUE is read as YAML (as DVC reads it: `[1,4]` is a list, `1` a number, `null` None) and
replaces that key of params.yaml for this sweep only; the result is checked by the typed settings
(vae_pipeline/settings.py) with the messages of a bad params.yaml, naming the -S that set it.
-S takes the operating sections only (OPERATING: those no stage reads, the sweep's own among them):
the points run the stages' params from the sweep's git commit, so those are changed in params.yaml
and committed. For the same reason, uncommitted changes to the operating sections of params.yaml do
not stop a sweep (flows/sweep_git.py sweep_commit), while any other uncommitted input does.
"""
import argparse
import json
from pathlib import Path

import yaml

from vae_pipeline.errors import PipelineError
from vae_pipeline.params import Pipeline, read_params, validate
from vae_pipeline.settings import Settings

# The sections of params.yaml that no stage reads (vae_pipeline/settings.py): the sweep reads them here.
OPERATING = tuple(section for section in Settings.model_fields if section not in Pipeline.model_fields)
EXAMPLE = "-S 'sweep.beta=[1,4]' -S sweep.epochs=1"


class Parser(argparse.ArgumentParser):
    def error(self, message):           # one line and exit 2, as every error of the project
        raise PipelineError(f"python -m flows.sweep: {message}; usage: python -m flows.sweep [-S KEY=VALUE ...], "
                            f"e.g. {EXAMPLE}")


def parse(argv: list[str]) -> list[str]:
    """The -S KEY=VALUE arguments of `argv`, as given."""
    parser = Parser(prog="python -m flows.sweep", description="Train the grid of params.yaml `sweep` on Dask "
                    "(docs/sweeps.md). -S sets a key of an operating section for this sweep, as `dvc exp run -S`.")
    parser.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a key of {', '.join(OPERATING)}; VALUE read as YAML, e.g. {EXAMPLE}")
    return parser.parse_args(argv).sets


def overrides(sets: list[str]) -> dict:
    """{dotted key: value} of the -S arguments, each value read as YAML; the later of two wins."""
    found = {}
    for text in sets:
        key, equals, value = text.partition("=")
        if not equals or "." not in key.strip(".") or not key.strip():
            raise PipelineError(f"-S {text}: expected KEY=VALUE with KEY as section.key, e.g. {EXAMPLE}")
        try:
            found[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise PipelineError(f"-S {text}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return found


def with_overrides(params: dict, source: str, changes: dict) -> Settings:
    """`params` with `changes` applied, checked one change at a time (an error names its -S)."""
    params = yaml.safe_load(yaml.safe_dump(params))            # a copy, plain YAML types
    checked = validate(params, Settings, source)
    for key, value in changes.items():
        section, *path, last = key.split(".")
        if section in Pipeline.model_fields:
            raise PipelineError(f"-S {key}: section '{section}' is read by the stages, which the points run from "
                                f"the sweep's git commit; set it in params.yaml and `git commit` it (-S takes "
                                f"{', '.join(OPERATING)})")
        values = params.setdefault(section, {})
        for step in path:
            values = values.setdefault(step, {}) if isinstance(values, dict) else values
        if not isinstance(values, dict):
            raise PipelineError(f"-S {key}: '{key.rsplit('.', 1)[0]}' is no section of params.yaml")
        values[last] = value
        checked = validate(params, Settings, f"-S {key}={json.dumps(value)}")
    return checked


def sweep_settings(project: Path, changes: dict | None = None) -> Settings:
    """params.yaml of `project` with the sweep's -S changes, checked."""
    params, source = read_params(project / "params.yaml")
    return with_overrides(params, source, changes or {})
