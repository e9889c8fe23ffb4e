"""MIL model: ordinal outputs, masking of padding, augmentation only in training."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from histopipe.core.configs import AugmentationConfig, ModelConfig
from histopipe.trainer import features
from histopipe.trainer.model import (build_backbone, build_mil_model, ordinal_outputs,
                                     ordinal_targets)
from histopipe.trainer.augmentation import BagAugmenter, colour_jitter, hed_jitter

TINY_MODEL = ModelConfig(backbone="resnet50", input_size=32, dense_units=16,
                         attention_units=8, dropout=0.0)


@pytest.fixture(scope="module")
def mil_model():
  return build_mil_model(TINY_MODEL, tiles_per_slide=4, num_classes=6)


def test_ordinal_targets_and_decoding_round_trip():
  targets = ordinal_targets(tf.constant([0, 3, 5]), 6).numpy()
  np.testing.assert_array_equal(targets, [[0, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  logits = tf.constant(np.where(targets > 0, 5.0, -5.0), tf.float32)
  decoded = ordinal_outputs(logits)
  assert decoded[features.GRADE].numpy().tolist() == [0, 3, 5]
  assert decoded[features.PROBABILITIES].numpy().argmax(-1).tolist() == [0, 3, 5]


def test_probabilities_are_a_distribution_even_for_non_monotone_logits():
  logits = tf.constant([[2.0, -1.0, 3.0, 0.5, -2.0], [-3.0, 4.0, 4.0, -4.0, 1.0]])
  probabilities = ordinal_outputs(logits)[features.PROBABILITIES].numpy()
  assert (probabilities >= 0).all()
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-6)


def _bag(rng, valid):
  tiles = rng.normal(size=(1, 4, 32, 32, 3)).astype(np.float32)
  return {features.TILES_XF: tiles,
          features.TILE_VALID_XF: np.array([valid], np.float32)}


def test_padding_tiles_never_change_the_output(mil_model):
  rng = np.random.default_rng(0)
  bag = _bag(rng, [1, 1, 0, 0])
  other = dict(bag)
  other[features.TILES_XF] = bag[features.TILES_XF].copy()
  other[features.TILES_XF][0, 2:] = rng.normal(size=(2, 32, 32, 3)) * 10
  first = mil_model(bag, training=False)
  second = mil_model(other, training=False)
  np.testing.assert_allclose(first[features.PROBABILITIES], second[features.PROBABILITIES],
                             atol=1e-5)
  attention = first[features.ATTENTION].numpy()[0]
  assert attention[2:].tolist() == [0.0, 0.0]
  assert attention.sum() == pytest.approx(1.0, abs=1e-5)


def test_model_trains_one_step(mil_model):
  from histopipe.core.configs import PipelineConfig
  from histopipe.trainer.fit import compile_model
  compile_model(mil_model, PipelineConfig(model=TINY_MODEL))
  rng = np.random.default_rng(1)
  bag = _bag(rng, [1, 1, 1, 0])
  labels = np.array([[3]])
  targets = {features.ORDINAL_LOGITS: ordinal_targets(labels, 6),
             features.PROBABILITIES: labels}
  before = [w.numpy().copy() for w in mil_model.trainable_weights[-2:]]
  result = mil_model.train_on_batch(bag, targets, return_dict=True)
  assert np.isfinite(result["loss"])
  after = [w.numpy() for w in mil_model.trainable_weights[-2:]]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_imagenet_weights_load_from_a_local_file(tmp_path):
  config = dataclasses.replace(TINY_MODEL)
  source = build_backbone(config)
  path = str(tmp_path / "resnet50_notop.h5")
  source.save_weights(path)
  loaded = build_backbone(dataclasses.replace(config, imagenet_weights=path))
  for a, b in zip(source.weights, loaded.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  with pytest.raises(FileNotFoundError, match="weights file not found"):
    build_backbone(dataclasses.replace(config, imagenet_weights=str(tmp_path / "none.h5")))


def _batch(tiles, valid):
  bags = tiles.shape[0]
  return {features.TILES_XF: tf.constant(tiles), features.TILE_VALID_XF: tf.constant(valid),
          features.CHANNEL_MEAN_XF: tf.constant(np.tile([[200.0, 150.0, 190.0]], (bags, 1)),
                                                tf.float32),
          features.CHANNEL_STD_XF: tf.constant(np.tile([[30.0, 40.0, 30.0]], (bags, 1)),
                                               tf.float32)}


def test_augmentation_flips_rotates_and_shuffles_but_keeps_tiles():
  rng = np.random.default_rng(2)
  tiles = rng.normal(size=(8, 4, 8, 8, 3)).astype(np.float32)
  valid = np.tile(np.array([[1, 1, 1, 0]], np.float32), (8, 1))
  geometric_only = AugmentationConfig(colour=False, hed_sigma=0.0)
  out = BagAugmenter(geometric_only, seed=3)(_batch(tiles, valid))
  out_tiles = out[features.TILES_XF].numpy()
  assert not np.array_equal(out_tiles, tiles)  # something happened
  changed = 0
  for b in range(8):
    # Each output tile is one of the 8 dihedral transforms of an input tile
    # of the same bag, and the valid flag moved with it.
    for i in range(4):
      source = None
      for j in range(4):
        variants = [np.rot90(t, k) for t in (tiles[b, j], tiles[b, j][:, ::-1])
                    for k in range(4)]
        if any(np.allclose(out_tiles[b, i], v) for v in variants):
          source = j
      assert source is not None
      assert out[features.TILE_VALID_XF].numpy()[b, i] == valid[b, source]
      changed += not np.allclose(out_tiles[b, i], tiles[b, i])
  assert changed > 8
  # Padding stays behind the real tiles, so "the first k tiles" are real ones.
  assert (out[features.TILE_VALID_XF].numpy() == valid).all()


def test_hed_and_colour_jitter_are_identity_at_neutral_settings():
  pixels = tf.constant(np.random.default_rng(4).uniform(0, 255, (3, 8, 8, 3)), tf.float32)
  ones, zeros = tf.ones([3, 3]), tf.zeros([3, 3])
  np.testing.assert_allclose(hed_jitter(pixels, ones, zeros), pixels, atol=1e-2)
  neutral = colour_jitter(pixels, brightness=tf.zeros([3]), contrast=tf.ones([3]),
                          saturation=tf.ones([3]), hue=tf.zeros([3]))
  np.testing.assert_allclose(neutral, pixels, atol=1e-2)


def test_stain_jitter_moves_colours_differently_per_tile_and_per_epoch():
  rng = np.random.default_rng(5)
  tiles = rng.normal(size=(4, 4, 8, 8, 3)).astype(np.float32) * 0.3
  valid = np.ones((4, 4), np.float32)
  augmenter = BagAugmenter(AugmentationConfig(flips_and_rotations=False, shuffle_tiles=False),
                           seed=6)
  first = augmenter(_batch(tiles, valid))[features.TILES_XF].numpy()
  second = augmenter(_batch(tiles, valid))[features.TILES_XF].numpy()
  shift = (first - tiles).mean(axis=(2, 3))  # [bags, tiles, channels]
  assert np.abs(shift).max() > 0.02  # colours moved
  assert shift.reshape(-1, 3).std(axis=0).min() > 0.005  # by different amounts per tile
  assert not np.allclose(first, second)  # a new draw on the next batch/epoch


@pytest.mark.parametrize("pooling", ["gated_attention", "mean", "max", "concat_tile"])
def test_every_pooling_ignores_padding_tiles(pooling):
  config = dataclasses.replace(TINY_MODEL, backbone="small_cnn", pooling=pooling)
  model = build_mil_model(config, tiles_per_slide=4, num_classes=6)
  rng = np.random.default_rng(7)
  bag = _bag(rng, [1, 1, 1, 0])
  other = dict(bag)
  other[features.TILES_XF] = bag[features.TILES_XF].copy()
  other[features.TILES_XF][0, 3] = rng.normal(size=(32, 32, 3)) * 10
  first, second = model(bag, training=False), model(other, training=False)
  np.testing.assert_allclose(first[features.PROBABILITIES], second[features.PROBABILITIES],
                             atol=1e-5)
  attention = first[features.ATTENTION].numpy()[0]
  assert attention[3] == 0.0 and attention.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("pooling", ["gated_attention", "concat_tile"])
def test_a_model_using_the_first_k_tiles_ignores_the_rest(pooling):
  config = dataclasses.replace(TINY_MODEL, backbone="small_cnn", pooling=pooling,
                               tiles_used=2)
  model = build_mil_model(config, tiles_per_slide=4, num_classes=6)
  rng = np.random.default_rng(8)
  bag = _bag(rng, [1, 1, 1, 1])
  other = dict(bag)
  other[features.TILES_XF] = bag[features.TILES_XF].copy()
  other[features.TILES_XF][0, 2:] = rng.normal(size=(2, 32, 32, 3)) * 10
  first, second = model(bag, training=False), model(other, training=False)
  np.testing.assert_allclose(first[features.PROBABILITIES], second[features.PROBABILITIES],
                             atol=1e-5)
  attention = first[features.ATTENTION].numpy()[0]
  assert attention.shape == (4,) and attention[2:].tolist() == [0.0, 0.0]
  assert attention.sum() == pytest.approx(1.0, abs=1e-5)
  changed = dict(bag)
  changed[features.TILES_XF] = bag[features.TILES_XF].copy()
  changed[features.TILES_XF][0, :2] = rng.normal(size=(2, 32, 32, 3)) * 10
  assert not np.allclose(model(changed, training=False)[features.PROBABILITIES],
                         first[features.PROBABILITIES])


# "xception+nasnet" builds Xception and NASNetMobile through the same
# `_application` as the single choices do, so those two are covered by it
# (each alone took minutes on a 2-core CPU).
@pytest.mark.parametrize("backbone,size", [("resnet50", 32), ("xception+nasnet", 72),
                                           ("small_cnn", 32)])
def test_every_backbone_builds_and_trains_one_step(backbone, size):
  from histopipe.core.configs import PipelineConfig
  from histopipe.trainer.fit import compile_model
  config = dataclasses.replace(TINY_MODEL, backbone=backbone, input_size=size)
  model = build_mil_model(config, tiles_per_slide=2, num_classes=6)
  compile_model(model, PipelineConfig(model=config))
  rng = np.random.default_rng(8)
  bag = {features.TILES_XF: rng.normal(size=(2, 2, size, size, 3)).astype(np.float32),
         features.TILE_VALID_XF: np.ones((2, 2), np.float32)}
  labels = np.array([[1], [4]])
  result = model.train_on_batch(bag, {features.ORDINAL_LOGITS: ordinal_targets(labels, 6),
                                      features.PROBABILITIES: labels}, return_dict=True)
  assert np.isfinite(result["loss"])


def test_backbone_rejects_tiles_below_its_minimum():
  with pytest.raises(ValueError, match="xception needs tiles of at least 71 px"):
    build_backbone(dataclasses.replace(TINY_MODEL, backbone="xception", input_size=64))


def test_mixed_precision_model_keeps_float32_outputs():
  import tf_keras
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    config = dataclasses.replace(TINY_MODEL, backbone="small_cnn")
    model = build_mil_model(config, tiles_per_slide=4, num_classes=6)
    outputs = model(_bag(np.random.default_rng(9), [1, 1, 0, 0]), training=False)
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  assert outputs[features.PROBABILITIES].dtype == tf.float32
  assert outputs[features.ATTENTION].numpy()[0, 2:].tolist() == [0.0, 0.0]
  assert np.isfinite(outputs[features.PROBABILITIES].numpy()).all()


def test_binary_head_gives_one_probability_and_a_0_1_label():
  model = build_mil_model(dataclasses.replace(TINY_MODEL, backbone="small_cnn"),
                          tiles_per_slide=1, num_classes=2)
  tiles = np.random.default_rng(8).normal(size=(3, 1, 32, 32, 3)).astype(np.float32)
  outputs = model({features.TILES_XF: tiles, features.TILE_VALID_XF: np.ones((3, 1), np.float32)},
                  training=False)
  probability = outputs[features.PROBABILITIES].numpy()
  assert probability.shape == (3, 1) and ((probability > 0) & (probability < 1)).all()
  assert outputs[features.ORDINAL_LOGITS].shape == (3, 1)
  np.testing.assert_array_equal(outputs[features.GRADE].numpy(), (probability[:, 0] > 0.5))


def test_imagenet_weights_come_from_the_keras_cache_never_the_network(tmp_path, monkeypatch):
  from histopipe.encoders.imagenet_weights import cached_imagenet_weights
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    cached_imagenet_weights("resnet50")
  cached = tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
  cached.parent.mkdir()
  cached.write_bytes(b"")
  assert cached_imagenet_weights("resnet50") == str(cached)
