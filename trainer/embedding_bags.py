"""Embedding bags (components/tile_embedder/) as the head takes them.

A split's bags have as many tiles as their slides have tissue, so their
`embeddings` arrive as a SparseTensor [B, n * D] (a VarLen feature: tfxio's
reading, tf.io.parse_example's), or dense [B, n * D] when every bag of a
split has one size (SchemaGen then infers a fixed shape). Either becomes
[B, N, D] with a valid mask [B, N], N the batch's largest bag: padding is
masked in the pooling, as a tile bag's padding is."""

from __future__ import annotations

from typing import Dict, Tuple

import tensorflow as tf

from histopipe.bags import bag_features
from histopipe.trainer import features
from histopipe.trainer.model import TILE_FEATURES

# What the head needs of a serialized embedding bag.
PARSE_SPEC = {bag_features.EMBEDDINGS: tf.io.VarLenFeature(tf.float32)}
# What the warm-up requests keep of one (no labels or ids ship with a model).
WARMUP_KEYS = (bag_features.EMBEDDINGS, bag_features.EMBEDDING_SIZE)


def padded_bags(embeddings, embedding_size: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """[B, n_i * D] (sparse or dense) -> ([B, N, D] embeddings, [B, N] valid)."""
  if isinstance(embeddings, tf.sparse.SparseTensor):
    batch = tf.cast(embeddings.dense_shape[0], tf.int32)
    values_per_bag = tf.math.bincount(tf.cast(embeddings.indices[:, 0], tf.int32),
                                      minlength=batch, maxlength=batch, dtype=tf.int32)
    dense = tf.sparse.to_dense(embeddings)
  else:
    dense = embeddings
    values_per_bag = tf.fill(tf.shape(dense)[:1], tf.shape(dense)[1])
  tiles = tf.reshape(dense, [tf.shape(dense)[0], -1, embedding_size])
  valid = tf.sequence_mask(values_per_bag // embedding_size, tf.shape(tiles)[1], tf.float32)
  return tiles, valid


def head_inputs(raw_bags: Dict[str, tf.Tensor], embedding_size: int) -> Dict[str, tf.Tensor]:
  """Parsed embedding bags -> the inputs of trainer.model.build_embedding_model."""
  tiles, valid = padded_bags(raw_bags[bag_features.EMBEDDINGS], embedding_size)
  return {TILE_FEATURES: tiles, features.TILE_VALID_XF: valid}


def embedding_size_of(file_patterns) -> int:
  """D, from the first embedding bag of the record files (the TileEmbedder
  writes it into each bag)."""
  files = tf.io.gfile.glob(file_patterns) if isinstance(file_patterns, str) else [
      f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)]
  compression = "GZIP" if files and files[0].endswith(".gz") else ""
  for record in tf.data.TFRecordDataset(files[:1], compression_type=compression).take(1):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    if bag_features.EMBEDDING_SIZE not in feature:
      raise ValueError(f"{files[0]}: tile bags, not embedding bags (model.encoder is set: "
                       "the Trainer takes the TileEmbedder's output)")
    return int(feature[bag_features.EMBEDDING_SIZE].int64_list.value[0])
  raise ValueError(f"no embedding bags in {file_patterns}")


def reading_schema(schema):
  """The Transform's raw schema of embedding bags with their embeddings, as
  a feature of any length (a SparseTensor when read): the statistics, and so
  the inferred schema, leave the embeddings out (bag_features.EMBEDDING_BAG_METADATA)."""
  from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=import-outside-toplevel
  with_embeddings = schema_pb2.Schema()
  with_embeddings.CopyFrom(schema)
  if not any(f.name == bag_features.EMBEDDINGS for f in with_embeddings.feature):
    with_embeddings.feature.add(name=bag_features.EMBEDDINGS, type=schema_pb2.FLOAT)
  return with_embeddings
