"""Code fingerprints: a hash of the source a step runs.

TFX caches a step on its inputs and execution properties, and those name
module paths, not what the modules say. A fingerprint of the code in the
execution properties keeps a cached step valid only with the code that made
it. A step's fingerprint covers the histopipe modules its entry modules
import, followed through the import graph (imports inside functions count:
they run when the function is called), and the `__init__` of each package on
the way (it runs on import). So editing a module the step never imports (the
synthetic generator, a report) leaves the step cached, and editing one it
imports re-runs it.

Hand-written because the standard library's `modulefinder` resolves every
third-party import too (TensorFlow, TFX: seconds a call, and it executes
nothing only at that price); here only histopipe's own modules are followed,
by parsing their source, and nothing is imported but the subpackages'
`__init__` files that locate their folders.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
from typing import Dict, Iterable, Optional

import histopipe

PACKAGE = "histopipe"


@functools.lru_cache(maxsize=None)
def _subpackage_folder(subpackage: str) -> Optional[str]:
  """The folder `histopipe.<subpackage>` lives in (a folder at the repository
  root in a checkout, histopipe/<subpackage>/ in an installed wheel)."""
  spec = importlib.util.find_spec(f"{PACKAGE}.{subpackage}")
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def module_file(module: str) -> Optional[str]:
  """The source file of a histopipe module or package, or None if there is none."""
  parts = module.split(".")
  if parts[0] != PACKAGE:
    return None
  if len(parts) == 1:
    folder, rest = os.path.dirname(os.path.abspath(histopipe.__file__)), []
  else:
    folder, rest = _subpackage_folder(parts[1]), parts[2:]
    if folder is None:
      return None
  base = os.path.join(folder, *rest)
  for candidate in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.isfile(candidate):
      return candidate
  return None


def _imported(source: str) -> Iterable[str]:
  """Names of histopipe modules (or of their attributes) a source imports,
  anywhere in it."""
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.module
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def imported_modules(*entry_modules: str) -> Dict[str, str]:
  """Module name -> source file of every histopipe module the entry modules
  run when imported: what they import, transitively, with the packages that
  hold them."""
  found: Dict[str, str] = {}
  pending = list(entry_modules)
  while pending:
    module = pending.pop()
    if module in found:
      continue
    path = module_file(module)
    if path is None:
      continue  # an attribute (`from histopipe.x import name`), or not histopipe's
    found[module] = path
    parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
    with open(path, encoding="utf-8") as f:
      pending.extend(name for name in _imported(f.read())
                     if name.split(".")[0] == PACKAGE and name not in found)
    pending.extend(parents)
  return found


def _digest(files: Dict[str, str]) -> str:
  digest = hashlib.sha256()
  for module in sorted(files):
    digest.update(module.encode())
    with open(files[module], "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def code_fingerprint(*entry_modules: str) -> str:
  """A short hash of the source of `imported_modules(*entry_modules)`."""
  found = imported_modules(*entry_modules)
  missing = [m for m in entry_modules if m not in found]
  if missing:
    raise ValueError(f"no histopipe module {missing}")
  return _digest(found)[:16]


def package_digest() -> str:
  """A hash of every histopipe module's source (names and bytes): what an
  image built from this checkout would run."""
  files = {}
  for subpackage in histopipe.SUBPACKAGES:
    folder = _subpackage_folder(subpackage)
    for parent, folders, names in os.walk(folder):
      folders[:] = sorted(f for f in folders if f != "__pycache__")
      for name in sorted(n for n in names if n.endswith(".py")):
        path = os.path.join(parent, name)
        relative = os.path.relpath(path, folder)[:-3].replace(os.sep, ".")
        files[f"{PACKAGE}.{subpackage}.{relative}"] = path
  return _digest(files)
