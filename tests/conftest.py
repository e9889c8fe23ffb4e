"""Shared fixtures: a tiny synthetic PANDA dataset made by the project's generator."""

import os

# Transform and TFMA need Keras 2; must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from histopipe.components import synthetic  # noqa: E402

# Level 0 of 1024 x 768 gives a 256 x 192 middle level: a 8 x 6 grid of 32 px tiles.
TINY_LEVEL0 = (1024, 768)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
  """Twelve small PANDA-format slides (two of each grade) with train.csv."""
  out = tmp_path_factory.mktemp("tiny_panda")
  slides = synthetic.write_dataset(str(out), slides=12, seed=7, level0_size=TINY_LEVEL0)
  return out, slides
