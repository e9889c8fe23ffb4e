"""Transform: decode, resize and normalize the tiles of a bag.

The per-channel mean and standard deviation come from TFT analyzers over the
training split and are baked into the transform graph, so serving applies the
training normalization exactly. Padding tiles (tile_valid = 0) are left out of
the statistics: they are white and would bias them towards glass.

Augmentation is not here: trainer/augmentation.py, applied by the Trainer to
training batches only.
"""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft

from histopipe.bags import bag_features
from histopipe.encoders.tile_images import decode_tile_images
from histopipe.trainer import features


def decode_tiles(encoded: tf.Tensor, input_size: int) -> tf.Tensor:
  """[B, N] encoded PNG/JPEG strings -> float32 [B, N, size, size, 3] in 0..255."""
  batch = tf.shape(encoded)[0]
  tiles_per_slide = encoded.shape[1]
  images = decode_tile_images(tf.reshape(encoded, [-1]), input_size)
  return tf.reshape(images, [batch, tiles_per_slide, input_size, input_size, 3])


def _channel_statistics(tiles: tf.Tensor, valid: tf.Tensor, input_size: int):
  """The training split's per-channel mean and std (TFT analyzers)."""
  weights = valid[:, :, None, None, None]
  pixels_per_tile = float(input_size ** 2)
  channel_sum = tf.reduce_sum(tiles * weights, axis=[1, 2, 3])  # [B, 3]
  channel_sq_sum = tf.reduce_sum(tf.square(tiles) * weights, axis=[1, 2, 3])
  pixel_count = tf.reduce_sum(valid, axis=1, keepdims=True) * pixels_per_tile
  total = tft.sum(channel_sum, reduce_instance_dims=False)
  total_sq = tft.sum(channel_sq_sum, reduce_instance_dims=False)
  count = tft.sum(pixel_count, reduce_instance_dims=False)
  mean = total / count
  return mean, tf.sqrt(tf.maximum(total_sq / count - tf.square(mean), 1e-6))


def _label_counts(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Label counts of the training split, for class weights or balanced
  sampling (a TFT vocabulary with frequencies); the labels pass through."""
  tft.vocabulary(tf.strings.as_string(tf.reshape(inputs[features.LABEL_KEY], [-1])),
                 vocab_filename=features.LABEL_COUNTS_VOCABULARY, store_frequency=True)
  return {features.LABEL_KEY: inputs[features.LABEL_KEY]}


def preprocessing_fn(inputs: Dict[str, tf.Tensor],
                     custom_config: Dict[str, Any]) -> Dict[str, tf.Tensor]:
  """`custom_config["input_size"]`: the model's tile size, the one setting the
  Transform depends on (so a cached Transform survives other changes).
  `custom_config["embedding_bags"]`: the Transform of a head on a frozen
  encoder (model.encoder) sees embedding bags, which it leaves as they are
  (the encoder scaled its tiles as it was trained to): only the label counts."""
  if custom_config.get("embedding_bags"):
    return _label_counts(inputs)
  input_size = int(custom_config["input_size"])
  tiles = decode_tiles(inputs[bag_features.TILES], input_size)
  valid = tf.cast(inputs[bag_features.TILE_VALID], tf.float32)

  # Per-channel sums over valid tiles only; mean and std follow from them.
  mean, std = _channel_statistics(tiles, valid, input_size)

  _label_counts(inputs)

  batch = tf.shape(valid)[:1]
  return {
      features.TILES_XF: (tiles - mean) / std,
      features.TILE_VALID_XF: valid,
      features.CHANNEL_MEAN_XF: tf.broadcast_to(mean, tf.concat([batch, [3]], 0)),
      features.CHANNEL_STD_XF: tf.broadcast_to(std, tf.concat([batch, [3]], 0)),
      features.LABEL_KEY: inputs[features.LABEL_KEY],
  }
