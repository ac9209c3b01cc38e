"""dvc.yaml cannot drift from the code: each stage's code deps are exactly the files its command runs.

For every stage, its `cmd` (`python -m stages.NAME`) names the module it runs. The
test follows that module's imports (every `import` and `from ... import`, inside
functions too: code a stage may run is code it depends on) through the project's
own packages, and derives the files the stage needs:
  - every project module it imports, directly or not;
  - a package's __init__.py when it holds code (a docstring alone runs nothing);
  - a package's data folder (a folder in a package that is not a package itself,
    e.g. vae_pipeline/report/templates) when the stage's modules name both the package and the
    folder in strings, as `PackageLoader("vae_pipeline.report", "templates")` does.
The deps of dvc.yaml that lie inside a project package must be exactly those: a
missing one means a change to that file would not rerun the stage, an extra one
reruns it for nothing. Everything else in `deps` (data, models, metrics) is the
DAG's business, not this test's. dvc.yaml and the imports are read at test
time, so the test follows modules as they move.
"""
import ast
import re
from collections import deque
from pathlib import Path

import pytest
import yaml

from tests.unit.code_graph import imported_modules, module_file, packages, runs_code
from vae_pipeline.files import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def data_folders(root: Path) -> dict[tuple[str, str], Path]:
    """Folders inside the project's packages that are not packages: their data,
    {(package as a dotted name, folder name): folder}."""
    found = {}
    for top in packages(root):
        for init in (root / top).glob("**/__init__.py"):
            package = init.parent
            for folder in package.iterdir():
                if folder.is_dir() and folder.name != "__pycache__" and not (folder / "__init__.py").exists():
                    found[(".".join(package.relative_to(root).parts), folder.name)] = folder
    return found


def strings(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def code_deps(root: Path, entry: str) -> dict[str, list[str]]:
    """The project files `python -m <entry>` needs: {file relative to root: the import chain to it}."""
    start = module_file(root, entry)
    assert start is not None, f"module {entry} is not a file of the project"
    chains = {start: [start]}
    queue = deque([start])
    while queue:
        path = queue.popleft()
        for name in sorted(imported_modules(root, path)):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            for depth in range(1, len(parts) + 1):
                found = module_file(root, ".".join(parts[:depth]))
                if found is not None and found not in chains:
                    chains[found] = chains[path] + [found]
                    queue.append(found)
    needed = {p: chain for p, chain in chains.items() if p.name != "__init__.py" or runs_code(p)}
    # A package's data folder is read when the stage's code names both the package and the folder,
    # as `PackageLoader("vae_pipeline.pages", "templates")` does (the two may be in different modules).
    named = {path: strings(path) for path in chains}
    everything = set().union(*named.values())
    for (package, name), folder in data_folders(root).items():
        if name in everything and package in everything:
            naming = next(path for path, found in named.items() if package in found)
            needed.setdefault(folder, chains[naming] + [folder])
    return {str(p.relative_to(root)): [str(c.relative_to(root)) for c in chain] for p, chain in needed.items()}


def listed_code_deps(root: Path, deps: list) -> set[str]:
    """The deps of a stage that lie in a project package (normalised); the rest are data."""
    listed = set()
    for dep in deps:
        dep = str(dep).strip()
        if "${" in dep:  # paths from params.yaml: outputs and inputs, never code
            continue
        dep = dep.removeprefix("./").rstrip("/")
        if Path(dep).parts[0] in packages(root):
            listed.add(dep)
    return listed


def drift(root: Path, stages: dict) -> list[str]:
    """One line per stage dep that is missing from dvc.yaml or listed there without reason."""
    problems = []
    for stage, spec in stages.items():
        command = re.fullmatch(r"python -m ([\w.]+)", spec["cmd"].strip())
        if command is None:
            problems.append(f"stage '{stage}': cmd {spec['cmd']!r} is not `python -m MODULE`; "
                            "this test cannot tell which code it runs")
            continue
        needed = code_deps(root, command[1])
        listed = listed_code_deps(root, spec.get("deps", []))
        for path in sorted(needed.keys() - listed):
            problems.append(f"stage '{stage}': dvc.yaml lacks dep {path} "
                            f"(`{spec['cmd']}` reaches it: {' -> '.join(needed[path])})")
        for path in sorted(listed - needed.keys()):
            problems.append(f"stage '{stage}': dvc.yaml lists dep {path}, "
                            f"but `{spec['cmd']}` never imports or reads it; remove it")
    return problems


def test_every_stage_lists_exactly_the_code_it_runs():
    problems = drift(ROOT, STAGES)
    assert not problems, "dvc.yaml deps differ from the code:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_removed_or_stray_dep_is_named(stage):
    """The check itself: dropping a real dep, or adding one the stage never reads, is reported."""
    spec = STAGES[stage]
    code = sorted(listed_code_deps(ROOT, spec["deps"]))
    removed = code[-1]
    damaged = {stage: {**spec, "deps": [d for d in spec["deps"] if d != removed] + ["flows/pipeline.py"]}}
    problems = drift(ROOT, damaged)
    assert f"stage '{stage}': dvc.yaml lacks dep {removed} (`{spec['cmd']}` reaches it: " in "\n".join(problems)
    assert f"stage '{stage}': dvc.yaml lists dep flows/pipeline.py, but `{spec['cmd']}` never imports" \
        in "\n".join(problems)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_has_an_output_in_dvcs_cache_so_a_fresh_clone_runs_it(stage):
    # A stage whose outputs are all in git is "up to date" in a fresh clone once its deps are made
    # again byte for byte: it would never run there, and what it does beside its files (the train
    # stage's MLflow run, the evaluate stage's registered version: the first champion) would not happen.
    outs = [entry for key in ("outs", "metrics", "plots") for entry in STAGES[stage].get(key, [])]
    cached = [out for out in outs if isinstance(out, str) or next(iter(out.values())).get("cache", True)]
    assert cached, f"stage '{stage}': every output has `cache: false` (in git); give one to DVC's cache"
