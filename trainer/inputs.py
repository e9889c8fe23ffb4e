"""The Trainer's input pipeline: bags read from the Examples artifact, the
transform graph applied in it, augmented, batched, and balanced by class.

Memory is bounded by settings, not by the split: the reader holds
`training.shuffle_buffer_bags` serialized bags to shuffle (plus the few that
tf.data reads ahead of each open shard), and class balancing reads that one
stream once, keeping or dropping each bag as it passes."""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from histopipe.core.configs import PipelineConfig, TrainingConfig
from histopipe.core.errors import UserError
from histopipe.trainer import embedding_bags, features
from histopipe.trainer.augmentation import BagAugmenter
from histopipe.trainer.model import ordinal_targets

# class_balance choices that choose which bags a training epoch holds (the
# others weigh the loss, or do nothing).
RESAMPLING = ("balanced_sampling", "undersample")


def reader_options(training_config: TrainingConfig, training: bool,
                   drop_final_batch: bool = False) -> tfxio.TensorFlowDatasetOptions:
  """How tfxio reads a split. For training, tfxio lists the split's files with
  `tf.data.Dataset.list_files(shuffle=True, seed)`, which reshuffles on every
  iteration: each epoch reads the shards in a new order, then shuffles bags
  through a buffer of `shuffle_buffer_bags`. tfxio's own buffer (10,000
  records) would hold all of a PANDA train split and read it whole before
  each epoch's first step. The shards are interleaved as tf.data's default
  decides: one at a time on a 2-core host (measured); `reader_num_threads`
  stays AUTOTUNE, as a fixed value above the host's cores fails when the
  dataset is iterated."""
  return tfxio.TensorFlowDatasetOptions(
      batch_size=training_config.batch_size if training else training_config.eval_batch_size,
      shuffle=training,
      shuffle_buffer_size=training_config.shuffle_buffer_bags,
      shuffle_seed=training_config.seed,
      num_epochs=1,  # Keras re-iterates the finite dataset every epoch
      drop_final_batch=drop_final_batch,
  )


def read_raw_bags(file_pattern, data_accessor, schema, training_config: TrainingConfig,
                  training: bool, drop_final_batch: bool = False) -> tf.data.Dataset:
  """Batches of parsed raw bags, as the Trainer's data accessor reads them."""
  return data_accessor.tf_dataset_factory(
      file_pattern, reader_options(training_config, training, drop_final_batch), schema)


def read_bags(file_pattern, data_accessor, tf_transform_output: tft.TFTransformOutput,
              config: PipelineConfig, training: bool,
              drop_final_batch: bool = False,
              embedding_size: Optional[int] = None) -> tf.data.Dataset:
  # Resampling re-batches the bags it keeps, so the batch to drop is its own:
  # dropped by the reader, up to a batch of bags would be missing from the
  # counts an undersampled epoch is drawn against.
  resampled = training and config.training.class_balance in RESAMPLING
  schema = tf_transform_output.raw_metadata.schema
  if config.model.encoder:
    schema = embedding_bags.reading_schema(schema)
  raw = read_raw_bags(file_pattern, data_accessor, schema,
                      config.training, training, drop_final_batch and not resampled)
  return model_batches(raw, tf_transform_output, config, training, drop_final_batch,
                       embedding_size)


