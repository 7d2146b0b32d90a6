"""The package's layers hold: no module imports a package of a higher layer (or a sibling of its own layer), and
no import cycle between modules. Read from the source with ``ast``, so it needs no import of the code.

Layers, lowest first. Libraries below, jobs on one floor above them, the pipeline (which runs the jobs' ``Job``
declarations) above the jobs. A job package never imports another job package: what two jobs share lives in a
library. ``testing`` may import anything and nothing may import it; ``jobs/`` is outside the package and nothing in
it may be imported by the package.

    pipeline                                                        runs the jobs' Job objects
    ingest build mine analysis train eval rerank viewer hub        jobs: one floor, none imports another
    render report                                                   documents -> pages; cards, reports, viewer
    engines                                                         generation / judging backends and pools
    models                                                          scorers, windows, model config, Reranker
    lexical prompts data retrieval                                  text rules; prompts; example sets; retrieval
    core                                                            config, storage, schema, plan, runtime
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"
PACKAGE = "docrerank"
JOBS = ["ingest", "build", "mine", "analysis", "train", "eval", "rerank", "viewer", "hub"]
LAYERS = [
    ["core"],
    ["lexical", "prompts", "data", "retrieval"],
    ["models"],
    ["engines"],
    ["render", "report"],
    JOBS,
    ["pipeline"],
    ["testing"],
]
LAYER = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
# Allowed although in the same layer (none today) / forbidden although lower (none today: a job never imports
# another job, which the same-layer rule already says).
SAME_LAYER_ALLOWED: set[tuple[str, str]] = set()
FORBIDDEN: set[tuple[str, str]] = set()
OUTSIDE = ("jobs", "tests", "bench")


def module_files() -> dict[str, Path]:
    """Module name -> source file, for every module of the package."""
    out = {}
    for path in sorted((LIB / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, runs at import time) for each import in the module: at module level (in class
    bodies, ``if``/``try`` blocks too) or inside a function; ``from a import b`` names ``a.b`` when that is a module.
    Imports under ``if TYPE_CHECKING:`` count for the layers but never run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, at_import) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolved against this module's package
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    src = ".".join(base + ([child.module] if child.module else []))
                else:
                    src = child.module or ""
                for a in child.names:
                    sub = f"{src}.{a.name}"
                    found.append((sub if sub in modules else src, child.lineno, at_import))
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False)
            else:
                visit(child, at_import)

    visit(tree, True)
    return found


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else None


def import_graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int, bool]]]]:
    files = module_files()
    return files, {m: imports_of(m, p, set(files)) for m, p in files.items()}


def layer_violations() -> list[str]:
    """One line per import that breaks the layers."""
    files, graph = import_graph()
    out = []
    for mod, imports in graph.items():
        src = _package_of(mod)
        if src is None:  # the package's own __init__: nothing to check beyond what it imports below
            src_layer = -1
        else:
            src_layer = LAYER.get(src)
            if src_layer is None:
                out.append(f"{mod}: package {src!r} has no layer (add it to LAYERS in tests/test_layering.py)")
                continue
        for target, line, _ in imports:
            where = f"{files[mod].relative_to(LIB)}:{line}"
            top = target.split(".")[0]
            if top in OUTSIDE:
                out.append(f"{where}: {mod} imports {target}, outside the package")
                continue
            dst = _package_of(target)
            if top != PACKAGE or dst is None or dst == src or src == "testing":
                continue
            if src is None:
                out.append(f"{where}: {mod} (the package itself) imports {target}; keep the top package empty")
            elif dst not in LAYER:
                out.append(f"{where}: {mod} imports {target}, a package with no layer")
            elif (src, dst) in FORBIDDEN:
                out.append(f"{where}: {mod} ({src}) imports {target} ({dst}): {src} must not import {dst}")
            elif LAYER[dst] > src_layer:
                out.append(f"{where}: {mod} ({src}, layer {src_layer}) imports {target} ({dst}, layer {LAYER[dst]} above)")
            elif src in JOBS and dst in JOBS:
                out.append(f"{where}: {mod} (job {src}) imports {target} (job {dst}): a job never imports another job; "
                           "move what both need into a library")
            elif LAYER[dst] == src_layer and (src, dst) not in SAME_LAYER_ALLOWED:
                out.append(f"{where}: {mod} ({src}) imports {target} ({dst}), a package of the same layer {src_layer}")
    return out


def import_cycles(at_import_only: bool = True) -> list[list[str]]:
    """Strongly connected groups of modules (more than one), each sorted: under module-level imports, or with
    ``at_import_only=False`` under function-level imports too (cycles that a deferred import hides)."""
    files, graph = import_graph()
    edges = {m: sorted({t for t, _, at_import in imps if (at_import or not at_import_only) and t in files and t != m})
             for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return cycles


def test_every_package_has_a_layer():
    packages = {p.name for p in (LIB / PACKAGE).iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYER), f"packages without a layer: {sorted(packages - set(LAYER))}; layers naming no package: {sorted(set(LAYER) - packages)}"


def test_no_module_imports_a_higher_layer():
    bad = layer_violations()
    assert not bad, f"{len(bad)} imports break the layers ({' -> '.join('/'.join(ly) for ly in LAYERS)}):\n  " + "\n  ".join(bad)


def test_jobs_are_on_one_floor_above_the_libraries():
    floor = LAYER["build"]
    assert all(LAYER[j] == floor for j in JOBS)
    assert all(LAYER[p] < floor for p in LAYER if p not in JOBS and p not in ("pipeline", "testing"))
    assert LAYER["pipeline"] > floor


def test_no_job_imports_another_job():
    bad = [b for b in layer_violations() if "a job never imports another job" in b]
    assert not bad, "jobs import each other:\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    cycles = import_cycles()
    assert not cycles, "import cycles (module-level imports):\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_hidden_behind_a_deferred_import():
    # A function-level import breaks a cycle at import time only: the modules still depend on each other.
    cycles = import_cycles(at_import_only=False)
    assert not cycles, "import cycles (function-level imports counted):\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_function_level_imports_and_cycles(tmp_path, monkeypatch):
    # Guards the test itself, on a throwaway package laid out like ours.
    pkg = tmp_path / PACKAGE
    for sub, files in {"core": {"a.py": "def f():\n    from docrerank.mine import m\n"},
                       "mine": {"m.py": "from docrerank.build import b\nfrom . import n\n", "n.py": "from docrerank.mine import m\n"},
                       "build": {"b.py": "import docrerank.core.a\n"}}.items():
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
        for f, text in files.items():
            (pkg / sub / f).write_text(text)
    (pkg / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "LIB", tmp_path)
    bad = layer_violations()
    assert any("docrerank.core.a (core, layer 0) imports docrerank.mine.m" in b and ":2:" in b for b in bad)
    assert any("docrerank.mine.m (job mine) imports docrerank.build.b (job build): a job never imports another job" in b
               for b in bad)
    assert import_cycles() == [["docrerank.mine.m", "docrerank.mine.n"]]
