"""A Trainer that is killed (a preempted GPU node, a crash) resumes where it
stopped: its training state lives in a folder that is the same for every try
of the same work, and is removed once the model is exported.

Per phase of `fit.fit_in_phases` the folder holds Keras' BackupAndRestore
checkpoint (weights, optimizer, epoch; written every epoch), early stopping's
state beside it (its best value, best weights and patience count, which
BackupAndRestore does not keep), and, once the phase ends, its result.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import List, NamedTuple, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

_EARLY_STOPPING_FILE = "early_stopping.npz"
_FINISHED_FILE = "finished.npz"


def training_state_dir(fn_args) -> str:
  """The Trainer's state folder: beside its executions' outputs (under the
  Trainer's folder of the pipeline root, local or a bucket), named by what
  the training depends on (the input files, the transform graph, the settings
  and hyperparameters), so a retry of the same work (KFP's, with the same
  executor input; a local re-run after a crash, with a new execution) finds
  it and different work never does."""
  key = hashlib.sha256(json.dumps(
      [list(fn_args.train_files), list(fn_args.eval_files), fn_args.transform_output,
       fn_args.custom_config, fn_args.hyperparameters], sort_keys=True, default=str
  ).encode()).hexdigest()[:16]
  # serving_model_dir is <Trainer's folder>/model/<execution>/Format-Serving.
  trainer_folder = fn_args.serving_model_dir
  for _ in range(3):
    trainer_folder = trainer_folder.rstrip("/").rsplit("/", 1)[0]
  return f"{trainer_folder}/training_state/{key}"


def remove(state_dir: str) -> None:
  if state_dir and tf.io.gfile.exists(state_dir):
    tf.io.gfile.rmtree(state_dir)


def backup_dir(phase_dir: str) -> str:
  return tf.io.gfile.join(phase_dir, "backup")


def _write_arrays(path: str, **arrays) -> None:
  """An .npz written aside and renamed, so a kill mid-write leaves the last one whole."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
  with tf.io.gfile.GFile(path + ".partial", "wb") as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(path + ".partial", path, overwrite=True)


def _read_arrays(path: str) -> Optional[dict]:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "rb") as f:
    return dict(np.load(io.BytesIO(f.read()), allow_pickle=False))


def _weights(arrays: dict, prefix: str) -> Optional[List[np.ndarray]]:
  count = int(arrays[f"{prefix}_count"])
  return [arrays[f"{prefix}_{i}"] for i in range(count)] if count >= 0 else None


def _weight_arrays(prefix: str, weights: Optional[List[np.ndarray]]) -> dict:
  arrays = {f"{prefix}_count": np.array(-1 if weights is None else len(weights))}
  arrays.update({f"{prefix}_{i}": w for i, w in enumerate(weights or [])})
  return arrays


class FinishedPhase(NamedTuple):
  end_weights: List[np.ndarray]
  best_value: float
  best_weights: Optional[List[np.ndarray]]


def save_finished_phase(phase_dir: str, end_weights, best_value: float, best_weights) -> None:
  _write_arrays(tf.io.gfile.join(phase_dir, _FINISHED_FILE), best_value=np.array(best_value),
                **_weight_arrays("end", end_weights), **_weight_arrays("best", best_weights))


def finished_phase(phase_dir: str) -> Optional[FinishedPhase]:
  arrays = _read_arrays(tf.io.gfile.join(phase_dir, _FINISHED_FILE))
  if arrays is None:
    return None
  return FinishedPhase(_weights(arrays, "end"), float(arrays["best_value"]),
                       _weights(arrays, "best"))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
  """EarlyStopping whose state (best value and epoch, best weights, epochs
  without improvement) is written to `phase_dir` after every epoch and read
  back when training starts there again: BackupAndRestore alone would resume
  the epochs but forget the best model seen before the restart."""

  def __init__(self, phase_dir: str, **kwargs):
    super().__init__(**kwargs)
    self.path = tf.io.gfile.join(phase_dir, _EARLY_STOPPING_FILE)

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    arrays = _read_arrays(self.path)
    if arrays is not None:
      self.best, self.best_epoch = float(arrays["best"]), int(arrays["best_epoch"])
      self.wait = int(arrays["wait"])
      self.best_weights = _weights(arrays, "weights")
      logging.info("early stopping resumed: best %s %.4f at epoch %d", self.monitor,
                   self.best, self.best_epoch + 1)

  def on_epoch_end(self, epoch, logs=None):
    super().on_epoch_end(epoch, logs)
    _write_arrays(self.path, best=np.array(self.best), best_epoch=np.array(self.best_epoch),
                  wait=np.array(self.wait), **_weight_arrays("weights", self.best_weights))
