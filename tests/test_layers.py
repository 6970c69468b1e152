"""The package is layered: no module imports, directly or not, a module that imports it back,
and the model does not depend on the backbone adapters (the factories join the two)."""

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def module_name(path: Path) -> str:
    """``splathead/render/renderer.py -> splathead.render.renderer``; ``adapters/`` installs as
    ``splathead.adapters``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "adapters":
        parts.insert(0, "splathead")
    return ".".join(parts)


def library_imports() -> dict[str, set[str]]:
    """Each library module (package ``__init__`` files aside: they only re-export) and the
    library modules it imports at module level."""
    paths = [*ROOT.glob("splathead/**/*.py"), *ROOT.glob("adapters/*.py")]
    modules = {module_name(path): path for path in paths if path.name != "__init__.py"}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            imported |= {candidate for candidate in candidates if candidate in modules}
        graph[name] = imported
    return graph


def dependencies(graph: dict[str, set[str]], module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for imported in graph[todo.pop()] - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def test_no_module_imports_itself_through_others():
    graph = library_imports()
    assert "splathead.model" in graph and "splathead.adapters.wrap" in graph
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_model_does_not_depend_on_the_adapters():
    graph = library_imports()
    assert "splathead.adapters.wrap" in dependencies(graph, "splathead.factories")
    assert not {m for m in dependencies(graph, "splathead.model") if m.startswith("splathead.adapters")}


def test_adapters_import_only_foundations_of_the_library():
    graph = library_imports()
    allowed = {"splathead.typing", "splathead.patches", "splathead.masking", "splathead.encoder"}
    for module in (m for m in graph if m.startswith("splathead.adapters")):
        outside = {m for m in graph[module] if not m.startswith("splathead.adapters")}
        assert outside <= allowed, (module, outside - allowed)
