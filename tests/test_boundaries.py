"""Architecture rules: layers, no import cycles, no private imports, short files, Prefect and torch where they belong."""

from __future__ import annotations

import ast
import runpy
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"coderflow": ROOT / "coderflow", "coderflow.flows": ROOT / "flows"}
PACKAGE_DIRS |= {"coderflow.tasks": ROOT / "tasks", "coderflow.storage": ROOT / "storage"}
THIN_TASK_MODULES = {"task.py", "runs.py"}  # the only modules under tasks/ allowed to import prefect
MAX_LINES = 500
LINE_CHECKED_DIRS = ("coderflow", "flows", "tasks", "storage", "tests", "benchmarks", "scripts")

# Layers, low to high: a module imports from its own layer and the layers below, never from one above. An entry names
# a module and everything under it; the longest matching entry decides (coderflow.tasks.classify.zeroshot is a
# registry, coderflow.tasks.classify.task a task). The root package `coderflow` (environment defaults) is the lowest.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("storage", ("coderflow.storage",)),
    # The method registries sit below config: config takes the method names and their checks from them (one registry
    # entry adds a method, to the defaults and to --help), so the registries and the maths they score with read their
    # settings through small protocols and import no configuration.
    (
        "registries",
        (
            "coderflow.tasks.classify.zeroshot",
            "coderflow.tasks.classify.methods",
            "coderflow.tasks.fewshot.scorers",
            "coderflow.tasks.fewshot.methods",
            "coderflow.tasks.fewshot.device",  # the torch plumbing of fewshot.methods
            "coderflow.tasks.classify.device",  # the torch plumbing of classify.methods, and fewshot.device's base
        ),
    ),
    (
        "base",
        (
            "coderflow.config",
            "coderflow.sections",
            "coderflow.fewshot_sections",
            "coderflow.suite_config",
            "coderflow.presets",
            "coderflow.console",
            "coderflow.interrupt",
            "coderflow.progress",
            "coderflow.results",
            "coderflow.catalog",  # open_clip's model catalog: shared by preflight and model loading
        ),
    ),
    ("tasks", ("coderflow.tasks",)),
    ("flows", ("coderflow.flows", "coderflow.api", "coderflow.preflight")),  # api and preflight compose tasks
    ("cli", ("coderflow.cli",)),
)
ROOT_PACKAGE = "coderflow"
STAGE_PREFIX = "coderflow.tasks."

Graph = dict[str, set[str]]
Sites = dict[tuple[str, str], list[str]]


def _py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def project_modules() -> dict[str, Path]:
    """Every module of the installed packages by dotted name (coderflow.tasks.embed.model -> tasks/embed/model.py)."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in _py_files(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (a module, or the nearest package above a name), else None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(module: str, path: Path) -> list[tuple[str, str, int]]:
    """(imported module, name or '', line) of every import of a module: top level, in functions, under TYPE_CHECKING."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            out += [(base, a.name, node.lineno) for a in node.names]
    return out


def import_graph() -> tuple[Graph, Sites, list[str]]:
    """The project's import graph, where each edge is imported (path:line), and every `from m import _private`."""
    modules = project_modules()
    graph: Graph = {m: set() for m in modules}
    sites: Sites = defaultdict(list)
    private = []
    for module, path in modules.items():
        where = str(path.relative_to(ROOT))
        for base, name, line in imported_names(module, path):
            target = _known(f"{base}.{name}" if name else base, modules)
            if target is None:
                continue
            if name.startswith("_") and not name.startswith("__"):
                private.append(f"{where}:{line}: from {base} import {name}")
            if target != module:
                graph[module].add(target)
                sites[module, target].append(f"{where}:{line}")
    return graph, sites, private


def _edge(a: str, b: str, sites: Sites | None) -> str:
    at = f" ({', '.join(sites[a, b])})" if sites and sites.get((a, b)) else ""
    return f"{a} imports {b}{at}"


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node, each sorted, in name order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    nodes = sorted(set(graph) | {n for targets in graph.values() for n in targets})

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(found)


