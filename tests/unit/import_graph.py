"""The repository's import graph, read with `ast` (nothing is imported): which module imports which, floors, cycles.

Every `import` counts, also the lazy ones inside functions (they run too, only later); imports under
`if TYPE_CHECKING:` do not (they never run). Floors (docs/design.md): the foundation `swarm` (0), the services
`swarm_*` (1), the launcher `swarm_launcher` (2); an import may only go to the same floor or a lower one.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Folders that hold top-level packages (pyproject.toml's packages.find `where`).
PACKAGE_ROOTS = (".", "services/coordinator", "services/dataset", "services/trainer", "services/bootstrap-dht",
                 "launcher")
FOUNDATION, SERVICES, LAUNCHER = 0, 1, 2
FLOOR_NAMES = {FOUNDATION: "foundation", SERVICES: "service", LAUNCHER: "launcher"}
MAX_MODULE_LINES = 400


def floor_of(module: str) -> int | None:
    """The floor of one of our modules by its top package; None for anything else (stdlib, third party)."""
    top = module.split(".")[0]
    if top == "swarm":
        return FOUNDATION
    if top == "swarm_launcher":
        return LAUNCHER
    if top.startswith("swarm_"):
        return SERVICES
    return None


def is_generated(path: Path) -> bool:
    """gRPC stubs written by `make proto`: not ours to size or split."""
    return "_pb2" in path.name


def find_modules(repo: Path = REPO) -> dict[str, Path]:
    """Module name -> file, for every package under PACKAGE_ROOTS whose top-level name starts with `swarm`."""
    modules: dict[str, Path] = {}
    for root_name in PACKAGE_ROOTS:
        root = repo / root_name
        if not root.is_dir():
            continue
        for package in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("swarm")
                              and (p / "__init__.py").exists()):
            for path in sorted(package.rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imported_names(source: str, *, module: str, is_package: bool) -> set[str]:
    """Dotted names a module's source imports: `import a.b` gives a.b; `from a import b` gives a and a.b (the
    caller keeps whichever is a module); relative imports are resolved against `module`."""
    names: set[str] = set()
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            package_parts = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package_parts[:len(package_parts) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (a name that is not one of ours is dropped)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = imported_names(path.read_text(encoding="utf-8"), module=module, is_package=path.name == "__init__.py")
        graph[module] = {name for name in names if name in modules and name != module}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower floor to a higher one, as readable lines."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = floor_of(module), floor_of(target)
            if low is not None and high is not None and high > low:
                found.append(f"{module} ({FLOOR_NAMES[low]}) imports {target} ({FLOOR_NAMES[high]})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a loop (strongly connected components with more
    than one module, or a module importing itself), each sorted; Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)


def oversized_modules(paths: Iterable[Path], *, limit: int = MAX_MODULE_LINES) -> list[str]:
    """Hand-written Python files longer than `limit` lines, as "path: N lines"."""
    found = []
    for path in sorted(paths):
        if is_generated(path):
            continue
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {lines} lines")
    return found
