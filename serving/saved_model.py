"""Loads an exported model: the one place that turns a model folder into callable signatures.

The development server, `histopipe score`, `explain` and the report all load
models here, so "which version" and "call a signature with numpy inputs"
mean the same everywhere.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.python.tools import saved_model_utils

from histopipe.core.errors import UserError
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract


class ModelNotFound(UserError):
  """No SavedModel at the path the user gave."""


class SignatureNotFound(KeyError):
  """The model has no signature of that name."""


class BadModelInput(ValueError):
  """Inputs the signature does not take (names, types or shapes)."""


def resolve_version_dir(model_dir: str) -> Tuple[str, int]:
  """A SavedModel dir, or a serving base of numbered versions (the Pusher's
  layout): the latest version, as TF Serving's default policy picks it.
  Through TensorFlow's filesystems (local, gs://), which also load the model."""
  gfile = tf.io.gfile
  if gfile.exists(os.path.join(model_dir, "saved_model.pb")):
    name = os.path.basename(os.path.normpath(model_dir))
    return model_dir, int(name) if name.isdigit() else 1
  if not gfile.isdir(model_dir):
    raise ModelNotFound(f"{model_dir}: no such model folder")
  versions = sorted(int(v.rstrip("/")) for v in gfile.listdir(model_dir)
                    if v.rstrip("/").isdigit() and
                    gfile.exists(os.path.join(model_dir, v.rstrip("/"), "saved_model.pb")))
  if not versions:
    raise ModelNotFound(f"{model_dir}: no saved_model.pb, and no <version>/saved_model.pb")
  return os.path.join(model_dir, str(versions[-1])), versions[-1]


def read_contract(model_dir: str) -> Optional[ModelContract]:
  """The contract of the model at `model_dir` (the latest version of a
  serving base), from its assets.extra/; None for a model exported without."""
  path = os.path.join(resolve_version_dir(model_dir)[0], "assets.extra", CONTRACT_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return ModelContract.from_json(f.read())


class LoadedModel:
  """One SavedModel version: its signature defs, and its signatures callable with numpy."""

  def __init__(self, model_dir: str):
    self.path, self.version = resolve_version_dir(model_dir)
    self._model = tf.saved_model.load(self.path)
    meta_graph = saved_model_utils.get_meta_graph_def(self.path, "serve")
    self.signature_defs = dict(meta_graph.signature_def)

  def has_signature(self, signature: str) -> bool:
    return signature in self._model.signatures

  def input_names(self, signature: str) -> List[str]:
    if not self.has_signature(signature):
      raise SignatureNotFound(signature)
    return sorted(self._model.signatures[signature].structured_input_signature[1])

  def input_dtypes(self, signature: str) -> Dict[str, np.dtype]:
    """Each input's numpy dtype (object for strings)."""
    if not self.has_signature(signature):
      raise SignatureNotFound(signature)
    specs = self._model.signatures[signature].structured_input_signature[1]
    return {name: np.dtype(object) if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
            for name, spec in specs.items()}

  def run(self, signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The signature's outputs as numpy arrays; raises SignatureNotFound or BadModelInput."""
    expected = set(self.input_names(signature))
    if set(inputs) != expected:
      raise BadModelInput(f"signature {signature} takes inputs {sorted(expected)}, "
                          f"got {sorted(inputs)}")
    function = self._model.signatures[signature]
    try:
      outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
      raise BadModelInput(str(e)) from e
    return {key: value.numpy() for key, value in outputs.items()}