def model_batches(raw: tf.data.Dataset, tf_transform_output: tft.TFTransformOutput,
                  config: PipelineConfig, training: bool,
                  drop_final_batch: bool = False,
                  embedding_size: Optional[int] = None) -> tf.data.Dataset:
  """Batches of parsed raw bags -> (inputs, targets[, sample weights]) for Keras:
  the transform graph, then, for training, balancing and augmentation.
  `drop_final_batch` drops an undersampled epoch's last, partial batch.
  With model.encoder, embedding bags of `embedding_size` -> the head's
  inputs, padded to each batch's largest bag (embedding_bags.py); nothing
  to transform or augment."""
  training_config = config.training
  if config.model.encoder and not embedding_size:
    raise ValueError("embedding bags need their embedding_size")
  tft_layer = None if config.model.encoder else tf_transform_output.transform_features_layer()
  num_classes = config.num_classes
  augment = (BagAugmenter(config.augmentation, seed=training_config.seed)
             if training and not config.model.encoder else None)
  balance = training_config.class_balance if training else "none"
  if balance not in ("none", "class_weights") + RESAMPLING:
    raise ValueError(f"unknown class_balance {balance!r}")
  # Label counts are needed only to balance training batches.
  counts = label_counts(tf_transform_output) if balance != "none" else {}
  weights = tf.constant(class_weights(counts, num_classes), tf.float32)
  if balance == "balanced_sampling":
    raw = balanced_by_class(raw, counts, training_config)
  elif balance == "undersample":
    raw = undersampled(raw, counts, training_config, drop_final_batch)

  def inputs_and_labels(raw_batch):
    if config.model.encoder:
      return (embedding_bags.head_inputs(raw_batch, embedding_size),
              raw_batch[features.LABEL_KEY])
    transformed = tft_layer(raw_batch)
    if augment is not None:
      transformed = augment(transformed)
    return ({features.TILES_XF: transformed[features.TILES_XF],
             features.TILE_VALID_XF: transformed[features.TILE_VALID_XF]},
            transformed[features.LABEL_KEY])

  def to_model_io(raw_batch) -> tuple:  # (inputs, targets[, sample weights])
    inputs, labels = inputs_and_labels(raw_batch)
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


def balanced_by_class(raw: tf.data.Dataset, counts: Dict[int, int],
                      training: TrainingConfig) -> tf.data.Dataset:
  """Every present class drawn equally often, from one endless stream of
  the split (pass after pass, each in a new order): rejection sampling
  towards a uniform target from the initial distribution `counts`, which
  keeps a bag of class k with probability min_count / count_k, so each pass
  keeps about min_count bags of every class and rare bags repeat across
  passes. That acceptance is `tf.data.Dataset.rejection_resample`'s,
  (t_k / p_k) / max_j (t_j / p_j), when it draws nothing from the original
  stream; rejection_resample itself, on a skewed split, also draws from
  the original stream (`sample_from_datasets` over both), and so in TF 2.16
  reads the input twice at once: two readers, two shuffle buffers."""
  acceptance = tf.constant(_acceptance_by_class(counts), tf.float32)
  bags = tf.data.Dataset.zip((raw.unbatch().repeat(), _uniform_draws(training)))
  kept = bags.filter(lambda bag, draw: draw < tf.gather(acceptance, _label(bag)))
  return kept.map(lambda kept_bag, _: kept_bag).batch(training.batch_size)


def undersampled(raw: tf.data.Dataset, counts: Dict[int, int], training: TrainingConfig,
                 drop_final_batch: bool = False) -> tf.data.Dataset:
  """One epoch from one pass over the split: a random subset of exactly
  min_count bags of every present class, as imbalanced-learn's
  RandomUnderSampler draws (each subset of that size equally likely), a new
  one on every iteration. Selection sampling (Knuth, TAOCP 3.4.2, Algorithm
  S) per class keeps a bag with probability (still needed) / (still to
  come), two counters per class in a `scan`. A filter keeping each bag with
  probability min_count / count_k would hold min_count bags a class only on
  average, give or take up to sqrt(min_count) (29, 3%, for PANDA's ~860
  train bags of grade 5): class shares that wander from epoch to epoch, and
  an epoch whose length steps_per_epoch could not state."""
  num_classes = max(counts) + 1
  smallest = min(counts.values())
  class_bags = tf.constant([counts.get(k, 0) for k in range(num_classes)], tf.float32)
  quota = tf.constant([smallest if counts.get(k) else 0 for k in range(num_classes)],
                      tf.float32)

  def select(state, bag_and_draw):  # (seen, taken) per class -> keep this bag?
    seen, taken = state
    bag, draw = bag_and_draw
    label = _label(bag)
    still_needed = quota[label] - taken[label]
    # More bags of a class than its count (counts from another split) reads as
    # "the rest are needed": the class fills its quota from the bags that remain.
    still_to_come = tf.maximum(class_bags[label] - seen[label], 0.0)
    keep = tf.logical_and(still_needed > 0, draw * still_to_come < still_needed)
    one_hot = tf.one_hot(label, num_classes, dtype=tf.float32)
    return (seen + one_hot, taken + one_hot * tf.cast(keep, tf.float32)), (bag, keep)

  start = (tf.zeros([num_classes], tf.float32), tf.zeros([num_classes], tf.float32))
  epoch = tf.data.Dataset.zip((raw.unbatch(), _uniform_draws(training))).scan(start, select)
  kept = epoch.filter(lambda bag, keep: keep).map(lambda kept_bag, _: kept_bag)
  return kept.batch(training.batch_size, drop_remainder=drop_final_batch)