def find_cycles(graph: Graph, sites: Sites | None = None) -> list[str]:
    """One line per import cycle, naming every import inside it."""
    out = []
    for component in strongly_connected(graph):
        inside = set(component)
        edges = [_edge(a, b, sites) for a in component for b in sorted(graph.get(a, ())) if b in inside]
        out.append(f"cycle of {len(component)} modules: " + "; ".join(edges))
    return out


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a module (the longest matching entry), None when no entry covers it."""
    if module == ROOT_PACKAGE:
        return 0
    best: tuple[int, int] | None = None
    for rank, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > best[0]):
                best = (len(entry), rank)
    return None if best is None else best[1]


def find_upward_imports(graph: Graph, sites: Sites | None = None) -> list[str]:
    """One line per import of a higher layer, and one per module that no layer covers."""
    out = []
    for module in sorted(graph):
        low = layer_of(module)
        if low is None:
            out.append(f"{module} has no layer: add it to LAYERS")
            continue
        for target in sorted(graph[module]):
            high = layer_of(target)
            if high is not None and high > low:
                out.append(f"{LAYERS[low][0]} -> {LAYERS[high][0]}: {_edge(module, target, sites)}")
    return out


def stage_of(module: str) -> str | None:
    """The stage package a module belongs to (coderflow.tasks.embed.model -> 'embed'), None outside the stages."""
    if not module.startswith(STAGE_PREFIX):
        return None
    return module.removeprefix(STAGE_PREFIX).split(".")[0]


def find_stage_loops(graph: Graph, sites: Sites | None = None, stages: set[str] | None = None) -> list[str]:
    """One line per group of stage packages that depend on each other (directly, or around a loop), naming each
    import between them; a one-way dependency between two stages is fine."""
    between: dict[str, set[str]] = defaultdict(set)
    imports: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, targets in graph.items():
        for target in targets:
            a, b = stage_of(module), stage_of(target)
            if a and b and a != b and (stages is None or {a, b} <= stages):
                between[a].add(b)
                imports[a, b].append(_edge(module, target, sites))
    out = []
    for group in strongly_connected(between):
        inside = set(group)
        edges = [e for a in group for b in sorted(between[a] & inside) for e in sorted(imports[a, b])]
        out.append(f"stages {', '.join(group)} depend on each other: " + "; ".join(edges))
    return out


def stage_packages() -> set[str]:
    return {p.parent.name for p in (ROOT / "tasks").glob("*/__init__.py")}


def test_no_import_cycles():
    graph, sites, _ = import_graph()
    assert find_cycles(graph, sites) == []


def test_no_layer_imports_a_higher_one():
    graph, sites, _ = import_graph()
    assert find_upward_imports(graph, sites) == []


def test_no_two_stages_import_each_other():
    graph, sites, _ = import_graph()
    assert find_stage_loops(graph, sites, stage_packages()) == []


def test_no_private_name_is_imported_from_another_module():
    _, _, private = import_graph()
    assert private == [], "make the name public (no leading _) or move the code that needs it"


def test_no_python_file_is_longer_than_the_limit():
    long = {}
    for folder in LINE_CHECKED_DIRS:
        for path in _py_files(ROOT / folder):
            n = len(path.read_text().splitlines())
            if n > MAX_LINES:
                long[str(path.relative_to(ROOT))] = n
    assert long == {}, f"split files longer than {MAX_LINES} lines"


def test_the_checkers_find_what_they_are_for():
    clean: Graph = {
        "coderflow.cli": {"coderflow.flows.pipeline"},
        "coderflow.flows.pipeline": {"coderflow.tasks.texts.task", "coderflow.config"},
        "coderflow.tasks.texts.task": {"coderflow.tasks.embed.model", "coderflow.config"},
        "coderflow.tasks.embed.model": {"coderflow.config", "coderflow.storage.layout"},
        "coderflow.config": {"coderflow.tasks.classify.zeroshot", "coderflow.storage.layout"},
        "coderflow.tasks.classify.zeroshot": {"coderflow.storage.layout"},
        "coderflow.storage.layout": set(),
    }
    assert find_cycles(clean) == find_upward_imports(clean) == find_stage_loops(clean) == []

    bad = {k: set(v) for k, v in clean.items()}
    bad["coderflow.storage.db"] = {"coderflow.console"}  # storage -> base
    bad["coderflow.console"] = set()
    bad["coderflow.tasks.embed.model"].add("coderflow.tasks.texts.bank")  # embed <-> texts
    bad["coderflow.tasks.texts.bank"] = set()
    bad["coderflow.tasks.classify.zeroshot"].add("coderflow.tasks.classify.task")  # a registry -> a task above it,
    bad["coderflow.tasks.classify.task"] = {"coderflow.tasks.classify.zeroshot"}  # and a cycle of the two
    bad["coderflow.newmodule"] = set()
    sites = {("coderflow.tasks.classify.zeroshot", "coderflow.tasks.classify.task"): ["tasks/classify/zeroshot.py:3"]}

    assert find_cycles(bad, sites) == [
        "cycle of 2 modules: coderflow.tasks.classify.task imports coderflow.tasks.classify.zeroshot; "
        "coderflow.tasks.classify.zeroshot imports coderflow.tasks.classify.task (tasks/classify/zeroshot.py:3)"
    ]
    assert find_upward_imports(bad, sites) == [
        "coderflow.newmodule has no layer: add it to LAYERS",
        "storage -> base: coderflow.storage.db imports coderflow.console",
        "registries -> tasks: coderflow.tasks.classify.zeroshot imports coderflow.tasks.classify.task "
        "(tasks/classify/zeroshot.py:3)",
    ]
    assert find_stage_loops(bad) == [
        "stages embed, texts depend on each other: coderflow.tasks.embed.model imports coderflow.tasks.texts.bank; "
        "coderflow.tasks.texts.task imports coderflow.tasks.embed.model"
    ]
    loop = {"coderflow.tasks.a.x": {"coderflow.tasks.b.x"}, "coderflow.tasks.b.x": {"coderflow.tasks.c.x"}}
    loop["coderflow.tasks.c.x"] = {"coderflow.tasks.a.y"}  # a -> b -> c -> a: no module cycle, a stage loop
    assert find_cycles(loop) == []
    assert [line.split(":")[0] for line in find_stage_loops(loop)] == ["stages a, b, c depend on each other"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pure_modules_do_not_import_prefect():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in (ROOT / "tasks", ROOT / "storage", ROOT / "coderflow")
        for p in _py_files(folder)
        if p.name not in THIN_TASK_MODULES and "prefect" in _imports(p)
    ]
    assert offenders == []


def test_flows_do_not_import_torch():
    offenders = [str(p.relative_to(ROOT)) for p in _py_files(ROOT / "flows") if {"torch", "open_clip"} & _imports(p)]
    assert offenders == []


def test_every_module_starts_with_a_docstring():
    missing = []
    for folder in (*PACKAGE_DIRS.values(), ROOT / "tests"):
        for p in _py_files(folder):
            if not ast.get_docstring(ast.parse(p.read_text())):
                missing.append(str(p.relative_to(ROOT)))
    assert missing == []


def test_every_package_is_shipped():
    """setup.py derives the package list from the four folders: every folder holding modules is shipped, under the
    name the code imports it by (a new stage package needs no packaging edit)."""
    setup = runpy.run_path(str(ROOT / "setup.py"), run_name="packages_check")
    assert {name: ROOT / folder for name, folder in setup["FOLDERS"].items()} == PACKAGE_DIRS
    shipped = set(setup["packages"]())
    holding_modules = {
        ".".join((name, *path.parent.relative_to(folder).parts))
        for name, folder in PACKAGE_DIRS.items()
        for path in _py_files(folder)
    }
    assert holding_modules - shipped == set()
    assert "coderflow.tasks.classify" in shipped and "coderflow.storage.sql" in shipped  # subpackages and data
