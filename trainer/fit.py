"""Fitting the MIL model: the strategy, the loss and metrics it is compiled
with, and training in phases (frozen backbone first, then fine-tuning) with
early stopping on the valid split."""

from __future__ import annotations

import logging
import math
from typing import List, NamedTuple, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from histopipe.core.configs import PipelineConfig, TrainingConfig
from histopipe.trainer import features, resume
from histopipe.trainer.devices import FLOAT32_POLICY, precision_policy
from histopipe.trainer.metrics import QuadraticWeightedKappa
from histopipe.trainer.model import ENCODER, build_embedding_model, build_mil_model


def learning_rate_at_epoch(epoch: int, training: TrainingConfig) -> float:
  """Linear warm-up over `warmup_epochs`, then cosine decay to 1% by the end."""
  peak = training.learning_rate
  if epoch < training.warmup_epochs:
    return peak * (epoch + 1) / (training.warmup_epochs + 1)
  span = max(training.epochs - training.warmup_epochs, 1)
  progress = (epoch - training.warmup_epochs) / span
  return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def ordinal_loss(targets, logits):
  return keras.losses.binary_crossentropy(targets, logits, from_logits=True)


def regression_loss(targets, logits):
  """The seeds' IDC head: the sigmoid output regressed on the 0/1 label
  (mean squared error), model.binary_head "regression"."""
  return keras.losses.mean_squared_error(targets, tf.sigmoid(logits))


def loss_of(config: PipelineConfig):
  if config.task == "binary" and config.model.binary_head == "regression":
    return regression_loss
  return ordinal_loss


def selection_metric(config: PipelineConfig) -> str:
  """The validation metric early stopping keeps the best model by."""
  name = "auc" if config.task == "binary" else "kappa"
  return f"val_{features.PROBABILITIES}_{name}"


def compile_model(model: keras.Model, config: PipelineConfig) -> None:
  metric = (keras.metrics.AUC(name="auc") if config.task == "binary"
            else QuadraticWeightedKappa(config.num_classes))
  model.compile(
      optimizer=keras.optimizers.Adam(config.training.learning_rate),
      # Binary: the single logit "label >= 1" is the two-class ordinal logit.
      loss={features.ORDINAL_LOGITS: loss_of(config)},
      metrics={features.PROBABILITIES: [metric]},
  )
  trace_steps_without_autograph(model)


def trace_steps_without_autograph(model: keras.Model) -> None:
  """Keras traces `train_step`, `test_step` and `predict_step` through
  AutoGraph, which parses and rewrites the source of every Keras and
  histopipe function they call, once per process: 12 of the 15 s that a
  head's first epoch took (the head-only Trainer's first epoch, 2-core CPU;
  a ResNet50's first step pays it too). Neither Keras' steps nor our layers
  branch or loop on a tensor in Python, so the graph is the same without it;
  a function that did would fail to trace, not train differently. Functions
  of our own that need AutoGraph are `tf.function`s of their own and keep it."""
  for step in ("train_step", "test_step", "predict_step"):
    setattr(model, step, tf.autograph.experimental.do_not_convert(getattr(model, step)))


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
  """Freezes or unfreezes the CNN backbone(s): the MIL model's encoder. A
  head on a frozen encoder's embeddings (model.encoder) has none."""
  if any(layer.name == ENCODER for layer in model.layers):
    model.get_layer(ENCODER).trainable = trainable


