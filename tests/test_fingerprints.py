"""Cache keys from what a step runs: each step's code fingerprint covers the
modules its entry module imports, so editing a module a step does not import
leaves that step's execution properties (TFX's cache key) as they were."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

from histopipe.pipeline import fingerprints
from histopipe.pipeline import pipeline as pipeline_dag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_import_graph_holds_every_module_python_imports():
  """Python's own import system is the reference: every histopipe module that
  importing the ExampleGen's component module loads (sys.modules, in a fresh
  process) is in its fingerprint; imports inside functions are in it too."""
  done = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys
          import {pipeline_dag.EXAMPLE_GEN_MODULE}
          print(sorted(m for m in sys.modules if m.split('.')[0] == 'histopipe'))
          """)], capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert done.returncode == 0, done.stderr[-3000:]
  loaded = set(eval(done.stdout.strip().splitlines()[-1]))  # pylint: disable=eval-used
  found = fingerprints.imported_modules(pipeline_dag.EXAMPLE_GEN_MODULE)
  assert loaded <= set(found), sorted(loaded - set(found))
  # beam/slide_stages.py imports the tiling only inside TileSlideFn: still in.
  assert "histopipe.slides.tiling" in found and "histopipe.slides.tissue" in found
  assert found["histopipe.slides.tissue"] == os.path.join(REPO, "slides", "tissue.py")
  # What the tiling never runs.
  assert not {m for m in found if m.startswith(("histopipe.trainer", "histopipe.reports",
                                                "histopipe.serving", "histopipe.pipeline"))}
  assert "histopipe.data.synthetic" not in found


def _wheel_layout_copy(root):
  """The package as a wheel installs it (histopipe/<subpackage>/...), first on
  the path, so a test can edit its sources without touching the checkout."""
  import histopipe  # pylint: disable=import-outside-toplevel
  package = root / "histopipe"
  shutil.copytree(os.path.join(REPO, "histopipe"), package,
                  ignore=shutil.ignore_patterns("__pycache__"))
  for subpackage in histopipe.SUBPACKAGES:
    shutil.copytree(os.path.join(REPO, subpackage), package / subpackage,
                    ignore=shutil.ignore_patterns("__pycache__"))
  return package


_STEP_KEYS = textwrap.dedent("""
    import json, sys
    from histopipe.core.configs import demo_config
    from histopipe.pipeline import pipeline as pipeline_dag
    assert pipeline_dag.__file__.startswith(sys.argv[1]), pipeline_dag.__file__
    data, edits = sys.argv[2], sys.argv[3:]
    def keys():
      dag = pipeline_dag.create_pipeline(demo_config(), data_root=data, pipeline_root=data + "/r",
                                         serving_model_dir=data + "/s")
      return {c.id: json.dumps({k: str(v) for k, v in c.exec_properties.items()}, sort_keys=True)
              for c in dag.components}
    found = {"before": keys()}
    for edit in edits:
      with open(sys.argv[1] + "/" + edit, "a") as f:
        f.write("\\n# edited by the test\\n")
      found[edit] = keys()
    print(json.dumps(found))
    """)


def test_a_step_reruns_only_when_a_module_it_imports_changes(tmp_path):
  """The DAG built from a copy of the package; after each edit, which steps'
  execution properties (what TFX caches a step on, with its inputs) changed."""
  package = _wheel_layout_copy(tmp_path / "site")
  (tmp_path / "data").mkdir()
  edits = ["data/synthetic.py", "slides/tissue.py", "trainer/model.py",
           "trainer/preprocessing.py", "components/drift_check/executor.py"]
  env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, "-c", _STEP_KEYS, str(package), str(tmp_path / "data"),
                         *edits], capture_output=True, text=True, env=env, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  keys = json.loads(done.stdout.strip().splitlines()[-1])
  changed, previous = {}, keys["before"]
  for edit in edits:
    changed[edit] = sorted(step for step in previous if keys[edit][step] != previous[step])
    previous = keys[edit]
  assert changed == {
      # The synthetic generator: only the model card says "synthetic data".
      "data/synthetic.py": ["ModelCard"],
      "slides/tissue.py": ["SlideExampleGen"],
      "trainer/model.py": ["Trainer"],
      "trainer/preprocessing.py": ["Transform"],
      # The drift check's executor; the model card reads its report file name.
      "components/drift_check/executor.py": ["DriftCheck", "ModelCard"],
  }
