"""The MIL model: a shared CNN backbone over the tiles of a bag, then pooling.

Bag in: normalized tiles [B, N, size, size, 3] and a valid mask [B, N].
Out: ordinal logits [B, K-1] (sigmoid k says "grade >= k+1"), class
probabilities [B, K] derived from them, the grade, and per-tile attention.
Padding tiles get zero attention, so they can never change the output.
"""

from __future__ import annotations

import os
from typing import Dict

import tensorflow as tf
import tf_keras as keras

from pipeline.configs import ModelConfig
from trainer import features

_BACKBONES = {
    "resnet50": keras.applications.ResNet50,
}


def build_backbone(model: ModelConfig) -> keras.Model:
  """Backbone with global average pooling; ImageNet weights when asked for.

  `imagenet_weights` is a path to a local `.h5` file (no-top weights, as
  Keras ships them), "imagenet" to use the Keras cache (which must already
  hold the file: nothing is downloaded at run time), or "" for random init.
  """
  if model.backbone not in _BACKBONES:
    raise ValueError(f"unknown backbone {model.backbone!r}; "
                     f"choose from {sorted(_BACKBONES)}")
  weights = model.imagenet_weights or None
  if weights and weights != "imagenet" and not os.path.exists(weights):
    raise FileNotFoundError(f"backbone weights file not found: {weights}")
  backbone = _BACKBONES[model.backbone](
      include_top=False, weights=weights, pooling="avg",
      input_shape=(model.input_size, model.input_size, 3))
  if model.batchnorm_momentum:
    for layer in backbone.layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = model.batchnorm_momentum
  return backbone


class GatedAttentionPooling(keras.layers.Layer):
  """Ilse et al. (2018) gated attention, with padding masked out.

  a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i))) over valid tiles only.
  """

  def __init__(self, units: int, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.tanh_branch = keras.layers.Dense(units, activation="tanh")
    self.sigmoid_branch = keras.layers.Dense(units, activation="sigmoid")
    self.score = keras.layers.Dense(1)

  def call(self, tile_features, valid):
    scores = self.score(self.tanh_branch(tile_features) *
                        self.sigmoid_branch(tile_features))[..., 0]  # [B, N]
    scores = tf.where(valid > 0, scores, tf.fill(tf.shape(scores), -1e9))
    attention = tf.nn.softmax(scores, axis=-1) * valid
    attention = attention / tf.maximum(tf.reduce_sum(attention, -1, keepdims=True), 1e-9)
    pooled = tf.reduce_sum(tile_features * attention[..., None], axis=1)
    return pooled, attention

  def get_config(self):
    return {**super().get_config(), "units": self.units}


def ordinal_outputs(ordinal_logits: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Class probabilities and grade from K-1 cumulative logits.

  P(grade >= k) is made non-increasing in k (cumulative minimum) so the class
  probabilities P(grade = k) = P(>= k) - P(>= k+1) are never negative.
  """
  columns = tf.unstack(tf.sigmoid(ordinal_logits), axis=-1)
  running = [columns[0]]
  for column in columns[1:]:
    running.append(tf.minimum(running[-1], column))
  at_least = tf.stack(running, axis=-1)
  ones = tf.ones_like(at_least[:, :1])
  zeros = tf.zeros_like(at_least[:, :1])
  cumulative = tf.concat([ones, at_least], axis=-1)
  probabilities = cumulative - tf.concat([at_least, zeros], axis=-1)
  grade = tf.reduce_sum(tf.cast(at_least > 0.5, tf.int64), axis=-1)
  return {features.PROBABILITIES: probabilities, features.GRADE: grade}


def build_mil_model(model: ModelConfig, tiles_per_slide: int,
                    num_classes: int) -> keras.Model:
  size = model.input_size
  tiles = keras.Input((tiles_per_slide, size, size, 3), name=features.TILES_XF)
  valid = keras.Input((tiles_per_slide,), name=features.TILE_VALID_XF)
  backbone = build_backbone(model)
  # The backbone sees every tile of every bag as one batch of images.
  tile_features = backbone(tf.reshape(tiles, [-1, size, size, 3]))
  tile_features = tf.reshape(tile_features, [-1, tiles_per_slide, tile_features.shape[-1]])

  if model.pooling == "gated_attention":
    pooled, attention = GatedAttentionPooling(model.attention_units, name="gated_attention")(
        tile_features, valid)
  elif model.pooling == "mean":
    attention = valid / tf.maximum(tf.reduce_sum(valid, -1, keepdims=True), 1.0)
    pooled = tf.reduce_sum(tile_features * attention[..., None], axis=1)
  else:
    raise ValueError(f"unknown pooling {model.pooling!r}")

  hidden = keras.layers.Dense(model.dense_units, activation="relu")(pooled)
  hidden = keras.layers.BatchNormalization()(hidden)
  hidden = keras.layers.Dropout(model.dropout)(hidden)
  logits = keras.layers.Dense(num_classes - 1, name=features.ORDINAL_LOGITS)(hidden)
  named = {features.ATTENTION: attention, **ordinal_outputs(logits)}
  # Identity layers give the outputs their names (Keras keys metrics by them).
  outputs = {features.ORDINAL_LOGITS: logits,
             **{key: keras.layers.Identity(name=key)(value) for key, value in named.items()}}
  return keras.Model({features.TILES_XF: tiles, features.TILE_VALID_XF: valid}, outputs,
                     name=f"mil_{model.backbone}_{model.pooling}")


def ordinal_targets(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
  """[B] or [B, 1] integer grades -> [B, K-1] cumulative 0/1 targets."""
  labels = tf.reshape(tf.cast(labels, tf.int32), [-1, 1])
  thresholds = tf.range(1, num_classes, dtype=tf.int32)[None, :]
  return tf.cast(labels >= thresholds, tf.float32)
