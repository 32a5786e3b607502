"""The package's shape: layers that import only downward (lazy imports in functions count), no
import cycles, absl only in the command layer, no module reaching into another's underscore names,
export composing the stages and adding no logic, and the on-device runner needing nothing of ours.

    pipeline/<command>.py   `python -m pipeline.<command>` shims      (5)
    pipeline/commands/      absl flags → settings → api → printed      (4)
    pipeline/api.py         the facade                                 (3)
    pipeline/stages/        the stages and their compositions          (2)
    pipeline/device/        the one-file runner, SSH/adb targets       (1)
    pipeline/core/          errors, options, readers, artifacts, …     (0)
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
LAYERS = {"core": 0, "device": 1, "stages": 2, "api": 3, "commands": 4}
SHIM = 5


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module):
    """The layer of a dotted pipeline module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package itself: its __init__ sets the environment, imports nothing
    if parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return SHIM


def _imports(path):
    """The pipeline modules `path` imports, at any depth, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file() or \
                    (PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").is_file()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return found - {module_name(path)}


def import_graph():
    return {module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


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


def layering_violations(graph):
    """[(module, imported module)] where a module imports one of a higher layer."""
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if layer(target) > layer(module) and layer(module) >= 0
                  and not (layer(module) == SHIM and layer(target) == LAYERS["commands"]))


def test_every_layer_imports_only_the_layers_below_it():
    graph = import_graph()
    assert {"pipeline.core.errors", "pipeline.stages.export", "pipeline.api",
            "pipeline.commands.export", "pipeline.device.runner", "pipeline.export"} <= set(graph)
    assert layering_violations(graph) == []


def test_no_import_cycle_among_pipeline_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, " → ".join(cycle)


def test_the_checks_above_can_fail():
    # A planted cycle is found, a chain is not; a planted upward import is a violation.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    graph["pipeline.core.errors"] = graph["pipeline.core.errors"] | {"pipeline.stages.export"}
    assert find_cycle(graph) is not None
    assert layering_violations(graph) == [("pipeline.core.errors", "pipeline.stages.export")]
    assert layering_violations({"pipeline.stages.x": {"pipeline.api"}}) == [
        ("pipeline.stages.x", "pipeline.api")]


def _absl_users():
    return sorted(module_name(path) for path in PACKAGE.rglob("*.py")
                  if any(isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                      (getattr(node, "module", None) or alias.name).split(".")[0] == "absl"
                      for alias in node.names)
                      for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))))


def test_absl_stops_at_the_command_layer():
    assert _absl_users() == ["pipeline.commands.cli"]


def underscore_reaches(path):
    """Names with a leading underscore that `path` takes from another pipeline module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
                else:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name.startswith("pipeline"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                not node.attr.startswith("__") and isinstance(node.value, ast.Name) and \
                node.value.id in modules:
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_s_underscore_names():
    offenders = {module_name(p): underscore_reaches(p) for p in PACKAGE.rglob("*.py")}
    assert {m: names for m, names in offenders.items() if names} == {}


def test_export_composes_stages_and_adds_no_logic_of_its_own():
    tree = ast.parse((PACKAGE / "stages" / "export.py").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert functions <= {"_timed", "export", "_progress"}
    # Decisions (a quantization mode, a flag's range) are the stages': export raises nothing, and
    # branches only on --qat and --keep-float.
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Raise)]
    ifs = [ast.unparse(node.test) for node in ast.walk(tree) if isinstance(node, ast.If)]
    assert len(ifs) <= 2, ifs


def test_the_device_runner_imports_nothing_of_ours():
    # Both run under another Python: the runner on a board, the Task Library client in its own
    # environment (tflite-support, protobuf 3).
    assert _imports(PACKAGE / "device" / "runner.py") == set()
    assert _imports(PACKAGE / "device" / "task_library.py") == set()
    # … and sits beside nothing that shadows the standard library when it runs as a script.
    import sys

    beside = {p.stem for p in (PACKAGE / "device").glob("*.py")}
    assert not beside & set(sys.stdlib_module_names), beside


def test_the_command_modules_are_shims_and_every_documented_command_has_one():
    commands = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__", "cli", "main"}
    shims = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "api"}
    assert shims == commands
    for name in shims:
        assert _imports(PACKAGE / f"{name}.py") == {f"pipeline.commands.{name}"}, name
