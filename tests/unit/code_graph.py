"""The project's import graph, read from its source: which project modules each module imports.

Every `import` and `from ... import` counts, inside functions too (code a module may run is
code it depends on). Used by tests/unit/test_dvc_yaml.py (each stage's code deps) and
tests/unit/test_layers.py (what each package may import, and no import circle), and
tests/unit/test_facts_once.py.
"""
import ast
from pathlib import Path


def packages(root: Path) -> set[str]:
    """The project's top-level Python packages: folders holding an __init__.py."""
    return {p.parent.name for p in root.glob("*/__init__.py")}


def module_file(root: Path, name: str) -> Path | None:
    """The file of module `name` (a.b.c) inside the project, or None for a module from elsewhere."""
    parts = name.split(".")
    if parts[0] not in packages(root):
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module name that `path` imports anywhere in its code (resolved, not filtered)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(root, path) if path.name == "__init__.py" else module_name(root, path).rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            # `from package import module` imports a module; `from module import name` does not.
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def runs_code(path: Path) -> bool:
    """Whether a module's body holds more than its docstring."""
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of the project's packages: {dotted name: file}."""
    return {module_name(root, path): path for package in packages(root)
            for path in (root / package).rglob("*.py")}


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the project modules it imports}, each import resolved to the module that holds it
    (`from vae_pipeline.tracking import store` imports vae_pipeline.tracking.store)."""
    modules = project_modules(root)
    graph = {}
    for name, path in modules.items():
        found = set()
        for imported in imported_modules(root, path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            # An empty package __init__ (`from vae_pipeline import pages` runs it) runs nothing.
            if imported and imported != name and (modules[imported].name != "__init__.py"
                                                  or runs_code(modules[imported])):
                found.add(imported)
        graph[name] = found
    return graph
