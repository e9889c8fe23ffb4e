"""The training input's memory is bounded by settings: the reader shuffles
shard order and bags through a buffer of `training.shuffle_buffer_bags`, and
class balancing reads that one stream once.

Shards are real gzipped TFRecords of tf.Examples read through the Trainer's
own data accessor (tfxio); the class-balance tests read a Python generator
that counts how many readers of it are open at once."""

import collections
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.components.trainer.fn_args_utils import DataAccessor
from tfx.components.util import examples_utils, tfxio_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils

from histopipe.core.configs import ConfigError, PipelineConfig, TrainingConfig
from histopipe.trainer import features, inputs

INDEX = "index"  # a bag's position in the order it was written


def _write_split(folder, shards: int, bags_per_shard: int):
  """An Examples artifact whose train split is `shards` gzipped TFRecord
  files, as SlideExampleGen names them; bag i holds index i. Returns the
  Trainer's data accessor for it, recording the options it was asked for,
  the split's file pattern and the recorded options."""
  split = os.path.join(folder, "Split-train")
  os.makedirs(split)
  for shard in range(shards):
    name = os.path.join(split, f"data_tfrecord-{shard:05d}-of-{shards:05d}.gz")
    with tf.io.TFRecordWriter(name, options="GZIP") as writer:
      for index in range(shard * bags_per_shard, (shard + 1) * bags_per_shard):
        example = tf.train.Example(features=tf.train.Features(feature={
            INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[index]))}))
        writer.write(example.SerializeToString())
  examples = standard_artifacts.Examples()
  examples.uri = str(folder)
  examples.split_names = artifact_utils.encode_split_names(["train"])
  examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
  trainers_factory = tfxio_utils.get_tf_dataset_factory_from_artifact([examples], [])
  asked = []

  def recording_factory(file_pattern, options, schema):
    asked.append(options)
    return trainers_factory(file_pattern, options, schema)

  accessor = DataAccessor(tf_dataset_factory=recording_factory, record_batch_factory=None,
                          data_view_decode_fn=None)
  pattern = [io_utils.all_files_pattern(artifact_utils.get_split_uri([examples], "train"))]
  return accessor, pattern, asked


def _index_schema() -> schema_pb2.Schema:
  schema = schema_pb2.Schema()
  feature = schema.feature.add(name=INDEX, type=schema_pb2.INT)
  feature.shape.dim.add(size=1)
  feature.presence.min_fraction = 1.0
  return schema


def _indices(dataset) -> list:
  return [int(i) for batch in dataset for i in batch[INDEX].numpy().ravel()]


def _first_seen(values) -> list:
  return list(dict.fromkeys(values))


