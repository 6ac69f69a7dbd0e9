"""Imports point one way and form no cycle (docs/architecture.md, Packages and layering).

Every module of ``features/``, ``models/``, ``serving/`` and ``pipeline/`` is read with
``ast``: module-level and function-level imports, ``import x`` and ``from x import y``,
relative imports resolved. ``from pkg import name`` is an import of ``pkg.name`` when that
is a module of ours, else of ``pkg`` (its ``__init__``). A failure names the importing file,
the line and the target.
"""
import ast
import os
import textwrap
from typing import Dict, List, NamedTuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what each package may import (besides itself)
ALLOWED = {"features": set(), "models": {"features"}, "serving": {"features", "models"},
           "pipeline": {"features", "models", "serving"}}


class Edge(NamedTuple):
    source: str  # importing module
    target: str  # imported module of ours
    path: str  # importing file, relative to the root
    line: int


def find_modules(root: str) -> Dict[str, str]:
    """{dotted module name: file path relative to root} for every module of the layered packages."""
    modules = {}
    for package in ALLOWED:
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), root)
                    parts = rel[:-3].split(os.sep)
                    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = rel
    return modules


def import_edges(root: str, modules: Dict[str, str]) -> List[Edge]:
    """Every import of one of our modules, anywhere in a module's code."""
    edges = []
    for module, rel in sorted(modules.items()):
        with open(os.path.join(root, rel)) as fh:
            tree = ast.parse(fh.read(), filename=rel)
        package = module if rel.endswith("__init__.py") else module.rpartition(".")[0]
        for node in ast.walk(tree):
            for target in _targets(node, package, modules):
                edges.append(Edge(module, target, rel, node.lineno))
    return sorted(edges, key=lambda e: (e.path, e.line, e.target))


def _targets(node: ast.AST, package: str, modules: Dict[str, str]) -> List[str]:
    """The modules of ours that an import node imports (none for other nodes)."""
    if isinstance(node, ast.Import):
        return [m for m in (_ours(a.name, modules) for a in node.names) if m]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the importing module's package, one level up per extra dot
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
    found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else _ours(base, modules) for a in node.names]
    return sorted({m for m in found if m})


def _ours(name: str, modules: Dict[str, str]):
    """The longest prefix of a dotted name that is one of our modules (None: not ours)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def back_edges(edges: List[Edge]) -> List[str]:
    """Imports against the layering, as 'file:line imports target (package may import only ...)'."""
    bad = []
    for e in edges:
        src, dst = e.source.split(".")[0], e.target.split(".")[0]
        if dst != src and dst not in ALLOWED[src]:
            allowed = ", ".join(sorted(ALLOWED[src])) or "nothing of ours"
            bad.append(f"{e.path}:{e.line} imports {e.target} ({src}/ may import only {allowed})")
    return bad


def cycles(edges: List[Edge]) -> List[str]:
    """One cycle per strongly connected group of modules, its modules in import order with
    the file:line of each import."""
    graph: Dict[str, Dict[str, Edge]] = {}
    for e in edges:
        if e.source != e.target:
            graph.setdefault(e.source, {}).setdefault(e.target, e)
    found = []
    for group in _strong_components(graph):
        if len(group) > 1:
            path = _cycle_in(graph, group)
            hops = [graph[a][b] for a, b in zip(path, path[1:])]
            found.append(" -> ".join(path) + "  (" + "; ".join(f"{h.path}:{h.line}" for h in hops) + ")")
    return found


def _strong_components(graph: Dict[str, Dict[str, Edge]]) -> List[List[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack = set()
    groups = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        group.append(top)
                        if top == node:
                            break
                    groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def _cycle_in(graph: Dict[str, Dict[str, Edge]], group: List[str]) -> List[str]:
    """A shortest cycle through the group's first module, start repeated at the end."""
    start, members = group[0], set(group)
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, {})):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strong component of >1 module always has one


def problems(root: str) -> List[str]:
    edges = import_edges(root, find_modules(root))
    return back_edges(edges) + [f"import cycle: {c}" for c in cycles(edges)]


def test_imports_point_one_way_without_cycles():
    found = problems(REPO)
    if found:
        pytest.fail("imports against docs/architecture.md's layering:\n" + "\n".join(found), pytrace=False)


def test_the_check_finds_back_edges_and_cycles(tmp_path):
    """The checker itself: a back-edge (function-level, relative), a cycle and allowed imports."""
    files = {
        "features/__init__.py": "",
        "features/a.py": "def f():\n    from models import m\n",  # back-edge inside a function
        "models/__init__.py": "from features import a\n",
        "models/m.py": "from . import n\n",  # relative: models.n
        "models/n.py": "import models.m as m\n",  # cycle models.m -> models.n -> models.m
        "serving/__init__.py": "from ..pipeline import p\n",  # relative back-edge
        "pipeline/__init__.py": "",
        "pipeline/p.py": "from serving import x\nfrom models.m import thing\nimport numpy\n",
        "serving/x.py": "",
    }
    for rel, text in files.items():
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    assert problems(str(tmp_path)) == [
        "features/a.py:2 imports models.m (features/ may import only nothing of ours)",
        "serving/__init__.py:1 imports pipeline.p (serving/ may import only features, models)",
        "import cycle: models.m -> models.n -> models.m  (models/m.py:1; models/n.py:1)",
    ]
