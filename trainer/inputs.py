"""The Trainer's input pipeline: bags read from the Examples artifact, the
transform graph applied in it, augmented, batched, and balanced by class."""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List

import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from histopipe.core.configs import PipelineConfig, TrainingConfig
from histopipe.core.errors import UserError
from histopipe.trainer import features
from histopipe.trainer.augmentation import BagAugmenter
from histopipe.trainer.model import ordinal_targets


def read_bags(file_pattern, data_accessor, tf_transform_output: tft.TFTransformOutput,
              config: PipelineConfig, training: bool,
              drop_final_batch: bool = False) -> tf.data.Dataset:
  training_config = config.training
  options = tfxio.TensorFlowDatasetOptions(
      batch_size=training_config.batch_size if training else training_config.eval_batch_size,
      shuffle=training,
      shuffle_seed=training_config.seed,
      num_epochs=1,  # Keras re-iterates the finite dataset every epoch
      drop_final_batch=drop_final_batch,
  )
  raw = data_accessor.tf_dataset_factory(file_pattern, options,
                                         tf_transform_output.raw_metadata.schema)
  return model_batches(raw, tf_transform_output, config, training)


def model_batches(raw: tf.data.Dataset, tf_transform_output: tft.TFTransformOutput,
                  config: PipelineConfig, training: bool) -> tf.data.Dataset:
  """Batches of parsed raw bags -> (inputs, targets[, sample weights]) for Keras:
  the transform graph, then, for training, balancing and augmentation."""
  training_config = config.training
  tft_layer = tf_transform_output.transform_features_layer()
  num_classes = config.num_classes
  augment = BagAugmenter(config.augmentation, seed=training_config.seed) if training else None
  balance = training_config.class_balance if training else "none"
  if balance not in ("none", "class_weights", "balanced_sampling"):
    raise ValueError(f"unknown class_balance {balance!r}")
  # Label counts are needed only to balance training batches.
  counts = label_counts(tf_transform_output) if balance != "none" else {}
  weights = tf.constant(class_weights(counts, num_classes), tf.float32)
  if balance == "balanced_sampling":
    raw = balanced_by_class(raw, sorted(counts), training_config)

  def to_model_io(raw_batch) -> tuple:  # (inputs, targets[, sample weights])
    transformed = tft_layer(raw_batch)
    if augment is not None:
      transformed = augment(transformed)
    inputs = {features.TILES_XF: transformed[features.TILES_XF],
              features.TILE_VALID_XF: transformed[features.TILE_VALID_XF]}
    labels = transformed[features.LABEL_KEY]
    targets = {features.ORDINAL_LOGITS: ordinal_targets(labels, num_classes),
               features.PROBABILITIES: tf.reshape(labels, [-1, 1])}
    if balance != "class_weights":
      return inputs, targets
    sample_weights = tf.gather(weights, tf.reshape(tf.cast(labels, tf.int32), [-1]))
    return inputs, targets, {features.ORDINAL_LOGITS: sample_weights}

  return raw.map(to_model_io, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
      tf.data.AUTOTUNE)


def label_counts(tf_transform_output: tft.TFTransformOutput) -> Dict[int, int]:
  """Training-split label counts, from the Transform's vocabulary analyzer."""
  path = tf_transform_output.vocabulary_file_by_name(features.LABEL_COUNTS_VOCABULARY)
  counts = {}
  with tf.io.gfile.GFile(path) as f:
    for line in f:
      count, label = line.split()
      counts[int(label)] = int(float(count))
  return counts


def class_weights(counts: Dict[int, int], num_classes: int) -> List[float]:
  """total / (classes present * count): each present class weighs the same."""
  total = sum(counts.values())
  return [total / (len(counts) * counts[k]) if counts.get(k) else 1.0
          for k in range(num_classes)]


def balanced_by_class(raw: tf.data.Dataset, labels: List[int],
                      training: TrainingConfig) -> tf.data.Dataset:
  """Every present class drawn equally often (each class's bags repeat)."""
  bags = raw.unbatch()
  per_class = [bags.filter(lambda bag, k=k: tf.equal(
      tf.reshape(tf.cast(bag[features.LABEL_KEY], tf.int32), []), k)).repeat()
               for k in labels]
  return tf.data.Dataset.sample_from_datasets(
      per_class, weights=[1.0 / len(labels)] * len(labels), seed=training.seed,
  ).batch(training.batch_size)


def global_batches(training: TrainingConfig, replicas: int) -> TrainingConfig:
  """`training` with its per-replica batch sizes made global (times the replicas)."""
  return dataclasses.replace(training, batch_size=training.batch_size * replicas,
                             eval_batch_size=training.eval_batch_size * replicas)


def training_inputs(fn_args, tf_transform_output: tft.TFTransformOutput,
                    config: PipelineConfig, replicas: int = 1):
  """(train, validation, steps_per_epoch) for `fit`, from the Trainer's or
  the Tuner's fn_args: `training.batch_size` bags per replica each step.
  Across several replicas the last, partial training batch is dropped, so
  no replica steps without a bag (its BatchNorm and loss would see none)."""
  config = dataclasses.replace(config, training=global_batches(config.training, replicas))
  if replicas > 1:
    train_bags = sum(label_counts(tf_transform_output).values())
    if train_bags < config.training.batch_size:
      raise UserError(f"the train split has {train_bags} bags, fewer than one global batch "
                      f"({config.training.batch_size}: training.batch_size bags on each of "
                      f"{replicas} replicas); lower training.batch_size")
  train = read_bags(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                    config, training=True, drop_final_batch=replicas > 1)
  validation = read_bags(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                         config, training=False)
  steps_per_epoch = config.training.steps_per_epoch or None
  if config.training.class_balance == "balanced_sampling":
    # An endless stream: an epoch is as many bags as the training split has.
    train_bags = sum(label_counts(tf_transform_output).values())
    steps_per_epoch = steps_per_epoch or math.ceil(train_bags / config.training.batch_size)
  elif steps_per_epoch:
    train = train.repeat()
  return train, validation, steps_per_epoch
