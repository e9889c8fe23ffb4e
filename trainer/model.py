"""The MIL model: a shared CNN backbone over the tiles of a bag, then pooling.

Bag in: normalized tiles [B, N, size, size, 3] and a valid mask [B, N].
Out: ordinal logits [B, K-1] (sigmoid k says "grade >= k+1"), class
probabilities [B, K] derived from them, the grade, and per-tile attention;
for binary tasks (K = 2) one logit, P(label = 1) [B, 1] and the 0/1 label.
Padding tiles get zero attention, so they can never change the output.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import tensorflow as tf
import tf_keras as keras

from histopipe.core.configs import ModelConfig
from histopipe.encoders import imagenet_weights
from histopipe.trainer import features
from histopipe.trainer.wide_resnet import wide_resnet

_APPLICATIONS = {
    "resnet50": keras.applications.ResNet50,
    "xception": keras.applications.Xception,
    "nasnet_mobile": keras.applications.NASNetMobile,
}
# Smallest tile each backbone accepts (Keras' own limits).
MIN_INPUT_SIZE = {"resnet50": 32, "xception": 71, "nasnet_mobile": 32,
                  "xception+nasnet": 71, "small_cnn": 16,
                  # Two stride-2 groups: a 50 px IDC patch ends 13 x 13.
                  "wide_resnet": 8}
BACKBONES = tuple(MIN_INPUT_SIZE)
POOLINGS = ("gated_attention", "mean", "max", "concat_tile")


def _small_cnn(input_shape) -> keras.Model:
  """Four conv blocks: for fast runs and tests, not for accuracy."""
  inputs = keras.Input(input_shape)
  x = inputs
  for filters in (32, 64, 128, 256):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2, padding="same")(x)
  return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="small_cnn")


def _application(name: str, weights, input_shape) -> keras.Model:
  return _APPLICATIONS[name](include_top=False,
                             weights=imagenet_weights.resolve(name, weights) or None,
                             pooling="avg", input_shape=input_shape)


def build_backbone(model: ModelConfig, input_shape=None) -> keras.Model:
  """Backbone with global average pooling; ImageNet weights when asked for.

  `imagenet_weights` is a path to a local no-top `.h5` file (as Keras ships
  them), "imagenet" to use the Keras cache (which must already hold the
  file: nothing is downloaded at run time), or "" for random init. For
  "xception+nasnet" give two paths separated by a comma, or "imagenet".
  """
  if model.backbone not in BACKBONES:
    raise ValueError(f"unknown backbone {model.backbone!r}; choose from {list(BACKBONES)}")
  if model.input_size < MIN_INPUT_SIZE[model.backbone]:
    raise ValueError(f"{model.backbone} needs tiles of at least "
                     f"{MIN_INPUT_SIZE[model.backbone]} px; input_size is {model.input_size}")
  input_shape = input_shape or (model.input_size, model.input_size, 3)
  weights = model.imagenet_weights
  if model.backbone in ("small_cnn", "wide_resnet") and weights:
    raise ValueError(f"{model.backbone} has no ImageNet weights")
  if model.backbone == "small_cnn":
    backbone = _small_cnn(input_shape)
  elif model.backbone == "wide_resnet":
    backbone = wide_resnet(input_shape, model.wide_resnet_depth, model.wide_resnet_width,
                           model.wide_resnet_dropout)
  elif model.backbone == "xception+nasnet":
    xception_weights, nasnet_weights = ((weights.split(",") + [""])[:2]
                                        if weights != "imagenet" else (weights, weights))
    inputs = keras.Input(input_shape)
    # Two backbones side by side on the same tiles, features concatenated.
    both = keras.layers.Concatenate()([
        _application("xception", xception_weights, input_shape)(inputs),
        _application("nasnet_mobile", nasnet_weights, input_shape)(inputs)])
    backbone = keras.Model(inputs, both, name="xception_nasnet")
  else:
    backbone = _application(model.backbone, weights, input_shape)
  if model.batchnorm_momentum:
    for layer in _all_layers(backbone):
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = model.batchnorm_momentum
  return backbone


def _all_layers(model: keras.Model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)
    else:
      yield layer


def _tile_grid(tiles_per_slide: int):
  rows = math.ceil(math.sqrt(tiles_per_slide))
  return rows, math.ceil(tiles_per_slide / rows)


def concat_tiles(tiles: tf.Tensor, valid: tf.Tensor, size: int) -> tf.Tensor:
  """[B, N, s, s, 3] -> one [B, rows*s, cols*s, 3] image per bag (padding zeroed)."""
  tiles_per_slide = tiles.shape[1]
  rows, cols = _tile_grid(tiles_per_slide)
  tiles = tiles * valid[:, :, None, None, None]  # normalized 0 = the mean colour
  extra = rows * cols - tiles_per_slide
  if extra:
    tiles = tf.concat([tiles, tf.zeros_like(tiles[:, :extra])], axis=1)
  grid = tf.reshape(tiles, [-1, rows, cols, size, size, 3])
  grid = tf.transpose(grid, [0, 1, 3, 2, 4, 5])
  return tf.reshape(grid, [-1, rows * size, cols * size, 3])


class GatedAttentionPooling(keras.layers.Layer):
  """Ilse et al. (2018) gated attention, with padding masked out.

  a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i))) over valid tiles only.
  """

  def __init__(self, units: int, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    # Sub-layers follow this layer's dtype policy (float32 under mixed precision).
    self.tanh_branch = keras.layers.Dense(units, activation="tanh", dtype=self.dtype_policy)
    self.sigmoid_branch = keras.layers.Dense(units, activation="sigmoid",
                                             dtype=self.dtype_policy)
    self.score = keras.layers.Dense(1, dtype=self.dtype_policy)

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


def binary_outputs(logit: tf.Tensor) -> Dict[str, tf.Tensor]:
  """One logit [B, 1] -> P(label = 1) [B, 1] and the 0/1 label at 0.5.

  The same head as the ordinal one with two classes (one cumulative logit),
  but with the single probability binary metrics (AUC) expect."""
  probability = tf.sigmoid(logit)
  return {features.PROBABILITIES: probability,
          features.GRADE: tf.cast(probability[:, 0] > 0.5, tf.int64)}


# The MIL model's two parts, nested models of it by these names: the encoder
# (the backbone: images -> features, the expensive part, which the export
# batches across requests: trainer/encoder_batching.py) and the head
# (features of a bag's tiles -> pooling -> outputs).
ENCODER = "tile_encoder"
HEAD = "mil_head"
TILE_FEATURES = "tile_features"


def tiles_looked_at(model: ModelConfig, tiles_per_slide: Optional[int]) -> Optional[int]:
  """Tiles of a bag the model looks at (None: a bag of any size, all of them)."""
  if tiles_per_slide is None:
    return None
  return min(model.tiles_used or tiles_per_slide, tiles_per_slide)


def encoder_images(model: ModelConfig, tiles, valid, tiles_per_slide: int):
  """[B, N, s, s, 3] tiles -> the images the encoder sees, bag after bag:
  each looked-at tile ([B * k, s, s, 3]), or for concat_tile each bag's tiles
  side by side in one image ([B, rows * s, cols * s, 3])."""
  used = tiles_looked_at(model, tiles_per_slide)
  if model.pooling == "concat_tile":
    return concat_tiles(tiles[:, :used], valid[:, :used], model.input_size)
  size = model.input_size
  return tf.reshape(tiles[:, :used], [-1, size, size, 3])


def _features_per_bag(model: ModelConfig, tiles_per_slide: Optional[int]) -> Optional[int]:
  return 1 if model.pooling == "concat_tile" else tiles_looked_at(model, tiles_per_slide)


def build_encoder(model: ModelConfig, tiles_per_slide: int) -> keras.Model:
  """The backbone on encoder_images' images, its features in float32
  (pooling masks with -1e9, beyond float16 under mixed precision)."""
  size = model.input_size
  if model.pooling == "concat_tile":
    rows, cols = _tile_grid(tiles_looked_at(model, tiles_per_slide))
    backbone = build_backbone(model, input_shape=(rows * size, cols * size, 3))
  else:
    backbone = build_backbone(model)
  images = keras.Input(backbone.input_shape[1:])
  return keras.Model(images, tf.cast(backbone(images), tf.float32), name=ENCODER)


def _pool_tiles(model: ModelConfig, tile_features, valid):
  """[B, N, F] features of valid tiles -> ([B, F] pooled, [B, N] attention)."""
  if model.pooling == "concat_tile":  # one image per bag: its features, every tile alike
    attention = valid / tf.maximum(tf.reduce_sum(valid, -1, keepdims=True), 1.0)
    return tile_features[:, 0], attention
  if model.pooling == "gated_attention":
    return GatedAttentionPooling(model.attention_units, name="gated_attention",
                                 dtype="float32")(tile_features, valid)
  if model.pooling == "mean":
    attention = valid / tf.maximum(tf.reduce_sum(valid, -1, keepdims=True), 1.0)
    return tf.reduce_sum(tile_features * attention[..., None], axis=1), attention
  # max over valid tiles; "attention" is the share of features each tile wins
  masked = tf.where(valid[..., None] > 0, tile_features, tf.fill(tf.shape(tile_features), -1e9))
  pooled = tf.reduce_max(masked, axis=1)
  wins = tf.cast(tf.equal(masked, pooled[:, None, :]), tf.float32) * valid[..., None]
  attention = tf.reduce_mean(wins, axis=-1)
  return pooled, attention / tf.maximum(tf.reduce_sum(attention, -1, keepdims=True), 1e-9)


def build_head(model: ModelConfig, tiles_per_slide: Optional[int], feature_size: int,
               num_classes: int) -> keras.Model:
  """A bag's tile features [B, k, F] (k = 1 for concat_tile) and its valid
  mask [B, N] -> ordinal logits, probabilities, grade and per-tile attention.
  `tiles_per_slide` None: bags of any size N (a frozen encoder's embeddings)."""
  used = tiles_looked_at(model, tiles_per_slide)
  tile_features = keras.Input((_features_per_bag(model, tiles_per_slide), feature_size),
                              name=TILE_FEATURES)
  valid = keras.Input((tiles_per_slide,), name=features.TILE_VALID_XF)
  pooled, attention = _pool_tiles(model, tile_features, valid[:, :used])
  if used != tiles_per_slide:  # attention per tile of the bag: those not looked at get 0
    attention = tf.pad(attention, [[0, 0], [0, tiles_per_slide - used]])
  hidden = keras.layers.Dense(model.dense_units, activation="relu")(pooled)
  if not (num_classes == 2 and model.binary_head == "regression"):
    hidden = (keras.layers.LayerNormalization()(hidden) if model.head_normalization == "layer"
              else keras.layers.BatchNormalization()(hidden))
    hidden = keras.layers.Dropout(model.dropout)(hidden)
  logits = keras.layers.Dense(num_classes - 1, dtype="float32")(hidden)
  decoded = binary_outputs(logits) if num_classes == 2 else ordinal_outputs(logits)
  return keras.Model({TILE_FEATURES: tile_features, features.TILE_VALID_XF: valid},
                     {features.ORDINAL_LOGITS: logits, features.ATTENTION: attention,
                      **decoded}, name=HEAD)


def mil_outputs(model: ModelConfig, encode, head, tiles, valid, tiles_per_slide: int):
  """The MIL model's computation on a batch of bags, with `encode` for the
  encoder: the model itself (build_mil_model, with its encoder) and the
  exported signatures (with the encoder inside TensorFlow's BatchFunction)
  both run this."""
  tile_features = encode(encoder_images(model, tiles, valid, tiles_per_slide))
  tile_features = tf.reshape(tile_features, [-1, _features_per_bag(model, tiles_per_slide),
                                             tile_features.shape[-1]])
  return head({TILE_FEATURES: tile_features, features.TILE_VALID_XF: valid})


def build_mil_model(model: ModelConfig, tiles_per_slide: int,
                    num_classes: int) -> keras.Model:
  if model.pooling not in POOLINGS:
    raise ValueError(f"unknown pooling {model.pooling!r}; choose from {list(POOLINGS)}")
  if model.encoder:
    raise ValueError("with model.encoder the head trains on embedding bags: "
                     "build_embedding_model")
  size = model.input_size
  tiles = keras.Input((tiles_per_slide, size, size, 3), name=features.TILES_XF)
  valid = keras.Input((tiles_per_slide,), name=features.TILE_VALID_XF)
  encoder = build_encoder(model, tiles_per_slide)
  head = build_head(model, tiles_per_slide, encoder.output_shape[-1], num_classes)
  outputs = mil_outputs(model, encoder, head, tiles, valid, tiles_per_slide)
  # Identity layers give the outputs their names (Keras keys losses and
  # metrics by them); float32 so that mixed precision never reaches the outputs.
  named = {key: keras.layers.Identity(name=key, dtype="float32")(value)
           for key, value in outputs.items()}
  return keras.Model({features.TILES_XF: tiles, features.TILE_VALID_XF: valid}, named,
                     name=f"mil_{model.backbone.replace('+', '_')}_{model.pooling}")


def build_embedding_model(model: ModelConfig, embedding_size: int,
                          num_classes: int) -> keras.Model:
  """The MIL head alone, as the Trainer fits it on a frozen encoder's
  embedding bags (model.encoder): [B, N, D] embeddings of bags of any size N
  and their valid mask [B, N] -> the outputs, named as build_mil_model's."""
  tile_features = keras.Input((None, embedding_size), name=TILE_FEATURES)
  valid = keras.Input((None,), name=features.TILE_VALID_XF)
  head = build_head(model, None, embedding_size, num_classes)
  outputs = head({TILE_FEATURES: tile_features, features.TILE_VALID_XF: valid})
  named = {key: keras.layers.Identity(name=key, dtype="float32")(value)
           for key, value in outputs.items()}
  return keras.Model({TILE_FEATURES: tile_features, features.TILE_VALID_XF: valid}, named,
                     name=f"mil_head_{model.pooling}")


def ordinal_targets(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
  """[B] or [B, 1] integer grades -> [B, K-1] cumulative 0/1 targets."""
  labels = tf.reshape(tf.cast(labels, tf.int32), [-1, 1])
  thresholds = tf.range(1, num_classes, dtype=tf.int32)[None, :]
  return tf.cast(labels >= thresholds, tf.float32)
