"""The import graph of xnorjax/: no cycles between modules, and the quantizers are a leaf.

Parsed with `ast`, so imports inside functions count too (a lazy import is still a dependency).
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "xnorjax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules) -> str:
  """The deepest module of `modules` that `name` (a module or a name inside one) lives in."""
  while name not in modules:
    name = name.rpartition(".")[0]
  return name


def import_graph() -> dict[str, set[str]]:
  """module -> the xnorjax modules it imports (a package's __init__ is the package's node)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        targets = [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      deps |= {_resolve(t, modules) for t in targets if t.split(".")[0] == "xnorjax"}
    deps.discard(name)
    graph[name] = deps
  return graph


def find_cycle(graph: dict[str, set[str]]):
  """One import cycle as a list of modules [a, b, ..., a], or None. A package importing its own
  submodules (its __init__ re-exporting them) is not a cycle by itself."""
  state = {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph[node]):
      if node.startswith(dep + "."):
        continue  # a submodule importing its (parent) package's namespace: the package is loaded
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        cycle = visit(dep, stack)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [])
      if cycle:
        return cycle
  return None


def test_no_import_cycles_in_the_package():
  graph = import_graph()
  assert "xnorjax.nn.functional" in graph and "xnorjax.ops.xnor" in graph["xnorjax.nn.functional"]
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_quantizers_import_nothing_of_xnorjax():
  """The quantizers are the bottom layer: layers, ops and optimizer utilities build on them."""
  assert import_graph()["xnorjax.quantizers"] == set()


def test_find_cycle_reports_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
