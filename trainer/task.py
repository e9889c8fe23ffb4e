"""`run_fn` for the TFX Trainer: input pipeline, training, SavedModel export.

Examples stay encoded on disk (`Transform(materialize=False)`); the transform
graph is applied here in the input pipeline, and again inside the serving
signature, so training and serving share one preprocessing.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, Tuple

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from pipeline.configs import PipelineConfig, TrainingConfig
from trainer import features
from trainer.augmentation import BagAugmenter
from trainer.metrics import QuadraticWeightedKappa
from trainer.model import build_mil_model, ordinal_targets


def _dataset(file_pattern, data_accessor, tf_transform_output: tft.TFTransformOutput,
             config: PipelineConfig, training: bool) -> tf.data.Dataset:
  training_config = config.training
  options = tfxio.TensorFlowDatasetOptions(
      batch_size=training_config.batch_size if training else training_config.eval_batch_size,
      shuffle=training,
      shuffle_seed=training_config.seed,
      num_epochs=1,  # Keras re-iterates the finite dataset every epoch
  )
  raw = data_accessor.tf_dataset_factory(file_pattern, options,
                                         tf_transform_output.raw_metadata.schema)
  tft_layer = tf_transform_output.transform_features_layer()
  num_classes = config.num_classes
  augment = BagAugmenter(config.augmentation, seed=training_config.seed) if training else None

  def to_model_io(raw_batch) -> Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]]:
    transformed = tft_layer(raw_batch)
    if augment is not None:
      transformed = augment(transformed)
    inputs = {features.TILES_XF: transformed[features.TILES_XF],
              features.TILE_VALID_XF: transformed[features.TILE_VALID_XF]}
    labels = transformed[features.LABEL_KEY]
    targets = {features.ORDINAL_LOGITS: ordinal_targets(labels, num_classes),
               features.PROBABILITIES: tf.reshape(labels, [-1, 1])}
    return inputs, targets

  return raw.map(to_model_io, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
      tf.data.AUTOTUNE)


def learning_rate_at_epoch(epoch: int, training: TrainingConfig) -> float:
  """Linear warm-up over `warmup_epochs`, then cosine decay to 1% by the end."""
  peak = training.learning_rate
  if epoch < training.warmup_epochs:
    return peak * (epoch + 1) / (training.warmup_epochs + 1)
  span = max(training.epochs - training.warmup_epochs, 1)
  progress = (epoch - training.warmup_epochs) / span
  return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def _ordinal_loss(targets, logits):
  return keras.losses.binary_crossentropy(targets, logits, from_logits=True)


def compile_model(model: keras.Model, config: PipelineConfig) -> None:
  model.compile(
      optimizer=keras.optimizers.Adam(config.training.learning_rate),
      loss={features.ORDINAL_LOGITS: _ordinal_loss},
      metrics={features.PROBABILITIES: [QuadraticWeightedKappa(config.num_classes)]},
  )


def _serving_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput):
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  serving_spec = {key: raw_spec[key] for key in features.MODEL_INPUT_KEYS}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve_tf_examples(serialized):
    transformed = model.tft_layer(tf.io.parse_example(serialized, serving_spec))
    outputs = model({features.TILES_XF: transformed[features.TILES_XF],
                     features.TILE_VALID_XF: transformed[features.TILE_VALID_XF]},
                    training=False)
    return {key: outputs[key] for key in
            (features.GRADE, features.PROBABILITIES, features.ATTENTION)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def transform_features(serialized):
    return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

  return {"serving_default": serve_tf_examples, "transform_features": transform_features}


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  config = PipelineConfig.from_json(fn_args.custom_config["config"])
  keras.utils.set_random_seed(config.training.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  train = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                   config, training=True)
  evaluation = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                        config, training=False)
  if config.training.steps_per_epoch:
    train = train.repeat()

  model = build_mil_model(config.model, config.tiling.tiles_per_slide, config.num_classes)
  compile_model(model, config)
  callbacks = [
      keras.callbacks.LearningRateScheduler(
          lambda epoch: learning_rate_at_epoch(epoch, config.training)),
      keras.callbacks.EarlyStopping(monitor="val_probabilities_kappa", mode="max",
                                    patience=max(config.training.epochs // 3, 3),
                                    restore_best_weights=True),
      keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir, "logs")),
  ]
  history = model.fit(train, validation_data=evaluation, epochs=config.training.epochs,
                      steps_per_epoch=config.training.steps_per_epoch or None,
                      callbacks=callbacks, verbose=2)
  best = max(history.history.get("val_probabilities_kappa", [float("nan")]))
  logging.info("best eval kappa during training: %.3f", best)
  model.save(fn_args.serving_model_dir, save_format="tf",
             signatures=_serving_signatures(model, tf_transform_output))
