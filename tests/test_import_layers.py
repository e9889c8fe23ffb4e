"""The package's layers, bottom first, written once: a module may import its own
subpackage and the layers below it, never a layer above, nor a sibling of its
own layer. Checked by parsing every module's imports (no module is imported)."""

import ast
import os
from typing import Dict, List, Set, Tuple

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "histopipe")

# Bottom first. Subpackages in one layer may not import each other: the serving
# client does not depend on the training code, nor the trainer on serving.
LAYERS: List[Set[str]] = [
    {"core"},                 # settings, shared names, errors, progress
    {"components"},           # slides, tiling, datasets, the ExampleGen
    {"trainer", "serving"},   # the TFX module file | loading and calling the model
    {"reports"},              # what a run produced
    {"pipeline"},             # the DAG, the local runner
    {"kubeflow"},             # the DAG for Kubeflow Pipelines
    {"cli"},                  # the command
    {"__main__"},             # python -m histopipe
]
# The development server is a tool for people and tests, not a library.
ONLY_IMPORTED_BY = {"histopipe.serving.dev_server": {("histopipe.cli", "_serve_dev")}}


def _rank(part: str) -> int:
  for rank, layer in enumerate(LAYERS):
    if part in layer:
      return rank
  raise AssertionError(f"histopipe.{part} is in no layer: add it to LAYERS")


def imported_histopipe_modules(source: str) -> List[Tuple[str, str]]:
  """(module imported, enclosing function or "") for each import of histopipe code."""
  found = []

  def visit(node, function: str):
    for child in ast.iter_child_nodes(node):
      name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
      if isinstance(child, ast.Import):
        found.extend((a.name, function) for a in child.names if a.name.split(".")[0] == "histopipe")
      elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
        if child.module == "histopipe":  # from histopipe import cli
          found.extend((f"histopipe.{a.name}", function) for a in child.names)
        elif child.module.startswith("histopipe."):
          found.extend((f"{child.module}.{a.name}", function) for a in child.names)
      elif isinstance(child, ast.ImportFrom) and child.level:
        raise AssertionError("relative import: name the layer (from histopipe.x import ...)")
      visit(child, name)

  visit(ast.parse(source), "")
  return found


def layer_violations(modules: Dict[str, str]) -> List[str]:
  """`modules`: dotted module name -> source. Every import that breaks the layers."""
  problems = []
  for module, source in sorted(modules.items()):
    own = module.split(".")[1]
    for imported, function in imported_histopipe_modules(source):
      target = imported.split(".")[1]
      for private, allowed in ONLY_IMPORTED_BY.items():
        if (imported + ".").startswith(private + ".") and (module, function) not in allowed:
          problems.append(f"{module} imports {private}, which only {sorted(allowed)} may")
      if target == own:
        continue
      if _rank(target) > _rank(own):
        problems.append(f"{module} (layer {own}) imports {imported}, a higher layer")
      elif _rank(target) == _rank(own):
        problems.append(f"{module} (layer {own}) imports {imported}, a sibling layer")
  return sorted(set(problems))


def _package_sources() -> Dict[str, str]:
  modules = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        module = relative[:-len(".__init__")] if relative.endswith(".__init__") else relative
        with open(path) as f:
          modules[module] = f.read()
  return modules


def test_no_module_imports_a_higher_or_sibling_layer():
  modules = _package_sources()
  assert "histopipe.core.configs" in modules and "histopipe.cli" in modules
  assert layer_violations({m: s for m, s in modules.items() if m != "histopipe"}) == []


def test_the_bottom_layer_imports_nothing_of_histopipe_but_itself():
  for module, source in _package_sources().items():
    if module.startswith("histopipe.core"):
      imported = {m for m, _ in imported_histopipe_modules(source)}
      assert all(m.startswith("histopipe.core.") for m in imported), (module, imported)


def test_the_checker_catches_upward_sibling_and_private_imports():
  """The check itself can fail: each kind of violation is reported."""
  problems = layer_violations({
      "histopipe.core.configs": "from histopipe.trainer import model\n",
      "histopipe.serving.client": "import histopipe.trainer.features\n",
      "histopipe.reports.explain": "from histopipe.serving.dev_server import DevServer\n",
      "histopipe.cli": "def _run():\n  from histopipe.serving import dev_server\n",
      "histopipe.components.tiling": "from histopipe.core import configs\n",
  })
  assert problems == [
      "histopipe.cli imports histopipe.serving.dev_server, which only "
      "[('histopipe.cli', '_serve_dev')] may",
      "histopipe.core.configs (layer core) imports histopipe.trainer.model, a higher layer",
      "histopipe.reports.explain imports histopipe.serving.dev_server, which only "
      "[('histopipe.cli', '_serve_dev')] may",
      "histopipe.serving.client (layer serving) imports histopipe.trainer.features, "
      "a sibling layer",
  ]