def epoch_bags(counts: Dict[int, int], class_balance: str) -> int:
  """Bags in a training epoch: the split's, or the classes present times the
  smallest class's count when undersampling."""
  if class_balance == "undersample":
    return len(counts) * min(counts.values())
  return sum(counts.values())


def _acceptance_by_class(counts: Dict[int, int]) -> List[float]:
  """Rejection sampling's acceptance towards equal class shares: 1 for the
  smallest class, min_count / count_k for the others, 0 for absent labels."""
  smallest = min(counts.values())
  return [smallest / counts[k] if counts.get(k) else 0.0 for k in range(max(counts) + 1)]


def _uniform_draws(training: TrainingConfig) -> tf.data.Dataset:
  """Endless uniform [0, 1) draws, a new sequence on every iteration (a new
  subset each epoch), reproducible from `training.seed`: a stream of its own
  beside the bags, not a stateful random op inside the filter, whose
  sequence would start again with each epoch's iterator."""
  resolution = 2**24  # float32 holds every multiple of 2**-24 below 1 exactly
  return tf.data.Dataset.random(seed=training.seed, rerandomize_each_iteration=True).map(
      lambda value: tf.cast(tf.math.floormod(value, resolution), tf.float32) / resolution)


def _label(bag) -> tf.Tensor:
  return tf.reshape(tf.cast(bag[features.LABEL_KEY], tf.int32), [])


def global_batches(training: TrainingConfig, replicas: int) -> TrainingConfig:
  """`training` with its per-replica batch sizes made global (times the replicas)."""
  return dataclasses.replace(training, batch_size=training.batch_size * replicas,
                             eval_batch_size=training.eval_batch_size * replicas)


def training_inputs(fn_args, tf_transform_output: tft.TFTransformOutput,
                    config: PipelineConfig, replicas: int = 1,
                    embedding_size: Optional[int] = None):
  """(train, validation, steps_per_epoch) for `fit`, from the Trainer's or
  the Tuner's fn_args: `training.batch_size` bags per replica each step.
  Across several replicas the last, partial training batch is dropped, so
  no replica steps without a bag (its BatchNorm and loss would see none)."""
  config = dataclasses.replace(config, training=global_batches(config.training, replicas))
  training = config.training
  resampled = training.class_balance in RESAMPLING
  if replicas > 1 or resampled:
    counts = label_counts(tf_transform_output)
    train_bags = epoch_bags(counts, training.class_balance)
    if replicas > 1 and train_bags < training.batch_size:
      held = ("the train split has" if training.class_balance != "undersample" else
              f"an undersampled epoch ({len(counts)} classes x {min(counts.values())}) has")
      raise UserError(f"{held} {train_bags} bags, fewer than one global batch "
                      f"({training.batch_size}: training.batch_size bags on each of "
                      f"{replicas} replicas); lower training.batch_size")
  train = read_bags(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                    config, training=True, drop_final_batch=replicas > 1,
                    embedding_size=embedding_size)
  validation = read_bags(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                         config, training=False, embedding_size=embedding_size)
  steps_per_epoch = training.steps_per_epoch or None
  if resampled:
    # Balanced sampling's stream is endless; an undersampled epoch is one
    # subset's batches (its partial last one dropped across replicas), and
    # the repeat below draws a new subset for the next.
    whole_batches = math.floor if replicas > 1 else math.ceil
    steps_per_epoch = steps_per_epoch or whole_batches(train_bags / training.batch_size)
  if steps_per_epoch and training.class_balance != "balanced_sampling":
    train = train.repeat()
  return train, validation, steps_per_epoch
