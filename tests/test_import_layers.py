"""The package's layers, bottom first, written once: a module may import its own
subpackage and the layers below it, never a layer above, nor a sibling of its
own layer; and no modules import each other in a circle. Checked by parsing
every module's imports (no module is imported).

Each subpackage `histopipe.<name>` is the folder `<name>/` at the repository
root (setup.py's package_dir); `histopipe/` holds the package's own
`__init__` and `__main__`."""

import ast
import os
from typing import Dict, List, Set, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "histopipe")
# Folders at the root that are not subpackages of histopipe.
NOT_INSTALLED = {"tests", "bench", "docs", "requirements", "demo", "build"}

# Bottom first. Subpackages in one layer may not import each other: the serving
# client does not depend on the training code, nor the trainer on serving.
LAYERS: List[Set[str]] = [
    {"core"},                 # settings, shared names, errors, progress
    {"bags"},                 # what a slide becomes, and its tf.Example encoding
    {"slides"},               # reading slides, tissue, tiling, previews (no TF, no TFX)
    {"data"},                 # dataset layouts, label files, the synthetic generator
    {"beam", "monitoring", "encoders"},  # tiling stages | drift statistics | frozen encoders
    # the TFX module file | loading and calling the model | the custom TFX components
    {"trainer", "serving", "components"},
    {"reports"},              # what a run produced
    {"pipeline"},             # the DAG, the local runner
    {"kubeflow"},             # the DAG for Kubeflow Pipelines
    {"cli"},                  # the command
    {"__main__"},             # python -m histopipe
]
# The development server is a tool for people and tests, not a library.
ONLY_IMPORTED_BY = {"histopipe.serving.dev_server": {("histopipe.cli.serving_commands", "_serve_dev")}}


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
      if imported == "histopipe":
        continue  # the package's root holds only names (SUBPACKAGES), importing nothing
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


def _subpackage_folders() -> List[str]:
  """Folders at the repository root that hold a Python package."""
  return sorted(name for name in os.listdir(REPO)
                if os.path.isfile(os.path.join(REPO, name, "__init__.py"))
                and name not in NOT_INSTALLED | {"histopipe"})


def _package_sources() -> Dict[str, str]:
  """Dotted module name (histopipe.<folder>.<module>) -> source."""
  modules = {}
  for top in ["histopipe"] + _subpackage_folders():
    for folder, _, names in os.walk(os.path.join(REPO, top)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          relative = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          if top != "histopipe":
            relative = "histopipe." + relative
          module = relative[:-len(".__init__")] if relative.endswith(".__init__") else relative
          if module == "histopipe.cli" and top == "histopipe":
            continue
          with open(path) as f:
            modules[module] = f.read()
  return modules


def circles(modules: Dict[str, str]) -> List[List[str]]:
  """Groups of modules that import each other, directly or round a loop
  (strongly connected components of the import graph, Tarjan's algorithm);
  `from histopipe.x import y` counts as importing histopipe.x.y when that is
  a module, else histopipe.x."""
  edges = {}
  for module, source in modules.items():
    targets = set()
    for imported, _ in imported_histopipe_modules(source):
      target = imported if imported in modules else imported.rsplit(".", 1)[0]
      if target in modules and target != module:
        targets.add(target)
    edges[module] = sorted(targets)
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def connect(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in edges[node]:
      if target not in index:
        connect(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      group = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.append(member)
        if member == node:
          break
      if len(group) > 1:
        found.append(sorted(group))

  for node in sorted(edges):
    if node not in index:
      connect(node)
  return sorted(found)


def test_every_folder_of_the_package_is_in_a_layer():
  folders = _subpackage_folders()
  assert {"pipeline", "components", "trainer", "kubeflow"} <= set(folders)
  assert sorted(set().union(*LAYERS) - {"__main__"}) == folders


def test_no_module_imports_a_higher_or_sibling_layer():
  modules = _package_sources()
  assert "histopipe.core.configs" in modules and "histopipe.cli" in modules
  assert "histopipe.components.slide_example_gen.executor" in modules
  assert layer_violations({m: s for m, s in modules.items() if m != "histopipe"}) == []


def test_the_package_root_imports_nothing():
  source = _package_sources()["histopipe"]
  assert imported_histopipe_modules(source) == []


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
      "histopipe.slides.tiling": "from histopipe.core import configs\n",
  })
  assert problems == [
      "histopipe.cli imports histopipe.serving.dev_server, which only "
      "[('histopipe.cli.serving_commands', '_serve_dev')] may",
      "histopipe.core.configs (layer core) imports histopipe.trainer.model, a higher layer",
      "histopipe.reports.explain imports histopipe.serving.dev_server, which only "
      "[('histopipe.cli.serving_commands', '_serve_dev')] may",
      "histopipe.serving.client (layer serving) imports histopipe.trainer.features, "
      "a sibling layer",
  ]


def test_no_modules_import_each_other_in_a_circle():
  modules = _package_sources()
  assert circles(modules) == []


def test_the_circle_check_finds_a_loop_through_three_modules():
  assert circles({
      "histopipe.slides.a": "from histopipe.slides import b\n",
      "histopipe.slides.b": "from histopipe.slides.c import read\n",
      "histopipe.slides.c": "def read():\n  from histopipe.slides import a\n",
      "histopipe.slides.d": "from histopipe.slides import a\n",
  }) == [["histopipe.slides.a", "histopipe.slides.b", "histopipe.slides.c"]]
