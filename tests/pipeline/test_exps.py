"""`make exps` (commands/exps.py): the experiments table fits a 120-column terminal.

The DVC metrics files hold the headline figures only (vae_pipeline/outputs.py
METRICS_FILES; the rest is in the detail files, plain outputs); the view adds the params
that differ and drops the dependencies. Two points of the sweep's grid (flows/sweep.py
grid: the widest values and the narrowest), saved as experiments with names as `dvc exp
run` gives them, must show every headline figure and every varied param in 120 columns
exactly as in a terminal without a limit: no column cut, wrapped or folded into "…".
"""
import csv
import io
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from flows.sweep import exp_name, grid
from tests.conftest import copy_project, downstream, run_in, set_params
from vae_pipeline.files import ROOT
from vae_pipeline.outputs import METRICS_FILES
from vae_pipeline.params import SPEED_ONLY
from vae_pipeline.settings import load_settings

WIDTH = 120


def test_the_metrics_files_are_dvc_yamls_and_hold_the_headline_figures():
    """METRICS_FILES names exactly dvc.yaml's metrics, and the committed files hold exactly their keys."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {next(iter(entry)) if isinstance(entry, dict) else entry
                for stage in stages.values() for entry in stage.get("metrics", [])}
    resolved = {re.sub(r"\$\{paths\.(\w+)\}", lambda m: params["paths"][m.group(1)], path) for path in declared}
    assert resolved == {params["paths"][key] for key in METRICS_FILES}
    for key, schema in METRICS_FILES.items():
        committed = json.loads((ROOT / params["paths"][key]).read_text())
        assert committed.keys() == schema.keys(), params["paths"][key]


def stand_in_outputs(project) -> None:
    """A stand-in for every output of dvc.yaml that is missing (`dvc exp save` commits them all);
    the table shows none of them."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        paths = [Path(out.fs_path) for stage in repo.index.stages for out in stage.outs]
    for path in paths:
        if not path.exists():
            target = path / "stand-in" if not path.suffix else path    # a folder output, or a file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("stand-in\n")


def save_experiment(project, name: str, point: dict, scale: float) -> None:
    """An experiment of `point` (params section.key -> value) whose metrics are the committed ones
    times `scale`, saved as `dvc exp run` would leave it (without running anything)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    sections = {}
    for key, value in point.items():
        section, name_ = key.split(".")
        sections.setdefault(section, {})[name_] = value
    set_params(project, **sections)
    for key in METRICS_FILES:
        path = project / params["paths"][key]
        figures = json.loads(path.read_text())
        path.write_text(json.dumps({k: v * scale if isinstance(v, float) else v for k, v in figures.items()}))
    run_in(project, "dvc", "exp", "save", "-n", name, "-f")
    run_in(project, "git", "checkout", "--", ".")


@pytest.mark.slow
def test_the_experiments_table_fits_120_columns(project):
    # The project's own params (the tiny config's are no baseline of a real sweep); nothing runs.
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    run_in(project, "git", "commit", "-qam", "the project's params")
    params = yaml.safe_load((project / "params.yaml").read_text())
    # Two points of the sweep's grid, as `make sweep` sets them: the widest values and the narrowest.
    by_width = sorted(grid(load_settings(project / "params.yaml").sweep), key=lambda point: len(str(point)))
    points = [by_width[-1], by_width[0]]
    from dvc.repo.experiments.utils import gen_random_name  # the names `dvc exp run` gives

    stand_in_outputs(project)
    for i, point in enumerate(points):
        save_experiment(project, gen_random_name(), point, scale=1.0 - 0.0123457 * (i + 1))

    def view(columns: int) -> str:
        return run_in(project, "python", "-m", "commands.exps", "--no-pager", env={"COLUMNS": str(columns)}).stdout

    narrow, wide = view(WIDTH), view(1000)
    assert max(map(len, narrow.splitlines())) <= WIDTH, narrow
    assert narrow == wide, f"cut to fit {WIDTH} columns:\n{narrow}\nuncut:\n{wide}"
    header = next(line for line in narrow.splitlines() if "Experiment" in line).split()
    headline = {key for schema in METRICS_FILES.values() for key in schema}
    varied = {key for key in points[0] if key not in SPEED_ONLY
              and len({str(p[key]) for p in points} | {str(params[key.split(".")[0]][key.split(".")[1]])}) > 1}
    assert headline <= set(header), header
    assert varied and varied <= set(header), header
    assert len(narrow.splitlines()) == 6 + len(points)   # rule, header, rule, workspace, main, the points, rule


def metrics_of_stages(project) -> dict[str, list[str]]:
    """{stage: the DVC metrics files it writes}, from DVC's own index."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {stage.name: [os.path.relpath(out.fs_path, repo.root_dir) for out in stage.outs if out.metric]
                for stage in repo.index.stages}


@pytest.mark.slow
def test_a_sweep_points_row_shows_only_the_figures_it_made(built_project, tmp_path):
    """A sweep point runs sweep.stage only (`dvc exp run train -S ...`): its commit carries the
    downstream stages' metrics files as the baseline left them. Its row shows its own stage's figures
    and "-" for those, and the table, with the grid's longest experiment name, fits 120 columns."""
    project = copy_project(built_project, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    run_in(project, "git", "add", "dvc.lock", str(Path(params["paths"]["train_metrics"]).parent))
    run_in(project, "git", "commit", "-qm", "baseline run")            # as the README records a baseline
    # The shipped params.yaml sweeps train.epochs' epochs, so `make sweep` adds no epochs column: so here.
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert shipped["sweep"]["epochs"] == shipped["train"]["epochs"]
    settings = load_settings(project / "params.yaml").sweep.model_copy(update={"epochs": params["train"]["epochs"]})
    point = max(grid(settings), key=lambda p: len(exp_name(p)))
    name = exp_name(point)
    sets = [arg for key, value in point.items() for arg in ("-S", f"{key}={json.dumps(value)}")]
    ran = run_in(project, "dvc", "exp", "run", settings.stage, *sets, "--name", name).stdout
    assert re.findall(r"^Running stage '([^']+)'", ran, re.M) == [settings.stage], ran

    rows = {row["Experiment"] or row["rev"]: row for row in csv.DictReader(io.StringIO(
        run_in(project, "python", "-m", "commands.exps", "--csv").stdout))}
    written = metrics_of_stages(project)
    own = {key for path in written[settings.stage] for key in headline_keys(params, path)}
    others = {key for stage in downstream(settings.stage, project) if stage != settings.stage
              for path in written[stage] for key in headline_keys(params, path)}
    assert own and others
    assert all(rows[name][key] for key in own), rows[name]
    assert not any(rows[name][key] for key in others), rows[name]             # not the baseline's figures
    baseline = next(row for row in rows.values() if row["typ"] == "baseline" and row["rev"] != "workspace")
    assert all(baseline[key] for key in own | others), baseline

    table = run_in(project, "python", "-m", "commands.exps", "--no-pager", env={"COLUMNS": str(WIDTH)}).stdout
    wide = run_in(project, "python", "-m", "commands.exps", "--no-pager", env={"COLUMNS": "1000"}).stdout
    assert max(map(len, table.splitlines())) <= WIDTH and table == wide, f"{table}\nuncut:\n{wide}"
    assert name in table


def headline_keys(params: dict, path: str) -> set[str]:
    """The headline figures of the metrics file `path`, as `make exps` heads their columns."""
    return {key for file, schema in METRICS_FILES.items() if params["paths"][file] == path for key in schema}
