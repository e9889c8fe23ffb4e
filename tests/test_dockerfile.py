"""kubeflow/Dockerfile (no Docker engine here): it ships the one package setup.py
installs, installs it under the pinned constraints, and builds on the TFX image of the
pinned TFX version."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(os.path.join(REPO, path)) as f:
    return f.read()


def test_image_copies_the_installed_package_and_pins_versions():
  dockerfile = _read("kubeflow/Dockerfile")
  setup = _read("setup.py")
  folders = ast.literal_eval(re.search(r"^SUBPACKAGES = (\(.*?\))", _read("histopipe/__init__.py"),
                                       re.M | re.S).group(1))
  copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.M))
  assert {"histopipe", *folders} <= copied, f"not copied into the image: {set(folders) - copied}"
  assert re.search(r"^COPY setup.py pyproject.toml ./$", dockerfile, re.M)
  assert "COPY requirements/constraints.txt" in dockerfile
  assert re.search(r"pip install .*-c requirements/constraints.txt \.", dockerfile)
  tfx_version = re.search(r'"tfx\[kfp\]==([\d.]+)"', setup).group(1)
  assert f"FROM gcr.io/tfx-oss-public/tfx:{tfx_version}" in dockerfile
  assert "ENV TF_USE_LEGACY_KERAS=1" in dockerfile
