"""The package's shape: no import circle (lazy imports included), no oversized module, no
private name taken from another module. A newcomer finds each kind of plug-in in one place;
these checks keep it that way."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "hpo"
MAX_LINES = 550  # about 500: a module that outgrows this has two responsibilities


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> hpo modules it imports anywhere (functions included); private names taken."""

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    private: list[str] = []
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names if a.name.startswith("hpo")]
                graph[m].update(t for t in targets if t and t != m)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if not source.startswith("hpo"):
                    continue
                for a in node.names:
                    full = f"{source}.{a.name}"
                    t = owner(full) if full in mods else owner(source)
                    if t and t != m:
                        graph[m].add(t)
                        private_name = a.name.startswith("_") and not a.name.startswith("__")
                        if private_name and full not in mods and not m.startswith(t + "."):
                            private.append(f"{m} imports {t}.{a.name}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (a package and its own
    submodules re-exporting each other excepted)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            family = all(
                any(c.startswith(o + ".") or o.startswith(c + ".") for o in comp if o != c) for c in comp
            )
            if len(comp) > 1 and not family:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    graph, _ = _imports(_modules())
    assert _cycles(graph) == []


def test_a_circle_is_detected() -> None:
    # The checker itself can fail: a -> b -> a is a circle, a package importing its own
    # submodule is not.
    assert _cycles({"hpo.a": {"hpo.b"}, "hpo.b": {"hpo.a"}}) == [["hpo.a", "hpo.b"]]
    assert _cycles({"hpo.p": {"hpo.p.x"}, "hpo.p.x": {"hpo.p"}}) == []


def test_no_private_name_is_imported_from_another_module() -> None:
    _, private = _imports(_modules())
    assert private == []


def test_no_module_is_oversized() -> None:
    sizes = {m: f.read_text().count("\n") for m, f in _modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}
