"""Command exps: `dvc exp show` narrowed to the columns that tell the experiments apart.

`python -m commands.exps` (or `make exps`) runs `dvc exp show` with:
  --only-changed  only the params (and other columns) whose values differ between the rows;
  --keep          ... but every headline figure, always: the keys of the DVC metrics files
                  (vae_pipeline/artifacts.py METRICS_FILES; the per-class and per-dimension
                  detail is in a plain output, paths.eval_detail, not a metric);
  --drop          never a dependency's hash (each code file, data folder and model of dvc.yaml:
                  `dvc status` says which changed), the Created time, nor a param that changes
                  the speed only (vae_pipeline/params.py SPEED_ONLY).
DVC has no setting for the columns `dvc exp show` shows by default, hence this command.
Its own arguments go to `dvc exp show`: `python -m commands.exps -A`, `... --csv`, `... -n 5`.

A row shows only the figures its experiment made. The metrics files are in git, so an experiment
that ran some stages only (a sweep point runs `train`) carries the others' files as its baseline
left them, and `dvc exp show` would show those figures as its own. Here a metrics file counts for
a row when the stage that writes it ran on that row's params and on the outputs its upstream
stages recorded there (the row's dvc.lock, compared as `dvc status` compares it); otherwise its
cells are "-", as for a figure the row lacks.
"""
import os
import re
import sys
from pathlib import Path

import yaml

from vae_pipeline.errors import PipelineError, exit_code
from vae_pipeline.files import ROOT
from vae_pipeline.outputs import METRICS_FILES
from vae_pipeline.params import SPEED_ONLY

# The experiment's name tells the rows apart (`dvc exp show` has the times); a param that changes
# only the speed (a sweep's points run on 1 thread each) tells nothing about the results.
DROPPED = ["Created", *SPEED_ONLY]


def dependencies(project=ROOT) -> list[str]:
    """The paths of the dependencies of dvc.yaml's stages (params aside), as `dvc exp show` names them."""
    from dvc.dependency import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo  # imported here: DVC's import takes a second

    try:
        with Repo(str(project)) as repo:
            return sorted({os.path.relpath(dep.fs_path, repo.root_dir) for stage in repo.index.stages
                           for dep in stage.deps if not isinstance(dep, ParamsDependency)})
    except DvcException as e:
        raise PipelineError(f"{project / 'dvc.yaml'}: DVC cannot read the stages ({e}); fix it, then rerun") from None


def whole(names) -> str:
    """A regex that `re.match` finds in exactly these column names (as `--drop`/`--keep` apply it)."""
    return "(" + "|".join(re.escape(name) for name in names) + ")$"


def show_args(project=ROOT) -> list[str]:
    """The arguments of `dvc exp show` for the narrow view."""
    headline = sorted({key for schema in METRICS_FILES.values() for key in schema})
    # A metric name in two files is shown as <file>:<name>: keep it under either header.
    return ["--only-changed", "--keep", "([^:]*:)?" + whole(headline),
            "--drop", whole(dependencies(project) + DROPPED)]


def lookup(params: dict, key: str):
    """params.yaml's value at a dotted key (None if absent)."""
    for part in key.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


def own_outputs(lock: dict, params: dict[str, dict]) -> set[str]:
    """The outputs (paths, as dvc.lock names them) of the stages in `lock` that ran on `params`
    ({params file: its values}) and on what their upstream stages' entries record, and whose
    upstream stages did so too."""
    stages = lock.get("stages") or {}
    writer = {out["path"]: (name, out.get("md5")) for name, entry in stages.items() for out in entry.get("outs", [])}
    verdicts: dict[str, bool] = {}

    def own(name: str) -> bool:
        if name not in verdicts:
            entry, verdicts[name] = stages[name], False          # (no cycle in a DAG)
            same_params = all(lookup(params.get(file) or {}, key) == value
                              for file, values in (entry.get("params") or {}).items()
                              for key, value in values.items())
            same_inputs = all(dep.get("md5") == writer[dep["path"]][1] and own(writer[dep["path"]][0])
                              for dep in entry.get("deps", []) if dep["path"] in writer)
            verdicts[name] = same_params and same_inputs
        return verdicts[name]

    return {path for path, (name, _) in writer.items() if own(name)}


def lock_of(repo, rev: str) -> dict:
    """dvc.lock of the workspace or of commit `rev` ({} when there is none)."""
    try:
        text = (Path(repo.root_dir, "dvc.lock").read_text() if rev == "workspace"
                else repo.scm.get_fs(rev).read_text("dvc.lock"))
    except (OSError, FileNotFoundError):
        return {}
    return yaml.safe_load(text) or {}


def own_figures(repo, states: list) -> list:
    """`dvc exp show`'s rows (baselines and their experiments) without the metrics files a row's
    experiment did not make (own_outputs)."""
    rows = [row for state in states for row in [state, *(r for exp in state.experiments or [] for r in exp.revs)]]
    for row in rows:
        if row.data is None:
            continue
        params = {file: result.get("data") or {} for file, result in row.data.params.items()}
        own = own_outputs(lock_of(repo, row.rev), params)
        for file in [f for f in row.data.metrics if Path(f).as_posix() not in own]:
            del row.data.metrics[file]
    return states


def main(argv: list[str]) -> int:
    from dvc.cli import main as dvc
    from dvc.repo.experiments import Experiments

    # DVC's own `exp show`, every option of it, with the rows' figures narrowed first: DVC has no hook
    # between collecting the experiments and drawing the table, so its collecting method is wrapped.
    collect = Experiments.show
    Experiments.show = lambda self, *args, **kwargs: own_figures(self.repo, collect(self, *args, **kwargs))
    return dvc(["exp", "show", *show_args(), *argv])


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
