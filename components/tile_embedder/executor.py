"""The TileEmbedder executor: saves model.encoder as the tile embedding model
inside its output, then the Beam job that embeds every split's bags."""

from __future__ import annotations

import json
import os

import apache_beam as beam
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from histopipe.bags import statistics_table
from histopipe.beam.slide_stages import ItemProgress, single_worker
from histopipe.components.tile_embedder.embedding_stages import EmbedBags
from histopipe.core.configs import PipelineConfig
from histopipe.core.layout import SLIDE_REPORT_DIR, bag_statistics_path
from histopipe.encoders.tile_embedding import save_tile_embedding

EXAMPLES_KEY = "examples"
EMBEDDINGS_KEY = "embeddings"
CONFIG_KEY = "config"
ENCODER_DIGEST_KEY = "encoder_digest"
# Inside the output: the model the workers ran, kept as the bags' provenance.
ENCODER_DIR = "tile_embedding_model"
RECORDS_PREFIX = "data_tfrecord"
# Custom properties of the output.
EMBEDDING_SIZE = "embedding_size"
ENCODER_DIGEST = "encoder_digest"


def _copy_folder(source: str, target: str) -> None:
  """The slide report and bag statistics tables: the embedding bags are the
  tile bags' slides, so the steps that read the tables read them here too."""
  if not fileio.exists(source):
    return
  for folder, _, names in fileio.walk(source):
    relative = os.path.relpath(folder, source)
    fileio.makedirs(os.path.join(target, relative))
    for name in names:
      fileio.copy(os.path.join(folder, name), os.path.join(target, relative, name),
                  overwrite=True)


def _bags_of(examples_uri: str, split: str) -> int:
  """The bags of a split, from its statistics table (0 when it has none)."""
  path = bag_statistics_path(examples_uri, split)
  if not fileio.exists(path):
    return 0
  with fileio.open(path, "r") as f:
    return len(statistics_table.parse_table(f.read(), path))


class TileEmbedderExecutor(base_beam_executor.BaseBeamExecutor):
  """Tile bags -> embedding bags, split by split."""

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    config = PipelineConfig.from_json(exec_properties[CONFIG_KEY])
    examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
    embeddings = artifact_utils.get_single_instance(output_dict[EMBEDDINGS_KEY])
    splits = artifact_utils.decode_split_names(examples.split_names)
    embeddings.split_names = artifact_utils.encode_split_names(splits)
    model_path = os.path.join(embeddings.uri, ENCODER_DIR)
    embedding_size = save_tile_embedding(config.model, model_path)
    _copy_folder(os.path.join(examples.uri, SLIDE_REPORT_DIR),
                 os.path.join(embeddings.uri, SLIDE_REPORT_DIR))
    total = sum(_bags_of(examples.uri, split) for split in splits)
    batching = config.embedding
    with self._make_beam_pipeline() as pipeline:
      progress = ItemProgress("embedding bags", total,
                              shared=not single_worker(pipeline.options))
      for split in splits:
        source = artifact_utils.get_split_uri([examples], split)
        shards = len(fileio.glob(os.path.join(source, "*"))) or 1
        _ = (pipeline
             | f"ReadBags[{split}]" >> beam.io.ReadFromTFRecord(os.path.join(source, "*"))
             | f"EmbedBags[{split}]" >> EmbedBags(model_path, batching.min_batch_size,
                                                  batching.max_batch_size, progress)
             | f"WriteSplit[{split}]" >> beam.io.WriteToTFRecord(
                 os.path.join(artifact_utils.get_split_uri([embeddings], split),
                              RECORDS_PREFIX), num_shards=shards))
    embeddings.set_int_custom_property(EMBEDDING_SIZE, embedding_size)
    embeddings.set_string_custom_property(ENCODER_DIGEST, exec_properties[ENCODER_DIGEST_KEY])
    embeddings.set_string_custom_property(
        "encoder", json.dumps({"encoder": config.model.encoder,
                               "spec": config.to_dict()["model"]["encoder_spec"]}))
    examples_utils.set_payload_format(embeddings, example_gen_pb2.FORMAT_TF_EXAMPLE)
