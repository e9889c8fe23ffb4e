"""Trainer input pipeline pieces: class balance and the learning-rate schedule."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from pipeline.configs import TrainingConfig
from trainer import features
from trainer.task import _balanced, class_weights, learning_rate_at_epoch


def test_class_weights_make_every_present_class_weigh_the_same():
  counts = {0: 60, 1: 30, 3: 10}
  weights = class_weights(counts, num_classes=6)
  totals = [weights[k] * n for k, n in counts.items()]
  assert totals == pytest.approx([totals[0]] * 3)
  assert sum(totals) == pytest.approx(100)  # the loss keeps its scale
  assert weights[2] == weights[4] == weights[5] == 1.0  # absent classes


def test_balanced_sampling_draws_rare_classes_as_often_as_common_ones():
  labels = np.array([0] * 90 + [1] * 9 + [4] * 1, np.int64)
  raw = tf.data.Dataset.from_tensor_slices(
      {features.LABEL_KEY: labels[:, None], "x": np.arange(100)}).batch(10)
  balanced = _balanced(raw, [0, 1, 4], TrainingConfig(batch_size=30, seed=1))
  drawn = np.concatenate([b[features.LABEL_KEY].numpy().ravel()
                          for b in balanced.take(20)])
  shares = {k: v / len(drawn) for k, v in collections.Counter(drawn.tolist()).items()}
  assert set(shares) == {0, 1, 4}
  assert all(abs(share - 1 / 3) < 0.06 for share in shares.values()), shares


def test_learning_rate_warms_up_then_decays():
  training = TrainingConfig(learning_rate=1e-3, warmup_epochs=2, epochs=10)
  rates = [learning_rate_at_epoch(e, training) for e in range(10)]
  assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
  assert all(a >= b for a, b in zip(rates[2:], rates[3:]))
  assert rates[-1] < 0.2e-3
