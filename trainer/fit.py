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
from histopipe.trainer import features
from histopipe.trainer.metrics import QuadraticWeightedKappa
from histopipe.trainer.model import build_mil_model

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
      loss={features.ORDINAL_LOGITS: ordinal_loss},
      metrics={features.PROBABILITIES: [metric]},
  )


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
  """Freezes or unfreezes the CNN backbone(s): the Models nested in the MIL model."""
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      layer.trainable = trainable


def fit_in_phases(model: keras.Model, config: PipelineConfig, strategy: tf.distribute.Strategy,
                  train: tf.data.Dataset, evaluation: Optional[tf.data.Dataset],
                  steps_per_epoch,
                  log_dir: str = "") -> float:
  """Trains `model`: first `frozen_backbone_epochs` with the backbone frozen,
  then the rest of `epochs` with everything trainable; one learning-rate
  schedule runs across both. Each phase stops early on validation kappa (AUC
  for binary tasks), and the model ends with the best weights seen in either
  phase. Returns that kappa (AUC).
  """
  training = config.training
  frozen = min(max(training.frozen_backbone_epochs, 0), training.epochs)
  if frozen and not config.model.imagenet_weights:
    logging.warning("frozen_backbone_epochs=%d with a randomly initialised backbone: "
                    "the head trains on random features first", frozen)
  best_value, best = -math.inf, None
  for first, last, backbone_trainable in ((0, frozen, False),
                                          (frozen, training.epochs, True)):
    if last <= first:
      continue
    set_backbone_trainable(model, backbone_trainable)
    with strategy.scope():
      compile_model(model, config)  # a change of `trainable` takes effect on compile
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=selection_metric(config), mode="max",
        patience=max((last - first) // 3, 3), restore_best_weights=True)
    callbacks = [keras.callbacks.LearningRateScheduler(
        lambda epoch: learning_rate_at_epoch(epoch, training)), early_stopping]
    if log_dir:
      callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    model.fit(train, validation_data=evaluation, initial_epoch=first, epochs=last,
              steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=2)
    if early_stopping.best_weights is not None and early_stopping.best > best_value:
      best_value = early_stopping.best
      best = WeightsSnapshot(early_stopping.best_weights, backbone_trainable)
  if best is not None:
    best.restore(model)
  set_backbone_trainable(model, True)
  return best_value


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


def training_strategy(training: TrainingConfig) -> tf.distribute.Strategy:
  """MirroredStrategy over a node's GPUs (mixed precision if asked); CPU: default."""
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    return tf.distribute.get_strategy()
  if training.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  logging.info("training on %d GPU(s), mixed precision %s", len(gpus),
               training.mixed_precision)
  return tf.distribute.MirroredStrategy()


def build_model(config: PipelineConfig, strategy: tf.distribute.Strategy) -> keras.Model:
  with strategy.scope():
    return build_mil_model(config.model, config.tiles_per_bag, config.num_classes)
