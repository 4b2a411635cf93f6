"""No import cycles in `llava` and `fastv`: the module graph, read from every import statement of every
module (at the top or inside a function: a lazy import is still a dependency), has no cycle.

`import a.b.c` and `from a.b import c` depend on the module `a.b.c` (or on `a.b` where `c` is a name in it);
a package's `__init__` is a module like the others. Parents are not counted as dependencies of their
submodules (importing `a.b.c` runs `a/__init__` and `a/b/__init__`, which are separate nodes here when
they import something themselves).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("llava", "fastv")


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under `root`."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from a.b import name`: the module is a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
    return deps


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle_in_llava_and_fastv():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_llava_never_imports_fastv():
    graph = import_graph(ROOT)
    offenders = sorted(name for name, deps in graph.items() if name.startswith("llava") and
                       any(dep.startswith("fastv") for dep in deps))
    assert not offenders, f"llava modules importing fastv: {offenders}"


def test_a_cycle_is_found_in_a_small_fake_package(tmp_path):
    """The walker sees a cycle through a lazy, relative import and through `from package import module`."""
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from fakepkg.sub import command\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "command.py").write_text("def run():\n    from ..cli import helper\n")
    (pkg / "helpers.py").write_text("x = 1\n")
    graph = import_graph(tmp_path, ("fakepkg",))
    assert graph["fakepkg.cli"] == {"fakepkg.sub", "fakepkg.sub.command"}
    assert graph["fakepkg.sub.command"] == {"fakepkg.cli"}
    assert find_cycle(graph) == ["fakepkg.cli", "fakepkg.sub.command", "fakepkg.cli"]

    (pkg / "sub" / "command.py").write_text("def run():\n    from ..helpers import x\n")  # the helper moved below
    assert find_cycle(import_graph(tmp_path, ("fakepkg",))) is None
