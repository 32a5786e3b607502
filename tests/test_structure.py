"""The package's shape: no import cycles (a module never imports one that builds on it, even
inside a function), export composes the stages and adds no logic, and the on-device runner needs
nothing of ours."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def _imports(path):
    """The pipeline modules `path` imports, at any depth (lazy imports in functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pipeline":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("pipeline."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return found - {path.stem}


def import_graph():
    return {path.stem: _imports(path) for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"}


def find_cycle(graph):
    """A list of modules forming a cycle, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_among_pipeline_modules():
    graph = import_graph()
    assert set(graph) >= {"build", "calibrate", "convert", "verify", "selective", "diagnose",
                          "export", "report", "artifacts", "remote"}
    cycle = find_cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    # The check above must be able to fail: a planted cycle is found, a chain is not.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    graph["errors"] = graph["errors"] | {"export"}
    assert find_cycle(graph) is not None


def test_selective_quantization_and_cross_arch_parity_live_where_they_belong():
    graph = import_graph()
    assert "diagnose" not in graph["convert"] and "diagnose" not in graph["selective"]
    assert {"convert", "verify", "layers"} <= graph["selective"]
    source = (PACKAGE / "verify.py").read_text()
    assert "def cross_arch_parity" not in source
    assert "def cross_arch_parity" in (PACKAGE / "remote.py").read_text()


def test_export_composes_stages_and_adds_no_logic_of_its_own():
    tree = ast.parse((PACKAGE / "export.py").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert functions <= {"_timed", "define_flags", "export_from_flags", "main", "_progress"}
    # Decisions (a quantization mode, a flag's range) are the stages': export raises only the
    # parity failure, and branches only on --keep-float, the parity verdict and --android-demo.
    raises = [ast.unparse(node.exc)[:40] for node in ast.walk(tree) if isinstance(node, ast.Raise)]
    assert len(raises) == 1 and raises[0].startswith("ParityError"), raises
    ifs = [ast.unparse(node.test) for node in ast.walk(tree) if isinstance(node, ast.If)]
    assert len(ifs) <= 5, ifs


def test_the_device_runner_imports_nothing_of_ours():
    assert _imports(PACKAGE / "device_runner.py") == set()