def test_training_reads_the_shards_in_a_new_order_each_epoch(tmp_path):
  shards, bags_per_shard = 12, 25
  accessor, pattern, _ = _write_split(tmp_path, shards, bags_per_shard)
  training = TrainingConfig(batch_size=4, seed=7, shuffle_buffer_bags=16)
  dataset = inputs.read_raw_bags(pattern, accessor, _index_schema(), training, training=True)
  # Keras iterates the finite dataset afresh each epoch.
  epochs = [_indices(dataset) for _ in range(2)]
  for order in epochs:
    assert sorted(order) == list(range(shards * bags_per_shard))  # every bag once
  shard_orders = [_first_seen(index // bags_per_shard for index in order) for order in epochs]
  assert shard_orders[0] != shard_orders[1], shard_orders
  assert all(order != sorted(order) for order in shard_orders), shard_orders
  assert epochs[0] != epochs[1]


def test_the_shuffle_buffer_holds_the_setting_in_bags(tmp_path):
  accessor, pattern, asked = _write_split(tmp_path, shards=1, bags_per_shard=400)
  buffer_bags = 16
  training = TrainingConfig(batch_size=4, seed=3, shuffle_buffer_bags=buffer_bags)
  order = _indices(inputs.read_raw_bags(pattern, accessor, _index_schema(), training,
                                        training=True))
  assert asked[-1].shuffle_buffer_size == buffer_bags
  # A buffer of B bags sends out its i-th bag from among the first i + B
  # read: no bag leaves more than B - 1 places early. Most bags of a buffer
  # of tfxio's default (10,000) would; a much smaller one would reach fewer.
  earliest = max(index - position for position, index in enumerate(order))
  assert buffer_bags // 2 <= earliest < buffer_bags, earliest
  # Validation is read in file order, without a buffer.
  validation = _indices(inputs.read_raw_bags(pattern, accessor, _index_schema(), training,
                                             training=False))
  assert validation == sorted(validation) and asked[-1].shuffle is False


class _CountedSource:
  """Parsed raw batches like the reader's, from a Python generator that
  counts the readers open on it at once: a second pass over the split at the
  same time is a second reader and a second shuffle buffer."""

  def __init__(self, labels, batch_size: int = 10):
    self.labels = np.asarray(labels, np.int64)
    self.open_now = self.most_open = self.passes = 0
    signature = {features.LABEL_KEY: tf.TensorSpec([1], tf.int64),
                 INDEX: tf.TensorSpec([1], tf.int64)}
    self.dataset = tf.data.Dataset.from_generator(
        self._bags, output_signature=signature).batch(batch_size)

  def _bags(self):
    self.passes += 1
    self.open_now += 1
    self.most_open = max(self.most_open, self.open_now)
    try:
      for index, label in enumerate(self.labels):
        yield {features.LABEL_KEY: [label], INDEX: [index]}
    finally:
      self.open_now -= 1

  @property
  def counts(self):
    return dict(collections.Counter(self.labels.tolist()))


def _skewed_labels(bags: int, seed: int = 0) -> np.ndarray:
  """80/15/5 of three labels, in a random order."""
  labels = np.repeat([0, 1, 2], [bags * 80 // 100, bags * 15 // 100, bags * 5 // 100])
  return np.random.default_rng(seed).permutation(labels)


def _labels_and_indices(batches):
  batches = list(batches)  # a dataset iterated twice would be two draws
  labels = np.concatenate([b[features.LABEL_KEY].numpy().ravel() for b in batches])
  indices = np.concatenate([b[INDEX].numpy().ravel() for b in batches])
  return labels, indices


def test_balanced_sampling_draws_each_class_a_third_of_the_time_in_one_pass():
  source = _CountedSource(_skewed_labels(3000))
  balanced = inputs.balanced_by_class(source.dataset, source.counts,
                                      TrainingConfig(batch_size=30, seed=1))
  labels, indices = _labels_and_indices(balanced.take(100))  # 3,000 draws
  shares = {k: n / len(labels) for k, n in sorted(collections.Counter(labels.tolist()).items())}
  print("balanced_sampling shares of 3,000 draws over 80/15/5:", shares)
  assert set(shares) == {0, 1, 2}
  assert all(abs(share - 1 / 3) < 0.03 for share in shares.values()), shares
  # One reader at a time: 3,000 draws kept from about 20,000 bags read pass
  # after pass, so the rare class's 150 bags each came several times.
  assert source.most_open == 1 and source.passes > 1
  assert len(set(indices[labels == 2].tolist())) <= 150 < (labels == 2).sum()
  assert inputs.epoch_bags(source.counts, "balanced_sampling") == 3000


def test_the_reader_count_sees_a_second_reader():
  """The counter is not blind: TF's own rejection_resample, on the same
  skewed source, mixes the original stream with the filtered one, and so
  reads the source twice at once (why balanced_by_class filters instead)."""
  source = _CountedSource(_skewed_labels(3000))
  resampled = source.dataset.unbatch().rejection_resample(
      lambda bag: tf.reshape(tf.cast(bag[features.LABEL_KEY], tf.int32), []),
      target_dist=[1 / 3] * 3, initial_dist=[0.8, 0.15, 0.05], seed=1)
  list(resampled.take(300))
  assert source.most_open == 2


def _undersampled_epochs(source, training, epochs: int, drop_final_batch: bool = False):
  """Epochs as `fit` takes them: steps_per_epoch batches from one iterator
  of the repeated dataset, as training_inputs returns it."""
  batches_per_epoch = (math.floor if drop_final_batch else math.ceil)(
      inputs.epoch_bags(source.counts, "undersample") / training.batch_size)
  iterator = iter(inputs.undersampled(source.dataset, source.counts, training,
                                      drop_final_batch).repeat())
  return [[next(iterator) for _ in range(batches_per_epoch)] for _ in range(epochs)]


def _expected_undersampled_counts(labels: np.ndarray, seed: int) -> dict:
  """imbalanced-learn's RandomUnderSampler's class counts, when it is
  installed; else what it documents: every class cut to the smallest's count."""
  try:
    from imblearn.under_sampling import RandomUnderSampler  # pylint: disable=import-outside-toplevel
  except ImportError:
    smallest = min(collections.Counter(labels.tolist()).values())
    return {label: smallest for label in set(labels.tolist())}
  _, kept = RandomUnderSampler(random_state=seed).fit_resample(
      np.arange(len(labels)).reshape(-1, 1), labels)
  return dict(collections.Counter(kept.tolist()))


def test_undersample_keeps_exactly_the_smallest_class_count_of_each_a_new_subset_each_epoch():
  labels = _skewed_labels(400)  # 320 / 60 / 20
  source = _CountedSource(labels)
  training = TrainingConfig(batch_size=8, seed=5)
  epochs = _undersampled_epochs(source, training, epochs=3)
  expected = _expected_undersampled_counts(labels, training.seed)
  assert expected == {0: 20, 1: 20, 2: 20}
  subsets = []
  for batches in epochs:
    epoch_labels, epoch_indices = _labels_and_indices(batches)
    print("undersample epoch counts:", dict(sorted(collections.Counter(
        epoch_labels.tolist()).items())))
    assert dict(collections.Counter(epoch_labels.tolist())) == expected  # exactly
    assert len(set(epoch_indices.tolist())) == len(epoch_indices)  # without replacement
    assert all(labels[epoch_indices] == epoch_labels)
    subsets.append(frozenset(epoch_indices.tolist()))
  assert len(set(subsets)) == 3  # a new subset every epoch
  # Each epoch is one pass over the split, with one reader. (Once the third
  # pass has ended, the repeat may already have opened the fourth: whether it
  # has depends on tf.data's threads, not on the sampling.)
  assert source.passes in (3, 4) and source.most_open == 1
  assert inputs.epoch_bags(source.counts, "undersample") == 60


def test_undersample_does_not_favour_bags_early_or_late_in_the_stream():
  """Selection sampling's subset is uniform whatever the order the bags come
  in: keeping the first bags of each class would not be."""
  labels = np.repeat([0, 1, 2], [320, 60, 20])  # not shuffled: class 0 comes first
  source = _CountedSource(labels)
  epochs = _undersampled_epochs(source, TrainingConfig(batch_size=10, seed=2), epochs=20)
  kept = np.concatenate([_labels_and_indices(batches)[1] for batches in epochs])
  kept_of_class_0 = kept[labels[kept] == 0]
  early_share = np.mean(kept_of_class_0 < 160)  # the first half of class 0's bags
  assert len(kept_of_class_0) == 20 * 20
  assert 0.4 < early_share < 0.6, early_share


def test_undersample_across_replicas_drops_each_epochs_partial_batch():
  source = _CountedSource(_skewed_labels(400))
  training = TrainingConfig(batch_size=8, seed=5)
  epochs = _undersampled_epochs(source, training, epochs=2, drop_final_batch=True)
  for batches in epochs:
    assert [len(b[INDEX]) for b in batches] == [8] * 7  # 60 bags: 7 whole batches
  assert source.passes == 2  # each epoch still one pass of its own


def test_shuffle_buffer_and_class_balance_settings_are_checked_when_loaded():
  assert TrainingConfig().shuffle_buffer_bags == 256
  loaded = PipelineConfig.from_dict({"training": {"class_balance": "undersample",
                                                  "shuffle_buffer_bags": 64}})
  assert loaded.training.class_balance == "undersample"
  for wrong in (0, -1):
    with pytest.raises(ConfigError, match=r"config\.training\.shuffle_buffer_bags: Input "
                       r"should be greater than 0"):
      PipelineConfig.from_dict({"training": {"shuffle_buffer_bags": wrong}})
  with pytest.raises(ConfigError, match=r"config\.training\.class_balance"):
    PipelineConfig.from_dict({"training": {"class_balance": "oversample"}})
