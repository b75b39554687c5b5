"""The import graph of gpuscope, read from the sources (ast, every `import`,
function-level ones included): no module is part of a cycle, data flows one
way (probes import nothing of gpuscope but probes; the collector never
imports the sidecar, except `gpuscope sidecar`'s dispatch in cli.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("probes", "collector", "viewer", "sidecar")
# (importing module, enclosing function) allowed to reach gpuscope.sidecar from the collector.
DISPATCH = {("gpuscope.collector.cli", "cmd_sidecar")}


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = ["gpuscope", *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The gpuscope module `name` refers to (an attribute of a module counts as that module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(mod: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, enclosing function or None) for each import of `mod`."""
    tree = ast.parse(path.read_text(), str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                names = [f"{prefix}.{a.name}" for a in child.names] + [prefix]
            for n in names:
                target = _resolve(n, known) if n.startswith("gpuscope") else None
                if target and target != mod and (target, func) not in out:
                    out.append((target, func))
            visit(child, f)

    visit(tree, None)
    return out


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    known = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in known}
    wrong: list[str] = []
    for mod, path in known.items():
        for target, func in imports(mod, path, known):
            # `from . import x` names the package too: not an edge to its own __init__.
            if mod.startswith(target + "."):
                continue
            edges[mod].add(target)
            layer, tlayer = mod.split(".")[1], target.split(".")[1]
            if layer == "probes" and tlayer != "probes":
                wrong.append(f"{mod} imports {target}: probes import only probes")
            if layer == "collector" and tlayer == "sidecar" and (mod, func) not in DISPATCH:
                wrong.append(f"{mod} imports {target}: the collector never imports the sidecar")
    return edges, wrong


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_the_graph_is_read():
    edges, _ = graph()
    assert "gpuscope.collector.pipeline" in edges["gpuscope.collector.session"]
    assert "gpuscope.collector.pipeline" in edges["gpuscope.sidecar.monitor"]
    assert "gpuscope.sidecar.cli" in edges["gpuscope.collector.cli"]   # the dispatch, counted


def test_no_import_cycles():
    edges, _ = graph()
    assert cycles(edges) == []


def test_data_flows_one_way():
    _, wrong = graph()
    assert wrong == []


@pytest.mark.parametrize("bad", [
    ("collector/options.py", "from .cli import parser\n"),             # a cycle in the collector
    ("sidecar/metrics.py", "from .monitor import Monitor\n"),          # a cycle in the sidecar
    ("collector/summary.py", "import gpuscope.sidecar.metrics\n"),     # collector -> sidecar
    ("collector/pipeline.py", "def f():\n    from gpuscope.sidecar import monitor\n"),
])
def test_the_checks_can_fail(tmp_path, bad):
    """The same checks on a copy of the sources with one bad import added."""
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            dst = tmp_path / path.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(path.read_text())
    rel, line = bad
    (tmp_path / rel).write_text((tmp_path / rel).read_text() + "\n" + line)
    edges, wrong = graph(tmp_path)
    assert cycles(edges) or wrong
