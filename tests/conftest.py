"""Shared fixtures: a tiny synthetic PANDA dataset made by the project's generator."""

import contextlib
import dataclasses
import io
import json
import os
import pathlib

# Transform and TFMA need Keras 2; must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from histopipe.data import synthetic  # noqa: E402

# Level 0 of 1024 x 768 gives a 256 x 192 middle level: a 8 x 6 grid of 32 px tiles.
TINY_LEVEL0 = (1024, 768)


# The binary (PCam-style) run shared by the end-to-end and run-local tests: the
# seeds' wide ResNet, small (WRN-10-2), at 32 px, two tuner trials, always blessed.
PCAM_CONFIG = {
    "preset": "demo",
    "model": {"backbone": "wide_resnet", "wide_resnet_depth": 10, "wide_resnet_width": 2,
              "input_size": 32, "dense_units": 16, "attention_units": 8},
    "training": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8},
    "evaluation": {"min_auc": -1.0, "max_auc_drop": 2.0},
    "tuning": {"enabled": True, "max_trials": 2, "epochs": 1,
               "learning_rates": [1e-3], "dropouts": [0.2], "poolings": ["mean", "max"]},
}


@dataclasses.dataclass
class PcamRun:
  data: pathlib.Path  # `histopipe synth --format pcam --slides 40`
  config: pathlib.Path  # PCAM_CONFIG as a file
  out: pathlib.Path  # `histopipe run --out`
  exit_code: int
  printed: str  # its standard output


@pytest.fixture(scope="session")
def pcam_run(tmp_path_factory) -> PcamRun:
  """`histopipe run` on 40 synthetic PCam patches, once per session."""
  from histopipe import cli  # pylint: disable=import-outside-toplevel (imports TensorFlow)
  work = tmp_path_factory.mktemp("pcam")
  data, out, config = work / "pcam", work / "out", work / "config.json"
  assert cli.main(["synth", "--format", "pcam", "--out", str(data), "--slides", "40"]) == 0
  config.write_text(json.dumps(PCAM_CONFIG))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    code = cli.main(["run", "--data", str(data), "--out", str(out), "--config", str(config)])
  return PcamRun(data, config, out, code, printed.getvalue())


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
