"""histopipe installs one package, `histopipe`, and lives beside packages with generic names.

Kubeflow's training and Katib SDKs install a namespace package `kubeflow`, and
Vertex AI training packages are conventionally called `trainer`. The test
builds a virtual environment that has both (and `pipeline`, `components`,
`serving`, `reports`) on top of this environment's packages, then runs the CLI,
a part of the test suite and the Kubeflow compiler there, and resolves every
module path the compiled spec names.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "histopipe")
# A generic top-level package that breaks loudly if anything imports it.
_BROKEN = "raise ImportError('the user\\'s own {name} package: histopipe must not import it')\n"


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


@pytest.fixture(scope="module")
def crowded_venv(tmp_path_factory):
  """A venv with `trainer` (a regular package), `kubeflow` (a namespace package,
  as the Kubeflow SDKs install it) and the other generic names, seeing this
  environment's packages (TensorFlow, TFX, histopipe) behind its own."""
  root = tmp_path_factory.mktemp("crowded")
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  _write(os.path.join(site, "trainer", "__init__.py"), "SHADOW = 'vertex-style trainer'\n")
  _write(os.path.join(site, "trainer", "task.py"),
         "def run_fn(fn_args):\n  raise RuntimeError('the user\\'s trainer.task.run_fn ran')\n")
  # Namespace package: kubeflow/ has no __init__.py; kubeflow.training is the SDK.
  _write(os.path.join(site, "kubeflow", "training", "__init__.py"), "SHADOW = 'kubeflow sdk'\n")
  for name in ("pipeline", "components", "serving", "reports"):
    _write(os.path.join(site, name, "__init__.py"), _BROKEN.format(name=name))
  # This environment's site-packages (with its .pth files: the editable
  # histopipe, google namespace packages) after the venv's own.
  ours = sysconfig.get_paths()["purelib"]
  _write(os.path.join(site, "zz_parent_env.pth"), f"import site; site.addsitedir({ours!r})\n")
  return python, root


