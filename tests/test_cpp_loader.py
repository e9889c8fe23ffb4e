"""The pushed export, loaded by TensorFlow's C++ loader as TF Serving loads it.

Every other test loads the model from Python. TF Serving does not: it calls
`tensorflow::LoadSavedModel` with the `serve` tag and runs the signatures'
tensors on one Session from many request threads. Here a small C++ program
(tests/cpp/load_saved_model.cc), built with g++ against the TensorFlow wheel's
own headers and libraries, does exactly that on the model `histopipe run`
pushed, from several threads at once, and its outputs are compared with what
Python's `tf.saved_model.load` gives on the same inputs.

Inputs and outputs cross between the two as TFRecord files of
`tensorflow.NamedTensorProto`, TensorFlow's own wire format, so no value is
rounded on the way.
"""

import glob
import os
import re
import shutil
import subprocess
import time
from typing import Dict, List, Tuple

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import named_tensor_pb2

from histopipe.bags import bag_features
from histopipe.core import signatures
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpp", "load_saved_model.cc")
THREADS = 8
CALLS_PER_THREAD = 2
# Float outputs (probabilities, attention: values in [0, 1]) may differ from
# Python's in the last bits, not more: both runtimes run the wheel's same
# kernels, but Python runs the signature as a tf.function and C++ imports the
# graph into a DirectSession, and each lets Grappler (and oneDNN) fuse and
# order the float32 arithmetic its own way. A reordered float32 sum moves a
# value of order 1 by ~1e-7 per step; 1e-5 leaves room for that, while a real
# difference (another tile order, padding left unmasked, another input) moves
# a probability by far more. Measured on the pcam run: 0.0, every output.
FLOAT_TOLERANCE = 1e-5

# A mark, not a skip in the fixture: it acts before the session's pipeline
# run (pcam_run), which a machine without g++ would otherwise make for nothing.
pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None,
    reason="no C++ compiler (g++) on PATH: cannot build tests/cpp/load_saved_model.cc, "
           "so the export is not checked in TensorFlow's C++ loader")


def compile_command(binary: str) -> List[str]:
  """g++ with the wheel's own flags (its C++11 ABI, C++17, Eigen alignment).
  The wheel ships only the `.so.2` names, hence `-l:` and an rpath.
  `--no-as-needed` keeps libtensorflow_cc: every symbol the program names is
  also in libtensorflow_framework, so an as-needed linker drops it, and with it
  the static initializers that register the DirectSession factory ("No session
  factory registered")."""
  library_dir = os.path.dirname(tf.__file__)
  return (["g++", SOURCE, "-o", binary] + tf.sysconfig.get_compile_flags() +
          ["-Wl,--no-as-needed"] + tf.sysconfig.get_link_flags() +
          ["-l:libtensorflow_cc.so.2", f"-Wl,-rpath,{library_dir}"])


@pytest.fixture(scope="module")
def cpp_loader(tmp_path_factory) -> str:
  """The built program, once per module."""
  binary = str(tmp_path_factory.mktemp("cpp_loader") / "load_saved_model")
  command = compile_command(binary)
  started = time.monotonic()
  built = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert built.returncode == 0, f"{' '.join(command)}\n{built.stderr[-4000:]}"
  print(f"built {binary} in {time.monotonic() - started:.0f} s")
  return binary


@pytest.fixture(scope="module")
def pushed_model(pcam_run) -> str:
  """The version folder `histopipe run` pushed."""
  assert pcam_run.exit_code == 0
  (saved_model,) = glob.glob(str(pcam_run.out / "serving_model" / "*" / "saved_model.pb"))
  return os.path.dirname(saved_model)


@pytest.fixture(scope="module")
def eval_bags(pcam_run) -> List[bytes]:
  """Serialized tf.Example bags of the run's eval split, as a client sends them."""
  (examples_uri,) = glob.glob(str(pcam_run.out / "pipeline_root" / "SlideExampleGen" /
                                  "examples" / "*"))
  files = sorted(glob.glob(os.path.join(examples_uri, "Split-eval", "*")))
  bags = [record.numpy() for record in tf.data.TFRecordDataset(files).take(4)]
  assert len(bags) >= 2, "the run's eval split holds fewer than two bags"
  return bags


@pytest.fixture(scope="module")
def python_model(pushed_model):
  return tf.saved_model.load(pushed_model)


def _tiles_per_bag(model_dir: str) -> int:
  with open(os.path.join(model_dir, "assets.extra", CONTRACT_FILE)) as f:
    return ModelContract.from_json(f.read()).tiles_per_bag


def valid_tiles(serialized_bag: bytes) -> List[bytes]:
  """The bag's real tiles, what a client that tiles slides itself sends to predict_tiles."""
  feature = tf.train.Example.FromString(serialized_bag).features.feature
  return [tile for tile, valid in zip(feature[bag_features.TILES].bytes_list.value,
                                      feature[bag_features.TILE_VALID].int64_list.value)
          if valid]


def as_numpy(tensor: tf.Tensor) -> np.ndarray:
  """As tf.make_ndarray gives it: strings, a scalar too, as an object array."""
  if tensor.dtype == tf.string:
    return np.asarray(tensor.numpy(), dtype=object)
  return tensor.numpy()


