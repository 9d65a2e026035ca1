"""The package's shape: no import loop, and no module importing one of a higher layer.

Imports are read from the source (every ``import``, at the top or inside a function), so a loop
hidden in a function-level import counts too.
"""

import ast
from pathlib import Path

import cnnlab

PACKAGE = Path(cnnlab.__file__).parent

#: Lowest first. A module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"cnnlab"}),  # the cache folder and the smoke setting
    ("core", {"files", "device", "augment", "cuda_graph", "data", "transforms", "conv", "models", "train",
              "checkpoint", "hooks", "receptive_field", "saliency", "metrics", "scale", "transfer"}),
    ("ui", {"viz", "callbacks", "drawing", "widgets"}),
    ("series", {"runs", "report", "series", "exercises"}),  # the course's own choices: saved runs, its table, its notebooks, its exercises
    ("tools", {"doctor", "bench", "gpu_check", "__main__"}),
]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, names without the ``cnnlab.`` prefix."""
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for path in package.glob("*.py"):
        name = "cnnlab" if path.stem == "__init__" else path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "cnnlab":
                if node.module == "cnnlab":  # from cnnlab import data (a module) or cache_dir (from __init__)
                    deps |= {a.name if a.name in modules else "cnnlab" for a in node.names}
                else:
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cnnlab.")}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_loop_finder_finds_a_loop_hidden_three_deep():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_loop():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle)


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    layer_of = {m: i for i, (_, members) in enumerate(LAYERS) for m in members}
    graph = import_graph()
    assert set(graph) == set(layer_of), f"modules without a layer: {sorted(set(graph) - set(layer_of))}; " \
                                        f"layers naming no module: {sorted(set(layer_of) - set(graph))}"
    upward = [f"{m} ({LAYERS[layer_of[m]][0]}) imports {d} ({LAYERS[layer_of[d]][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of[d] > layer_of[m]]
    assert not upward, "upward imports: " + "; ".join(upward)
