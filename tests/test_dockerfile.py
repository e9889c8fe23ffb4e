"""kubeflow/Dockerfile (no Docker engine here): it ships every package setup.py
installs, installs them under the pinned constraints, and builds on the TFX
image of the pinned TFX version."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
  with open(os.path.join(REPO, path)) as f:
    return f.read()


def test_image_copies_every_installed_package_and_pins_versions():
  dockerfile = _read("kubeflow/Dockerfile")
  setup = _read("setup.py")
  packages = {p for p in re.findall(r'"([a-z_]+)"', setup.split("include=[")[1].split("]")[0])}
  copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.M))
  assert packages and packages <= copied, f"not copied into the image: {packages - copied}"
  assert "COPY requirements/constraints.txt" in dockerfile
  assert re.search(r"pip install .*-c requirements/constraints.txt \.", dockerfile)
  tfx_version = re.search(r'"tfx\[kfp\]==([\d.]+)"', setup).group(1)
  assert f"FROM gcr.io/tfx-oss-public/tfx:{tfx_version}" in dockerfile
  assert "ENV TF_USE_LEGACY_KERAS=1" in dockerfile
