"""The runtime's shape: parts that import downwards only, and public dependencies only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aevents"


def _module_imports() -> dict[str, set[str]]:
    """``{module: modules of aevents it imports at module level}``, TYPE_CHECKING ones too."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = ".".join(parts[:-1])
        tree = ast.parse(path.read_text(), str(path))
        found: set[str] = set()
        nodes = list(tree.body)
        while nodes:
            node = nodes.pop()
            if isinstance(node, ast.If):  # if TYPE_CHECKING: blocks count too
                nodes.extend(node.body)
                nodes.extend(node.orelse)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    if node.level > 1:
                        anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.startswith("aevents"):
                    found.add(base)
                    found.update(
                        f"{base}.{alias.name}"
                        for alias in node.names
                        if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/"))
                        .with_suffix(".py")
                        .exists()
                    )
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("aevents"))
        graph[module] = found - {module}
    return graph


def _cycle(graph: dict[str, set[str]], modules: set[str]) -> list[str] | None:
    """A circle of imports among ``modules``, if there is one."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, set()) & modules):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(modules):
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_the_core_modules_form_no_import_circle() -> None:
    """No circle among aevents' own modules, counting imports made only for type checking."""
    graph = _module_imports()
    core = {
        module
        for module in graph
        if module.startswith("aevents._") or module.startswith("aevents._store")
    }
    assert _cycle(graph, core) is None


def test_no_module_reads_a_private_name_of_anyio_or_trio() -> None:
    """Only the public API of the event-loop libraries is used."""
    offenders: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for needle in ("anyio._", "trio._", "from anyio._", "_task_states", "_cancel_called"):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []


def test_no_method_stubs_hide_behind_type_checking() -> None:
    """No ``if TYPE_CHECKING:`` block defines functions: parts call each other, not copies."""
    offenders: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.If)
                and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"
            ):
                offenders.extend(
                    f"{path.name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef)
                )
    assert offenders == []


def test_the_cycle_finder_finds_a_circle() -> None:
    """The check above would see a circle if there were one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph, set(graph)) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}, {"a", "b"}) is None
