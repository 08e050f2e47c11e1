"""The layer rule of docs/ARCHITECTURE.md, checked on the source: every module imports, no module imports
a layer above its own (function-level imports included), and no package imports back into one that
imports it."""

import ast
import importlib
import pkgutil
from pathlib import Path

import tunelab

# Bottom to top; a unit (a top-level module or package of tunelab) may import its own layer and those below.
LAYERS = [
    {"errors", "quiet", "report_page", "options", "processes"},
    {"data", "models", "run_dir"},
    {"ops"},
    {"methods"},
    {"objectives"},
    {"training"},
    {"inference"},
    {"evaluation"},
    {"graders"},
    {"compare", "sweep", "service", "export", "compress"},
    {"demo", "cli", "__init__"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}
ROOT = Path(tunelab.__file__).parent


def all_modules() -> list[str]:
    """Every module but `__main__` (importing it runs the CLI)."""
    names = [info.name for info in pkgutil.walk_packages([str(ROOT)], prefix="tunelab.")]
    return ["tunelab", *(name for name in names if not name.endswith("__main__"))]


def source_of(module: str) -> Path:
    parts = module.split(".")[1:]
    folder = ROOT.joinpath(*parts)
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(module: str, known: set[str]) -> set[str]:
    """Every tunelab module `module` imports, at any depth of its code (functions included)."""
    is_package = source_of(module).name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source_of(module).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import adapter` imports the module tunelab.methods.adapter
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {module: imported_modules(module, known) for module in modules}


def test_every_module_imports():
    for module in all_modules():
        importlib.import_module(module)


def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in all_modules()}
    assert units - LAYER_OF.keys() == set(), "add the new module or package to LAYERS"


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if LAYER_OF[unit_of(target)] > LAYER_OF[unit_of(module)]
    ]
    assert upward == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target] if target in path else [node, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycle_between_units():
    units: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        units.setdefault(unit_of(module), set()).update(
            unit_of(target) for target in targets if unit_of(target) != unit_of(module)
        )
    assert find_cycle(units) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
