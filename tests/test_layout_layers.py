"""The package layout is its layering: a lower floor never imports a higher one.

    root      errors, io, wheels (I/O primitives); zoo, models (model loading)
    core      hooks, layout, engine, scoring, head_scores: root I/O and itself
    sweep     grids, prompts, sources, the runner, run directories, shards, stability: core and the root
    detection, masking, tasks, kv, grounding (experiments): core, sweep, the root, analysis' formats,
              exports and plots; never another experiment, but for ``CROSS_EXPERIMENT``
    analysis  properties, formats, exports, report, plots: core and the root
    cli, compat  anything (the commands, and the architecture matrix that runs them all)

Every import counts, at module level or inside a function, relative or absolute. No model is loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "retrieval_heads"
ROOT_IO = {"errors", "io", "wheels"}
ROOT = ROOT_IO | {"zoo", "models"}
ENTRY = {"__init__", "__main__"}  # the public API (imported by name, lazily) and ``python -m``
EXPERIMENTS = {"detection", "masking", "tasks", "kv", "grounding"}
ANALYSIS_FOR_EXPERIMENTS = ("analysis.formats", "analysis.exports", "analysis.plots")
TOP = {"cli", "compat"}

# (importing experiment, imported module): why. Keep this short; prefer moving the shared piece down a floor.
CROSS_EXPERIMENT = {
    ("kv", "masking.niah"): "kv-eval is NIAH under a compressed cache: run_niah, and niah's records, identity and summary",
    ("kv", "masking.heads"): "those NIAH records name their MaskPlan: kv-eval's is MaskPlan() (no head masked)",
    ("tasks", "masking.heads"): "a task condition is a MaskPlan: none, top-K or K random heads ablated",
    ("grounding", "tasks.run"): "grounding answers the task suites (SUITES) with tasks' prompt (render) and stop rule",
    ("grounding", "tasks.suites"): "grounding items can come from the task suites (suite_items, Item)",
}


def modules() -> dict[str, Path]:
    """Dotted names under the package (``core.hooks``, ``analysis.plots``, ``errors``) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module of the package) for every import in ``path``, function-level ones included."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [] if name in ENTRY else package
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
                target = f"retrieval_heads.{target}" if target else "retrieval_heads"
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}".removeprefix("retrieval_heads.") in MODULES
                       else target for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("retrieval_heads."):
                found.append((node.lineno, target.removeprefix("retrieval_heads.")))
    return found


def floor(name: str) -> str:
    """The subpackage a module belongs to, or its own name at the root."""
    return name.split(".")[0]


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def allowed(importer: str, imported: str) -> bool:
    home, there = floor(importer), floor(imported)
    if home in TOP or importer in ENTRY or home == there:
        return True
    if home in ROOT_IO:
        return there in ROOT_IO
    if home == "zoo":
        return there in ROOT_IO
    if home == "models":
        return there in ROOT_IO | {"zoo", "core"}
    if home == "core":
        return there in ROOT_IO
    if home in ("sweep", "analysis"):
        return there in ROOT | {"core"}
    if home in EXPERIMENTS:
        return (there in ROOT | {"core", "sweep"} or within(imported, ANALYSIS_FOR_EXPERIMENTS)
                or any(home == who and within(imported, [what]) for who, what in CROSS_EXPERIMENT))
    raise AssertionError(f"{importer}: a module outside the known floors; add its floor to this test")


def edges() -> list[tuple[str, int, str]]:
    return [(name, line, imported) for name, path in MODULES.items() for line, imported in imports(name, path)
            if imported in MODULES or imported.split(".")[0] in MODULES]


def test_the_root_holds_only_io_and_model_loading():
    root = {name for name, path in MODULES.items() if path.parent == PACKAGE and path.name != "__init__.py"}
    assert root == ROOT | {"__main__"}, f"modules at the package root besides I/O and model loading: {sorted(root - ROOT)}"


def test_every_import_respects_the_floors():
    bad = [f"{MODULES[name].relative_to(PACKAGE.parent)}:{line}: {name} imports {imported}"
           for name, line, imported in edges() if not allowed(name, imported)]
    assert not bad, "imports across the layers:\n" + "\n".join(bad)


def test_every_cross_experiment_allowance_is_used():
    used = {(floor(name), what) for name, _, imported in edges() for who, what in CROSS_EXPERIMENT
            if floor(name) == who and within(imported, [what])}
    stale = sorted(set(CROSS_EXPERIMENT) - used)
    assert not stale, f"allowances no import needs any more (drop them): {stale}"


def test_no_import_cycles_between_floors():
    graph: dict[str, set[str]] = {}
    for name, _, imported in edges():
        if name in ENTRY or floor(name) == floor(imported):
            continue
        graph.setdefault(floor(name), set()).add(floor(imported))
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            raise AssertionError("import cycle between floors: " + " -> ".join(cycle))


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("from ...masking.niah import run_niah\n\ndef f():\n    from ...kv import policy\n"
                      "    import retrieval_heads.tasks.run as tasks\n", encoding="utf-8")
    found = imports("analysis.plots.probe", module)
    assert found == [(1, "masking.niah"), (4, "kv.policy"), (5, "tasks.run")]
    assert not allowed("analysis.plots.probe", "kv.policy") and not allowed("core.engine", "models")
    assert not allowed("sweep.runner", "masking.heads") and allowed("kv.restore", "core.head_scores")
