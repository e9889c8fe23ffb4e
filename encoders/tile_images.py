"""Encoded tiles to the pixels an encoder takes, in TensorFlow.

One function for every place a model sees tiles: the Transform (trainer/
preprocessing.py), the TileEmbedder's model (encoders/tile_embedding.py) and
the served model's signatures. Embeddings computed for training and those
computed in serving then come from the same decoder and the same resize,
bit for bit."""

from __future__ import annotations

import tensorflow as tf


def decode_tile_images(encoded: tf.Tensor, size: int) -> tf.Tensor:
  """[n] encoded PNG/JPEG strings -> float32 [n, size, size, 3] in 0..255,
  resized by area averaging when a tile is not `size` px."""

  def decode_one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="area")
    return tf.ensure_shape(image, [size, size, 3])

  return tf.map_fn(decode_one, encoded,
                   fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