def fit_in_phases(model: keras.Model, config: PipelineConfig, strategy: tf.distribute.Strategy,
                  train: tf.data.Dataset, evaluation: Optional[tf.data.Dataset],
                  steps_per_epoch,
                  log_dir: str = "", state_dir: str = "") -> float:
  """Trains `model`: first `frozen_backbone_epochs` with the backbone frozen,
  then the rest of `epochs` with everything trainable; one learning-rate
  schedule runs across both. Each phase stops early on validation kappa (AUC
  for binary tasks), and the model ends with the best weights seen in either
  phase. Returns that kappa (AUC).

  With `state_dir`, training survives being killed (a preempted GPU node):
  each phase backs up its state every epoch there (Keras' BackupAndRestore:
  weights, optimizer, epoch; early stopping's best weights beside them), and
  a finished phase leaves its result; training started again on the same
  `state_dir` resumes after the last finished epoch.
  """
  training = config.training
  frozen = min(max(training.frozen_backbone_epochs, 0), training.epochs)
  if config.model.encoder:  # the head alone trains: one phase
    frozen = 0
  if frozen and not config.model.imagenet_weights:
    logging.warning("frozen_backbone_epochs=%d with a randomly initialised backbone: "
                    "the head trains on random features first", frozen)
  best_value, best = -math.inf, None
  for phase, (first, last, backbone_trainable) in enumerate(((0, frozen, False),
                                                              (frozen, training.epochs, True))):
    if last <= first:
      continue
    set_backbone_trainable(model, backbone_trainable)
    phase_dir = tf.io.gfile.join(state_dir, f"phase-{phase}") if state_dir else ""
    finished = resume.finished_phase(phase_dir) if phase_dir else None
    if finished is not None:
      logging.info("epochs %d-%d were trained before a restart: their result is restored",
                   first + 1, last)
      model.set_weights(finished.end_weights)
      value, weights = finished.best_value, finished.best_weights
    else:
      value, weights = _fit_phase(model, config, strategy, train, evaluation, steps_per_epoch,
                                  first, last, log_dir, phase_dir)
    if weights is not None and value > best_value:
      best_value = value
      best = WeightsSnapshot(weights, backbone_trainable)
  if best is not None:
    best.restore(model)
  set_backbone_trainable(model, True)
  return best_value


def _fit_phase(model: keras.Model, config: PipelineConfig, strategy: tf.distribute.Strategy,
               train, evaluation, steps_per_epoch, first: int, last: int, log_dir: str,
               phase_dir: str):
  """Epochs first+1..last of one phase; (best value, its weights)."""
  training = config.training
  with strategy.scope():
    compile_model(model, config)  # a change of `trainable` takes effect on compile
  stopping = dict(monitor=selection_metric(config), mode="max",
                  patience=max((last - first) // 3, 3), restore_best_weights=True)
  early_stopping = (resume.ResumableEarlyStopping(phase_dir, **stopping) if phase_dir
                    else keras.callbacks.EarlyStopping(**stopping))
  callbacks = [keras.callbacks.LearningRateScheduler(
      lambda epoch: learning_rate_at_epoch(epoch, training)), early_stopping]
  if phase_dir:
    callbacks.insert(0, keras.callbacks.BackupAndRestore(resume.backup_dir(phase_dir)))
  if log_dir:
    callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
  model.fit(train, validation_data=evaluation, initial_epoch=first, epochs=last,
            steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=2)
  if phase_dir:
    resume.save_finished_phase(phase_dir, model.get_weights(), early_stopping.best,
                               early_stopping.best_weights)
  return early_stopping.best, early_stopping.best_weights


class WeightsSnapshot(NamedTuple):
  """`model.get_weights()` and whether the backbone was trainable then.

  Keras orders a layer's weights trainable first, so freezing the backbone
  reorders `get_weights()`: a snapshot goes back under the same setting.
  """
  weights: List[np.ndarray]
  backbone_trainable: bool

  def restore(self, model: keras.Model) -> None:
    set_backbone_trainable(model, self.backbone_trainable)
    model.set_weights(self.weights)
    set_backbone_trainable(model, True)



def _new_model(config: PipelineConfig, embedding_size: Optional[int]) -> keras.Model:
  if config.model.encoder:
    return build_embedding_model(config.model, embedding_size, config.num_classes)
  return build_mil_model(config.model, config.tiles_per_bag, config.num_classes)


def build_model(config: PipelineConfig, strategy: tf.distribute.Strategy,
                embedding_size: Optional[int] = None) -> keras.Model:
  """The MIL model, its variables on the strategy's devices, under Keras'
  current precision policy: with model.encoder, the head alone, on
  embeddings of `embedding_size`."""
  with strategy.scope():
    return _new_model(config, embedding_size)


def float32_copy(model: keras.Model, config: PipelineConfig,
                 embedding_size: Optional[int] = None) -> keras.Model:
  """`model` rebuilt under the float32 policy with its trained weights: what
  is exported whatever the training step computed in. A mixed_float16 graph
  casts around every layer; a CPU consumer (the Evaluator, `score`, a CPU TF
  Serving replica) answered 8 bags in 367 ms with it against 153 ms in float32.
  Variables are float32 under both policies, so the weights carry over as they are."""
  with precision_policy(FLOAT32_POLICY):
    copy = _new_model(config, embedding_size)
  copy.set_weights(model.get_weights())
  return copy
