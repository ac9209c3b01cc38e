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
"""
import os
import re
import sys

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


def main(argv: list[str]) -> None:
    command = [sys.executable, "-m", "dvc", "exp", "show", *show_args(), *argv]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(sys.argv[1:])))
