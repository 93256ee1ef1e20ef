"""The package's layers, checked from its imports: each folder one layer, imports only point down, no circles.

Read from the source (nothing is imported), counting every import: at module level, inside
functions, under TYPE_CHECKING. Inside a layer, modules may import each other as long as no
circle forms.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "distautograd"

# Top to bottom. A module may import its own layer and any layer below it.
LAYERS = [
    ("tools", {"cli", "demo", "testing", "pytest_plugin", "launch", "netns", "bench"}),
    ("public faces", {"rpc", "autograd", "optim", "nn"}),
    ("runtime", {"runtime"}),
    ("views of the gradient", {"views"}),
    ("engine and coordinator", {"engine", "coordinator"}),
    ("transport and encoding", {"transport", "encoding"}),
    ("compiled core", {"native"}),  # what the transport (and, later, the engine) runs in C++
    ("errors, ids and metrics", {"errors", "ids", "protocol", "metrics", ""}),
]
RANK = {part: len(LAYERS) - i for i, (_, parts) in enumerate(LAYERS) for part in parts}
NAME = {part: name for name, parts in LAYERS for part in parts}


def modules() -> dict:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: pathlib.Path, known: set) -> set:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not target.startswith(name + "."):
                out.add(target)
    return out


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def test_every_module_belongs_to_a_layer():
    unplaced = sorted({component(m) for m in modules()} - set(RANK))
    assert not unplaced, f"place these in LAYERS: {unplaced}"


def test_imports_only_point_down():
    upward = [
        f"{src} ({NAME[component(src)]}) imports {dst} ({NAME[component(dst)]})"
        for src, targets in graph().items() if component(src) in RANK
        for dst in targets if component(dst) in RANK and RANK[component(dst)] > RANK[component(src)]
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circles():
    edges = graph()
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    for v in list(edges):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check must be able to fail: a module of the engine importing the runtime is caught."""
    fake = tmp_path / "distautograd"
    (fake / "engine").mkdir(parents=True)
    (fake / "runtime").mkdir()
    for folder in (fake, fake / "engine", fake / "runtime"):
        (folder / "__init__.py").write_text("")
    (fake / "runtime" / "agent.py").write_text("X = 1\n")
    (fake / "engine" / "graph.py").write_text("from distautograd.runtime.agent import X\n")
    known = {"distautograd", "distautograd.engine", "distautograd.runtime", "distautograd.runtime.agent",
             "distautograd.engine.graph"}
    found = imports_of("distautograd.engine.graph", fake / "engine" / "graph.py", known)
    assert found == {"distautograd.runtime.agent"}
    assert RANK[component("distautograd.runtime.agent")] > RANK[component("distautograd.engine.graph")]
