"""The served model of a head trained on a frozen encoder's embeddings.

One SavedModel composes the frozen encoder (model.encoder, behind the tile
decoder every model uses: encoders/tile_images.py) with the trained head, so
clients send what they send any histopipe model:

  serving_default     tile bags (tf.Example: tiles, tile_valid), of any size
  predict_tiles       one bag's encoded tiles
and, for bags of thousands of tiles sent in chunks:
  embed_tiles         encoded tiles [n] -> embeddings [n, D]
  predict_embeddings  one bag's embeddings [n, D] -> the outputs
and for the Evaluator and the Trainer's eval predictions:
  embedding_bags      serialized embedding bags -> the outputs
  metadata            the model contract

Only real tiles reach the encoder (a padded bag's padding is skipped, not
encoded and masked), and the encoder runs inside TensorFlow's BatchFunction
op (trainer/encoder_batching.py) for every signature that encodes, so the
tiles of concurrent requests share its batches. A bag's embeddings from
embed_tiles are what the TileEmbedder wrote for training: same decoder, same
encoder, same weights.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from histopipe.bags import bag_features
from histopipe.core import signatures
from histopipe.core.configs import PipelineConfig
from histopipe.core.model_contract import ModelContract
from histopipe.encoders import frozen
from histopipe.encoders.tile_images import decode_tile_images
from histopipe.trainer import embedding_bags, encoder_batching, features
from histopipe.trainer.contract_signature import metadata_signature
from histopipe.trainer.model import TILE_FEATURES

_TILE_BAG_SPEC = {bag_features.TILES: tf.io.VarLenFeature(tf.string),
                  bag_features.TILE_VALID: tf.io.VarLenFeature(tf.int64)}


def _to_width(values: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """[B, w] -> [B, width]: cut, or padded with zeros."""
  values = values[:, :width]
  return tf.pad(values, [[0, 0], [0, width - tf.shape(values)[1]]])


def serving_signatures(head: keras.Model, config: PipelineConfig, contract: ModelContract):
  """The signatures of `head` (trainer.model.build_embedding_model, trained)
  composed with config.model.encoder, which is built here and tracked by
  `head` so that the SavedModel holds its weights."""
  encoder = frozen.build_frozen_encoder(config.model)
  # The SavedModel holds the encoder's weights through a plain tf.Module, not
  # the Keras model itself: Keras' saver traces every layer it reaches
  # (ResNet50's hundred-odd), which doubled the export's time; the
  # signatures call the encoder, and its variables are all they need.
  head.frozen_tile_encoder_weights = tf.Module()
  head.frozen_tile_encoder_weights.variables_of_encoder = list(encoder.variables)
  # A SavedModel encoder's own objects (its variables, and any assets or
  # tables), which Keras does not count among the layer's variables.
  head.frozen_tile_encoder_weights.saved_encoders = frozen.loaded_saved_models(encoder)
  embedding_size = int(head.input[TILE_FEATURES].shape[-1])
  if int(encoder.output_shape[-1]) != embedding_size:
    raise ValueError(f"model.encoder gives {encoder.output_shape[-1]} features a tile, the "
                     f"head was trained on {embedding_size}: not the TileEmbedder's encoder")
  size = config.model.input_size

  def encode(images):
    return encoder(images, training=False)

  if config.serving.batching:
    encode = encoder_batching.batched(encode, config.serving, [embedding_size],
                                      encoder_batching.queue_name())

  def embed(encoded_tiles):  # [n] -> [n, D]
    return encode(decode_tile_images(encoded_tiles, size))

  def outputs_of(tiles, valid):  # [B, N, D], [B, N]
    outputs = head({TILE_FEATURES: tiles, features.TILE_VALID_XF: valid}, training=False)
    return {key: outputs[key] for key in signatures.OUTPUTS}

  def one_bag(embeddings):  # [n, D]
    return outputs_of(embeddings[None], tf.ones([1, tf.shape(embeddings)[0]]))

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES)])
  def serve_tf_examples(serialized):
    parsed = tf.io.parse_example(serialized, _TILE_BAG_SPEC)
    tiles = tf.sparse.to_dense(parsed[bag_features.TILES], default_value="")  # [B, N]
    width, batch = tf.shape(tiles)[1], tf.shape(tiles)[0]
    valid = _to_width(tf.cast(tf.sparse.to_dense(parsed[bag_features.TILE_VALID]) > 0,
                              tf.float32), width)
    # Only the real tiles are decoded and encoded; the rest stay zeros, masked.
    real = tf.where(tf.reshape(valid, [-1]) > 0)
    embedded = embed(tf.gather_nd(tf.reshape(tiles, [-1]), real))
    bags = tf.scatter_nd(real, embedded, tf.cast(tf.stack([batch * width, embedding_size]),
                                                 tf.int64))
    return outputs_of(tf.reshape(bags, [batch, width, embedding_size]), valid)

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=signatures.TILES)])
  def predict_tiles(encoded_tiles):
    """One bag: all its encoded tiles."""
    return one_bag(embed(encoded_tiles))

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=signatures.TILES)])
  def embed_tiles(encoded_tiles):
    return {signatures.EMBEDDINGS: embed(encoded_tiles)}

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, embedding_size], tf.float32,
                                              name=signatures.EMBEDDINGS)])
  def predict_embeddings(embeddings):
    """One bag: the embeddings of all its tiles (embed_tiles', in chunks)."""
    return one_bag(embeddings)

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES)])
  def serve_embedding_bags(serialized):
    parsed = tf.io.parse_example(serialized, embedding_bags.PARSE_SPEC)
    return outputs_of(*embedding_bags.padded_bags(parsed[bag_features.EMBEDDINGS],
                                                  embedding_size))

  return {signatures.SERVING_DEFAULT: serve_tf_examples,
          signatures.PREDICT_TILES: predict_tiles,
          signatures.EMBED_TILES: embed_tiles,
          signatures.PREDICT_EMBEDDINGS: predict_embeddings,
          signatures.EMBEDDING_BAGS: serve_embedding_bags,
          signatures.METADATA: metadata_signature(contract)}
