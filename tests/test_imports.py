"""The product modules' imports (read with ast, nothing imported): no cycle, and no library imports a script."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the command-line programs: what the libraries (every other product module) never import
SCRIPTS = {"train_mine", "test_mine", "bench", "export", "pre_process_sysu", "pre_process_llcm"}
# a script that another script may import: bench times train_mine's training step; the LLCM pre-processor
# shares SYSU-MM01's argument check
SCRIPT_IMPORTS = {("bench", "train_mine"), ("pre_process_llcm", "pre_process_sysu")}


def product_imports():
    """{module: the product modules it imports anywhere in its file (inside functions too)}."""
    modules = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(ROOT, "*.py"))}
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        graph[name] = sorted(found & set(modules) - {name})
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), else None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
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


def test_find_cycle_finds_one():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_no_import_cycle():
    graph = product_imports()
    assert {"checkpoints", "extract", "test_mine", "utils"} <= set(graph)  # the walk sees the modules
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_library_imports_a_script():
    graph = product_imports()
    wrong = [f"{m} imports {s}" for m, deps in graph.items() for s in deps
             if s in SCRIPTS and (m, s) not in SCRIPT_IMPORTS]
    assert not wrong, wrong


def test_checkpoints_are_loaded_in_one_module():
    """checkpoint file -> network is checkpoints.py's: the scripts and extract load through it."""
    graph = product_imports()
    assert all("checkpoints" in graph[m] for m in ("test_mine", "extract", "export", "train_mine"))
    assert "checkpoints" not in graph["utils"] and "model_mine" not in graph["utils"]
