"""The tile embedding model: encoded tiles in, a frozen encoder's features out.

What the TileEmbedder (components/tile_embedder/) saves once beside its
output and every Beam worker loads: model.encoder (encoders/frozen.py) behind
the tile decoder every model of histopipe uses (encoders/tile_images.py), as
one SavedModel with one signature, EMBED_SIGNATURE: [n] encoded PNG/JPEG
tiles -> {EMBEDDINGS: [n, D] float32}. A worker then needs TensorFlow and
this folder, not the encoder's own format, its weights file or its pixel
scaling; the served model's `embed_tiles` computes the same function.
"""

from __future__ import annotations

import tensorflow as tf

from histopipe.core.configs import ModelConfig
from histopipe.encoders import frozen
from histopipe.encoders.tile_images import decode_tile_images

EMBED_SIGNATURE = "embed_tiles"
TILES_INPUT = "tiles"
EMBEDDINGS = "embeddings"


class TileEmbedding(tf.Module):
  """model.encoder on encoded tiles."""

  def __init__(self, model: ModelConfig):
    super().__init__(name="tile_embedding")
    self.encoder = frozen.build_frozen_encoder(model)
    self.input_size = model.input_size
    self.embedding_size = int(self.encoder.output_shape[-1])

  def embed(self, encoded_tiles: tf.Tensor) -> tf.Tensor:
    """[n] encoded tiles -> [n, D] float32."""
    return self.encoder(decode_tile_images(encoded_tiles, self.input_size), training=False)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=TILES_INPUT)])
  def embed_tiles(self, encoded_tiles):
    return {EMBEDDINGS: self.embed(encoded_tiles)}


def save_tile_embedding(model: ModelConfig, path: str) -> int:
  """Saves model.encoder's TileEmbedding at `path`; returns its embedding size."""
  module = TileEmbedding(model)
  tf.saved_model.save(module, path, signatures={EMBED_SIGNATURE: module.embed_tiles})
  return module.embedding_size
