"""The TileEmbedder's Beam stages: tile bags in, embedding bags out.

SplitTiles: each bag's real tiles, keyed (image id, tile index), and the rest
of the bag (its labels, provider, patient, coordinates, image statistics)
keyed by image id. EmbedTiles: Beam's RunInference over the tiles, keyed,
batched across slides between the configured sizes; each tile is decoded
once, inside the model. JoinEmbeddings: the rest of each bag and its tiles'
embeddings, grouped by image id, become one embedding bag
(bag_features.EMBEDDINGS). A bag's tiles travel as their encoded bytes, not
as pixels: a 4,096-tile bag is ~80 MB encoded and 600 MB decoded.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from histopipe.bags import bag_features
from histopipe.beam.slide_stages import CountingDoFn, ItemProgress
from histopipe.components.tile_embedder.model_handler import TileEmbeddingHandler

COUNTERS_NAMESPACE = "TileEmbedder"


def _example_class():
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  return example_pb2.Example


def split_bag(serialized_bag: bytes) -> Tuple[str, list, bytes]:
  """(image id, the real tiles in order, the bag without tiles): its
  tile_x, tile_y and tile_tissue cut to the real tiles' entries."""
  example = _example_class().FromString(serialized_bag)
  feature = example.features.feature
  image_id = feature[bag_features.IMAGE_ID].bytes_list.value[0].decode()
  valid = [bool(v) for v in feature[bag_features.TILE_VALID].int64_list.value]
  tiles = [t for t, v in zip(feature[bag_features.TILES].bytes_list.value, valid) if v]
  for key, kind in ((bag_features.TILE_X, "int64_list"), (bag_features.TILE_Y, "int64_list"),
                    (bag_features.TILE_TISSUE, "float_list")):
    values = getattr(feature[key], kind).value
    kept = [value for value, v in zip(values, valid) if v]
    del values[:]
    values.extend(kept)
  del feature[bag_features.TILES]
  del feature[bag_features.TILE_VALID]
  return image_id, tiles, example.SerializeToString(deterministic=True)


def embedding_bag(rest_of_bag: bytes, embeddings: np.ndarray) -> bytes:
  """The serialized embedding bag: `rest_of_bag` (split_bag's) with the
  [n, D] embeddings of its tiles."""
  example = _example_class().FromString(rest_of_bag)
  feature = example.features.feature
  feature[bag_features.EMBEDDINGS].float_list.value.extend(
      np.asarray(embeddings, np.float32).reshape(-1).tolist())
  feature[bag_features.EMBEDDING_SIZE].int64_list.value.append(int(embeddings.shape[1]))
  return example.SerializeToString(deterministic=True)


class SplitTilesFn(beam.DoFn):
  """A tile bag -> ((image id, i), tile i) for each real tile, and the rest
  of the bag, tagged "rest": (image id, (tile count, bytes))."""

  def __init__(self):
    self._tiles = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "tiles_to_embed")

  def process(self, serialized_bag: bytes) -> Iterator:
    image_id, tiles, rest = split_bag(serialized_bag)
    self._tiles.inc(len(tiles))
    yield beam.pvalue.TaggedOutput("rest", (image_id, (len(tiles), rest)))
    for index, tile in enumerate(tiles):
      yield (image_id, index), tile


class JoinEmbeddingsFn(CountingDoFn):
  """(image id, {"rest": [(n, bytes)], "embeddings": [(i, [D])...]}) -> the
  embedding bag, its tiles in their bag's order."""

  def __init__(self, progress: ItemProgress):
    super().__init__(progress)
    self._bags = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "bags_embedded")

  def process(self, joined) -> Iterator[bytes]:
    image_id, groups = joined
    rests, embedded = list(groups["rest"]), sorted(groups["embeddings"], key=lambda e: e[0])
    if len(rests) != 1:
      raise ValueError(f"{len(rests)} bags with image id {image_id!r} in one split: "
                       "the SlideExampleGen writes one a slide")
    tile_count, rest = rests[0]
    if [index for index, _ in embedded] != list(range(tile_count)):
      raise ValueError(f"{image_id}: {len(embedded)} embeddings for {tile_count} tiles")
    self._bags.inc()
    self._progress.step()
    yield embedding_bag(rest, np.stack([embedding for _, embedding in embedded]))


@beam.ptransform_fn
def EmbedBags(bags, model_path: str, min_batch_size: int,  # pylint: disable=invalid-name
              max_batch_size: int, progress: ItemProgress = None):
  """PCollection[serialized tile bag] -> PCollection[serialized embedding bag]."""
  split = bags | "SplitTiles" >> beam.ParDo(SplitTilesFn()).with_outputs("rest", main="tiles")
  embedded = (split.tiles
              | "EmbedTiles" >> RunInference(KeyedModelHandler(
                  TileEmbeddingHandler(model_path, min_batch_size, max_batch_size)))
              | "KeyBySlide" >> beam.Map(_by_slide))
  return ({"rest": split.rest, "embeddings": embedded}
          | "GroupBySlide" >> beam.CoGroupByKey()
          | "JoinEmbeddings" >> beam.ParDo(JoinEmbeddingsFn(
              progress or ItemProgress("", 0, shared=False))))


def _by_slide(keyed_result) -> Tuple[str, Tuple[int, np.ndarray]]:
  (image_id, index), result = keyed_result
  return image_id, (index, result.inference)
