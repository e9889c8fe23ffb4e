"""Trainer input pipeline pieces: class balance and the learning-rate schedule."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from histopipe.core.configs import TrainingConfig
from histopipe.trainer import features
from histopipe.trainer.fit import learning_rate_at_epoch
from histopipe.trainer.inputs import balanced_by_class, class_weights


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
  balanced = balanced_by_class(raw, {0: 90, 1: 9, 4: 1}, TrainingConfig(batch_size=30, seed=1))
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


def _tiny_bags(count, seed):
  """(inputs, targets) batches of 4-tile bags of 16 px for a small_cnn MIL model."""
  from histopipe.trainer.model import ordinal_targets
  rng = np.random.default_rng(seed)
  tiles = rng.normal(size=(count, 4, 16, 16, 3)).astype(np.float32)
  labels = rng.integers(0, 6, count)
  inputs = {features.TILES_XF: tiles, features.TILE_VALID_XF: np.ones((count, 4), np.float32)}
  targets = {features.ORDINAL_LOGITS: ordinal_targets(labels, 6).numpy(),
             features.PROBABILITIES: labels[:, None]}
  return tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(4)


def _tiny_model_and_config(epochs, frozen):
  from histopipe.core.configs import ModelConfig, PipelineConfig
  from histopipe.trainer.model import build_mil_model
  model_config = ModelConfig(backbone="small_cnn", input_size=16, dense_units=8,
                             attention_units=4, dropout=0.0)
  config = PipelineConfig(model=model_config, training=TrainingConfig(
      epochs=epochs, frozen_backbone_epochs=frozen, learning_rate=1e-2, warmup_epochs=0))
  return build_mil_model(model_config, tiles_per_slide=4, num_classes=6), config


def _backbone(model):
  from histopipe.trainer.model import ENCODER
  backbone = model.get_layer(ENCODER)
  return backbone


@pytest.mark.parametrize("epochs,frozen,backbone_moves", [(1, 1, False), (2, 1, True)])
def test_frozen_warm_up_trains_the_head_then_fine_tuning_trains_the_backbone(
    epochs, frozen, backbone_moves):
  from histopipe.trainer.fit import fit_in_phases
  from histopipe.trainer.model import HEAD
  tf.keras.utils.set_random_seed(0)
  model, config = _tiny_model_and_config(epochs, frozen)
  backbone_before = [w.copy() for w in _backbone(model).get_weights()]
  head_before = model.get_layer(HEAD).get_weights()[0].copy()
  # No validation data: nothing to early-stop on or restore, so the weights
  # are what the phases left (restoring the best is tested below).
  fit_in_phases(model, config, tf.distribute.get_strategy(), _tiny_bags(16, 1),
                evaluation=None, steps_per_epoch=None)
  backbone_after = _backbone(model).get_weights()
  moved = any(not np.array_equal(a, b) for a, b in zip(backbone_before, backbone_after))
  assert moved == backbone_moves
  assert not np.array_equal(head_before, model.get_layer(HEAD).get_weights()[0])
  assert _backbone(model).trainable  # the exported model is left unfrozen


def test_a_snapshot_taken_frozen_restores_into_the_unfrozen_model():
  from histopipe.trainer.fit import WeightsSnapshot, set_backbone_trainable
  model, _ = _tiny_model_and_config(1, 1)
  bags = next(iter(_tiny_bags(4, 3)))[0]
  set_backbone_trainable(model, False)  # reorders get_weights(): trainable first
  snapshot = WeightsSnapshot(model.get_weights(), backbone_trainable=False)
  expected = model(bags, training=False)[features.PROBABILITIES].numpy()
  set_backbone_trainable(model, True)
  model.set_weights([w + 0.5 for w in model.get_weights()])
  snapshot.restore(model)
  np.testing.assert_allclose(model(bags, training=False)[features.PROBABILITIES].numpy(),
                             expected, rtol=1e-6)
  assert _backbone(model).trainable