def _run(python, *args, cwd=REPO):
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONWARNINGS="ignore")
  return subprocess.run([python, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_generic_names_stay_the_users_own(crowded_venv):
  """From the user's own folder (outside this repository, whose root holds
  trainer/, kubeflow/, ... as folders): histopipe's subpackages come from the
  repository's folders, the generic names from the user's packages."""
  python, root = crowded_venv
  done = _run(python, "-c", textwrap.dedent("""
      import histopipe.cli, histopipe.trainer.task, histopipe.kubeflow.compile
      import trainer, kubeflow.training
      print(trainer.SHADOW, '|', kubeflow.training.SHADOW, '|', histopipe.__file__,
            '|', histopipe.trainer.task.__file__)
      """), cwd=str(root))
  assert done.returncode == 0, done.stderr
  assert done.stdout.split(" | ")[:2] == ["vertex-style trainer", "kubeflow sdk"]
  assert done.stdout.split(" | ")[2].strip() == os.path.join(PACKAGE, "__init__.py")
  assert done.stdout.split(" | ")[3].strip() == os.path.join(REPO, "trainer", "task.py")


def test_the_repository_folders_are_not_top_level_modules(tmp_path):
  """This environment (no generic packages installed): outside the repository
  `trainer` and `components` do not resolve, so the only way to this code is
  through `histopipe.`; a module added to a folder resolves without a reinstall."""
  new_module = os.path.join(REPO, "data", "zz_added_after_install.py")
  _write(new_module, "VALUE = 7\n")
  try:
    done = _run(sys.executable, "-c", textwrap.dedent("""
        import importlib.util
        from histopipe.data import zz_added_after_install
        print([importlib.util.find_spec(name) for name in ("trainer", "components", "slides")],
              zz_added_after_install.VALUE)
        """), cwd=str(tmp_path))
  finally:
    os.remove(new_module)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ["[None,", "None,", "None]", "7"]


def test_the_wheel_holds_one_package_with_every_folder_under_it(tmp_path):
  """`pip wheel` of a copy of the checkout (so no build folder lands in it):
  top_level.txt names histopipe alone, every file lives under histopipe/, the
  module files of the DAG are there by their module paths, and package data
  (the model card's schema) travels."""
  source = tmp_path / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
      ".venv", ".git", "demo", "__pycache__", "*.egg-info", "build", ".pytest_cache"))
  done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                         "--quiet", "-w", str(tmp_path / "dist"), str(source)],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  (wheel,) = (tmp_path / "dist").glob("histopipe-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    top_level = next(archive.read(n).decode() for n in names if n.endswith("/top_level.txt"))
  assert top_level.split() == ["histopipe"]
  assert all(n.startswith(("histopipe/", "histopipe-")) for n in names), \
      sorted(n for n in names if not n.startswith(("histopipe/", "histopipe-")))
  modules = {n for n in names if n.endswith(".py")}
  assert {"histopipe/__init__.py", "histopipe/__main__.py", "histopipe/cli/__init__.py",
          "histopipe/trainer/task.py", "histopipe/trainer/preprocessing.py",
          "histopipe/pipeline/pipeline.py", "histopipe/kubeflow/compile.py",
          "histopipe/components/slide_example_gen/executor.py",
          "histopipe/slides/slide_reader.py", "histopipe/data/synthetic.py"} <= modules
  assert "histopipe/components/model_card/model_card.schema.json" in names
  # Every module of the checkout's folders is in the wheel, at its module path.
  expected = set()
  for folder in ["histopipe", *_setup_subpackages()]:
    for parent, _, files in os.walk(os.path.join(REPO, folder)):
      for name in files:
        if name.endswith(".py"):
          relative = os.path.relpath(os.path.join(parent, name), REPO)
          expected.add(relative if folder == "histopipe" else "histopipe/" + relative)
  assert expected == modules


def _setup_subpackages():
  with open(os.path.join(PACKAGE, "__init__.py")) as f:
    return ast.literal_eval(re.search(r"^SUBPACKAGES = (\(.*?\))", f.read(), re.M | re.S).group(1))


def test_cli_and_tests_run_beside_them(crowded_venv):
  python, _ = crowded_venv
  done = _run(python, "-m", "histopipe", "--help")
  assert done.returncode == 0 and "kubeflow" in done.stdout, done.stderr
  tests = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_import_layers.py", "tests/test_configs.py", "tests/test_pipeline_dag.py")
  assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
  assert re.search(r"\d+ passed", tests.stdout)


def test_compiled_spec_names_only_histopipe_modules_and_they_resolve_beside_them(crowded_venv):
  python, root = crowded_venv
  spec_path = str(root / "pipeline.yaml")
  done = _run(python, "-m", "histopipe", "kubeflow", "compile", "--out", spec_path,
              "--image", "registry.example/histopipe:1", "--pipeline-root", "gs://b/root",
              "--data-root", "gs://b/data", "--preset", "demo", "--format", "panda")
  assert done.returncode == 0, done.stderr[-3000:]
  text = open(spec_path).read()
  list(yaml.safe_load_all(text))  # the pipeline spec, then the GPU steps' placement
  paths = set(re.findall(r"\bhistopipe(?:\.\w+)+", text))
  assert {"histopipe.trainer.task.run_fn", "histopipe.trainer.preprocessing.preprocessing_fn",
          "histopipe.trainer.metrics",
          "histopipe.components.slide_example_gen.executor.SlideExampleGenExecutor"} <= paths
  # No module path outside the package: the user's trainer.task would run instead.
  assert not re.search(r"[\"' ](trainer|components|pipeline|serving|reports)\.\w+\.\w+", text)
  resolve = textwrap.dedent("""
      import importlib, sys
      for path in sys.argv[1:]:
        parts = path.split('.')
        for cut in range(len(parts), 0, -1):
          try:
            obj = importlib.import_module('.'.join(parts[:cut]))
            break
          except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
          obj = getattr(obj, name)
        module = sys.modules[getattr(obj, '__module__', None) or obj.__name__]
        print(path, module.__file__)
      """)
  done = _run(python, "-c", resolve, *sorted(paths))
  assert done.returncode == 0, done.stderr[-3000:]
  files = dict(line.split(" ", 1) for line in done.stdout.splitlines())
  assert set(files) == paths
  # Each from its folder at the repository root: histopipe.trainer.task from trainer/task.py.
  for path, file in files.items():
    folder = path.split(".")[1]
    assert folder in _setup_subpackages() and file.startswith(os.path.join(REPO, folder) + os.sep), \
        (path, file)
