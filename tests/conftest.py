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


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_bucket():
  """A real GCS API server on localhost (gcp-storage-emulator, in memory),
  found by every client through the standard STORAGE_EMULATOR_HOST; yields
  "gs://<bucket>". Stopped, and the variable restored, at the end."""
  from gcp_storage_emulator.server import create_server
  bucket, port = "histopipe-test", _free_port()
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  previous = os.environ.get("STORAGE_EMULATOR_HOST")
  os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
  try:
    yield f"gs://{bucket}"
  finally:
    server.stop()
    if previous is None:
      del os.environ["STORAGE_EMULATOR_HOST"]
    else:
      os.environ["STORAGE_EMULATOR_HOST"] = previous


def upload(local_dir, url: str) -> str:
  """Copies a local folder into the bucket (through gcsfs); returns `url`."""
  import fsspec
  fs, path = fsspec.core.url_to_fs(url)
  fs.put(str(local_dir), path, recursive=True)
  fs.invalidate_cache()
  return url