def run_in_cpp(binary: str, model_dir: str, signature: str, inputs: Dict[str, np.ndarray],
               work: str) -> Tuple[Dict[Tuple[int, int], Dict[str, np.ndarray]], str]:
  """Each call's outputs by (thread, call), and what the program printed."""
  inputs_path, outputs_path = os.path.join(work, "inputs.tfrecord"), os.path.join(
      work, "outputs.tfrecord")
  with tf.io.TFRecordWriter(inputs_path) as writer:
    for key, value in inputs.items():
      named = named_tensor_pb2.NamedTensorProto(name=key, tensor=tf.make_tensor_proto(value))
      writer.write(named.SerializeToString())
  ran = subprocess.run([binary, model_dir, signature, inputs_path, str(THREADS),
                        str(CALLS_PER_THREAD), outputs_path],
                       capture_output=True, text=True, timeout=600)
  assert ran.returncode == 0, ran.stderr[-4000:]
  outputs_by_call: Dict[Tuple[int, int], Dict[str, np.ndarray]] = {}
  for record in tf.data.TFRecordDataset(outputs_path):
    named = named_tensor_pb2.NamedTensorProto.FromString(record.numpy())
    thread, call, key = named.name.split("/", 2)
    outputs_by_call.setdefault((int(thread), int(call)), {})[key] = tf.make_ndarray(
        named.tensor)
  return outputs_by_call, ran.stdout


def largest_float_difference(expected: Dict[str, np.ndarray],
                             outputs_by_call: Dict[Tuple[int, int], Dict[str, np.ndarray]],
                             ) -> float:
  """Fails on any output that is not Python's; returns the largest float difference seen."""
  largest = 0.0
  for (thread, call), outputs in sorted(outputs_by_call.items()):
    where = f"thread {thread}, call {call}"
    assert sorted(outputs) == sorted(expected), where
    for key, value in expected.items():
      got = outputs[key]
      assert got.dtype == value.dtype and got.shape == value.shape, (
          f"{where}, {key}: {got.dtype}{got.shape}, Python {value.dtype}{value.shape}")
      if np.issubdtype(value.dtype, np.floating):
        np.testing.assert_allclose(got, value, rtol=0, atol=FLOAT_TOLERANCE,
                                   err_msg=f"{where}, {key}")
        if value.size:
          largest = max(largest, float(np.max(np.abs(got - value))))
      else:  # ints and strings: exactly
        np.testing.assert_array_equal(got, value, err_msg=f"{where}, {key}")
  return largest


@pytest.mark.parametrize("signature", [signatures.SERVING_DEFAULT, signatures.PREDICT_TILES,
                                       signatures.METADATA])
def test_cpp_loader_runs_every_signature_as_python_does(signature, cpp_loader, pushed_model,
                                                        eval_bags, python_model, tmp_path):
  """TF Serving's loader reads the export, finds the signature, and answers
  what Python answers, on every thread: the same outputs, ints and strings
  exactly, floats within FLOAT_TOLERANCE; the encoder's BatchFunction ran
  batches holding more than one request's tiles (its own counter, as TF
  Serving exports it), and `metadata` none."""
  inputs = {
      signatures.SERVING_DEFAULT: {signatures.EXAMPLES: np.array(eval_bags, dtype=object)},
      signatures.PREDICT_TILES: {signatures.TILES: np.array(valid_tiles(eval_bags[0]),
                                                            dtype=object)},
      # Any value: the signature ignores it (see core/signatures.METADATA).
      signatures.METADATA: {signatures.METADATA_REQUEST: np.array([b""], dtype=object)},
  }[signature]
  expected = {key: as_numpy(value) for key, value in python_model.signatures[signature](
      **{key: tf.constant(value) for key, value in inputs.items()}).items()}

  outputs_by_call, printed = run_in_cpp(cpp_loader, pushed_model, signature, inputs,
                                        str(tmp_path))

  assert sorted(outputs_by_call) == [(thread, call) for thread in range(THREADS)
                                     for call in range(CALLS_PER_THREAD)]
  largest = largest_float_difference(expected, outputs_by_call)
  calls = THREADS * CALLS_PER_THREAD
  assert f"{calls} calls on {THREADS} threads" in printed, printed
  # The batches TensorFlow's BatchFunction op ran, by its own count.
  (batches,) = re.findall(r"batches run \(tiles x batches\): (.*)", printed)
  if signature == signatures.METADATA:
    assert batches == "none"  # no encoder, no queue
    # One session, the same input: every thread's answer byte for byte the first's.
    assert f"{calls} equal to the first" in printed, printed
  else:
    # Concurrent requests' tiles ran together: a batch larger than one request.
    # (Their floats may then differ from a lone request's in the last bits,
    # which largest_float_difference allows, no more.)
    bags_per_request = 1 if signature == signatures.PREDICT_TILES else len(eval_bags)
    request_tiles = bags_per_request * _tiles_per_bag(pushed_model)  # padded bags, encoded
    sizes = [int(entry.split("x")[0]) for entry in batches.split()]
    assert max(sizes) > request_tiles, printed
  print(f"{signature}: largest float difference from Python {largest:.3g}; batches {batches}")
  if signature == signatures.SERVING_DEFAULT:
    assert expected[signatures.PROBABILITIES].shape[0] == len(eval_bags)
  if signature == signatures.METADATA:
    with open(os.path.join(pushed_model, "assets.extra", CONTRACT_FILE), "rb") as f:
      assert outputs_by_call[(0, 0)][signatures.CONTRACT].item() == f.read()
