"""The package's import graph: no cycles, and the lower layers stay below.

Edges are read from the source (module-level and function-level imports
alike: a lazy import still ties two modules together), so the test needs no
heavy import. A package's `__init__` importing its children counts (it runs
them); a module importing names from its own package does not (the package
is initialised before any of its modules)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "soundloc_jax"
# Modules that must never be imported by the lower layers (DESIGN.md).
UPPER = ("soundloc_jax.train", "soundloc_jax.workdir", "soundloc_jax.inference",
         "soundloc_jax.main", "soundloc_jax.localize", "soundloc_jax.mine")
LOWER = ("soundloc_jax.methods", "soundloc_jax.evaluation", "soundloc_jax.models",
         "soundloc_jax.media")


def _modules() -> dict:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def _resolve(name: str, modules: dict):
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def import_graph() -> dict:
  """`{module: {modules it imports}}` over the package."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        targets = [base] + [f"{base}.{a.name}" for a in node.names]
      else:
        continue
      for target in targets:
        found = _resolve(target, modules)
        if found is None or found == module:
          continue  # outside the package, or itself
        if module.startswith(found + "."):
          continue  # its own package, initialised before any of its modules
        graph[module].add(found)
  return graph


def cycles(graph: dict) -> list:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
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
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_checker_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
  graph = import_graph()
  assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the package was read
  assert cycles(graph) == []


@pytest.mark.parametrize("lower", LOWER)
def test_lower_layers_never_import_the_loop_workdir_or_inference(lower):
  graph = import_graph()
  reached, todo = set(), [m for m in graph if m == lower or m.startswith(lower + ".")]
  while todo:  # everything the layer imports, directly or not
    module = todo.pop()
    for dep in graph[module] - reached:
      reached.add(dep)
      todo.append(dep)
  assert not reached & set(UPPER), sorted(reached & set(UPPER))
