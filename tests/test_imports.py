"""No import cycle anywhere under helpers/.

Every module under helpers/ is parsed with `ast` (nothing is imported or run). Its imports
are every `import` and `from ... import` statement anywhere in the file (module level, inside
functions and methods, under `if`/`try`), plus `importlib.import_module("...")` and
`__import__("...")` with a literal name. `from helpers import x` means the module helpers.x
when helpers/x.py (or helpers/x/) exists, else the package helpers; relative imports are
resolved against the importing module's package. An import reaches the named module only,
not its parent packages (Python runs a parent's __init__ first, but a package's __init__
importing nothing back cannot close a cycle through it). Names computed at run time
(`import_module(info.check_module)`) cannot be read statically; they are the loader's
(exercise, grade) lookups of a lab's checks and solution, which DESIGN allows.
"""

from __future__ import annotations

import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "helpers"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (the folder of `package`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        if rel[-1] == "__init__":
            rel = rel[:-1]
        out[".".join((package, *rel))] = path
    return out


def _resolve(name: str, modules: dict) -> str | None:
    """The longest prefix of dotted `name` that is one of `modules`, or None."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        cand = ".".join(parts[:k])
        if cand in modules:
            return cand
    return None


def imports_of(module: str, path: Path, modules: dict) -> set[str]:
    """The modules of `modules` that `module` (the file `path`) imports, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            for a in node.names:            # `from helpers import x`: the module helpers.x if it is one
                sub = f"{origin}.{a.name}"
                names.append(sub if sub in modules else origin)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            names = [node.args[0].value]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph(root: Path = HELPERS, package: str = "helpers") -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through the first module of each strongly connected
    component with more than one module (Tarjan's algorithm, iterative), sorted."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return sorted(_cycle_in(graph, set(c)) for c in comps)


def _cycle_in(graph, comp: set) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    start = min(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("not a cycle")


def describe(graph, cycle: list[str]) -> str:
    """'a -> b -> a', plus the other modules of its strongly connected component, if any."""
    comp = {m for m in _reachable(graph, cycle[0]) if cycle[0] in _reachable(graph, m)}
    rest = sorted(comp - set(cycle))
    return " -> ".join(cycle) + (f"  (same tangle: {', '.join(rest)})" if rest else "")


def _reachable(graph, start) -> set:
    seen, todo = {start}, [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycle_under_helpers():
    graph = import_graph()
    assert "helpers.zoo" in graph and "helpers.grading.forkserver" in graph   # it read the tree
    found = [describe(graph, c) for c in cycles(graph)]
    for line in found:
        print("import cycle:", line)
    assert not found, "import cycles under helpers/:\n" + "\n".join(found)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The parser finds cycles through function-level imports, `from pkg import mod`, relative
    imports and import_module("..."), and none in an acyclic package."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b\n",                     # inside a function
        "b.py": "import pkg.sub.c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..a import f\n",                                # relative, two levels
        "d.py": "import importlib\nimportlib.import_module('pkg.e')\nimport torch\n",
        "e.py": "from pkg.sub import c\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.e"} and graph["pkg.e"] == {"pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    (pkg / "sub/c.py").write_text("import torch\n")
    assert cycles(import_graph(pkg, "pkg")) == []
