"""The layers hold: what each package may import, no import circle, no module over 350 lines.

The map is docs/architecture.md; LAYERS below is the same map as a rule. The core
(vae_pipeline) never imports a stage, a flow, a command or the stack; stages and flows never
import each other (flows run stages through DVC); the ML code imports no MLflow, Prefect or
DVC; the decoder MLflow serves (tracking/decoder_pyfunc.py) imports nothing of the project (it is
loaded without it).
"""
import ast

import pytest

from tests.unit.code_graph import import_graph, packages, project_modules
from vae_pipeline.files import ROOT

# Each layer: the project's layers it may import (besides itself). A module belongs to the most
# specific layer that names it (vae_pipeline.ml.data -> vae_pipeline.ml).
LAYERS = {
    "vae_pipeline": set(),            # the package itself (an empty __init__); a module left out of
                                      # the layers below lands here, where it may import nothing
    "vae_pipeline.errors": set(),
    "vae_pipeline.environment": set(),
    "vae_pipeline.files": {"vae_pipeline.errors"},
    "vae_pipeline.params": {"vae_pipeline.errors", "vae_pipeline.files"},
    "vae_pipeline.settings": {"vae_pipeline.params"},
    "vae_pipeline.provenance": {"vae_pipeline.files", "vae_pipeline.params"},
    "vae_pipeline.ml": {"vae_pipeline.errors", "vae_pipeline.files", "vae_pipeline.params"},
    "vae_pipeline.outputs": {"vae_pipeline.errors", "vae_pipeline.params"},
    "vae_pipeline.tracking": {"vae_pipeline.errors", "vae_pipeline.files", "vae_pipeline.params",
                              "vae_pipeline.provenance", "vae_pipeline.ml", "vae_pipeline.tracking.decoder_pyfunc"},
    "vae_pipeline.tracking.decoder_pyfunc": set(),    # the registered model's code: loads without the project
    "vae_pipeline.pages": {"vae_pipeline.files"},
    "vae_pipeline.report": {"vae_pipeline.errors", "vae_pipeline.ml"},
    "stages": {"vae_pipeline"},
    "flows": {"vae_pipeline"},
    "stack": {"vae_pipeline"},
    "commands": {"vae_pipeline", "flows", "stack"},
    "benchmarks": {"vae_pipeline", "stages", "flows", "commands", "stack"},
}
# Libraries a layer must not import: the ML code runs without the tools around it; the stages and
# the core are no Prefect code (a flow runs them through DVC, in a process of their own).
FORBIDDEN = {
    "vae_pipeline.ml": {"mlflow", "prefect", "dvc", "dask", "distributed"},
    "vae_pipeline": {"prefect", "prefect_dask", "dask", "distributed", "dvc"},
    "stages": {"prefect", "prefect_dask", "dask", "distributed", "dvc"},
}
MAX_LINES = 350
GRAPH = import_graph(ROOT)


def layer(module: str) -> str:
    """The layer of `module`: the longest key of LAYERS it is or lies in."""
    found = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    assert found, f"{module} is in no layer: add its package to LAYERS (and to docs/architecture.md)"
    return max(found, key=len)


def allowed(source: str, target: str) -> bool:
    here, there = layer(source), layer(target)
    return here == there or any(there == name or there.startswith(name + ".") for name in LAYERS[here])


def test_every_package_is_in_a_layer():
    assert packages(ROOT) - {"tests"} == {name.split(".")[0] for name in LAYERS}
    for module in GRAPH:
        if not module.startswith("tests"):
            layer(module)


def test_each_module_imports_only_what_its_layer_may():
    wrong = [f"{source} imports {target} ({layer(source)} may import {sorted(LAYERS[layer(source)]) or 'nothing'})"
             for source, targets in sorted(GRAPH.items()) if not source.startswith("tests")
             for target in sorted(targets) if not allowed(source, target)]
    assert not wrong, "\n".join(wrong)


def third_party(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("prefix", sorted(FORBIDDEN))
def test_no_layer_imports_a_library_it_must_not(prefix):
    wrong = [f"{name} imports {sorted(third_party(path) & FORBIDDEN[prefix])}"
             for name, path in sorted(project_modules(ROOT).items())
             if (name == prefix or name.startswith(prefix + ".")) and third_party(path) & FORBIDDEN[prefix]]
    assert not wrong, "\n".join(wrong)


def circles(graph: dict[str, set[str]]) -> list[str]:
    """Depth-first search over the module graph (lazy imports too): each back edge closes a circle."""
    state, found = {}, []

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_no_import_circle():
    assert not circles(GRAPH), "import circles:\n" + "\n".join(circles(GRAPH))


def test_the_checks_see_a_circle_and_a_wrong_import():
    """The checks themselves: a circle, a stage importing a flow, the ML code importing tracking."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert not allowed("stages.train", "flows.pipeline")
    assert not allowed("vae_pipeline.ml.model", "vae_pipeline.tracking.store")
    assert allowed("flows.pipeline", "vae_pipeline.tracking.store")


def test_no_module_is_over_350_lines():
    long = {str(path.relative_to(ROOT)): n for name, path in project_modules(ROOT).items()
            if not name.startswith("tests") and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
