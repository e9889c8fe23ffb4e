"""The SlideExampleGen executor: the Beam job that tiles every slide and writes the bags of each
split and the slide report."""

from __future__ import annotations


import apache_beam as beam
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from histopipe.components.slide_example_gen import artifact_files
from histopipe.data import datasets
from histopipe.beam.slide_stages import (TileSlides, WriteBagStatistics, WriteSlideReport,
                                         partition_by_patient, read_outcomes,
                                         summarize_outcomes)
from histopipe.core import storage
from histopipe.core.layout import SLIDE_REPORT_DIR, bag_statistics_path
from histopipe.components.slide_example_gen.custom_config import (config_from_exec_properties,
                                                                  input_split)

RECORDS_PREFIX = "data_tfrecord"  # TFX's own name for an ExampleGen's record files


# About this many bags a record file: at PANDA's 1-5 MB a bag, shards of
# 0.1-0.5 GB, and 74 shards for its 7,400 training bags, which the Trainer
# reads interleaved in a new order each epoch (file-level shuffling) so that
# its shuffle buffer can stay a few hundred bags.
BAGS_PER_SHARD = 100


def shards_per_split(slides: int) -> int:
  """Record files a split is written in: one per BAGS_PER_SHARD slides of the
  whole job, at least one (a split holds a share of them, so its files hold
  fewer; the count is fixed before the job, when only the slides are known)."""
  return max(1, slides // BAGS_PER_SHARD)


class SlideExampleGenExecutor(base_beam_executor.BaseBeamExecutor):
  """Tiles the slides of `input_base` and writes bags per split, and the slide report."""

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    config = config_from_exec_properties(exec_properties)
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                              output_config)
    splits = output_config.split_config.splits
    buckets = [sum(s.hash_buckets for s in splits[:i + 1]) for i in range(len(splits))]
    artifacts = output_dict[standard_component_specs.EXAMPLES_KEY]
    examples = artifact_utils.get_single_instance(artifacts)
    examples.split_names = artifact_utils.encode_split_names([s.name for s in splits])
    report_dir = storage.join(examples.uri, SLIDE_REPORT_DIR)
    # Planning reads the label file before the Beam job starts, so a bad label
    # file fails before any slide is tiled.
    tasks = datasets.plan(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                          config.data.format, input_split(exec_properties).pattern,
                          config.data.labels_file)
    with self._make_beam_pipeline() as pipeline:
      results = (pipeline
                 | "ListSlides" >> beam.Create(tasks)
                 | "TileSlides" >> TileSlides(config.tiling))
      by_split = results.examples | "SplitByPatient" >> beam.Partition(
          partition_by_patient, len(splits), buckets)
      # The bags' statistics split as the bags are (same keys, same function).
      statistics_by_split = results.statistics | "SplitStatisticsByPatient" >> beam.Partition(
          partition_by_patient, len(splits), buckets)
      shards = shards_per_split(len(tasks))
      for split, bags, statistics in zip(splits, by_split, statistics_by_split):
        _ = (bags
             | f"DropPatientKeys[{split.name}]" >> beam.Values()
             | f"WriteSplit[{split.name}]" >> beam.io.WriteToTFRecord(
                 storage.join(artifact_utils.get_split_uri(artifacts, split.name),
                              RECORDS_PREFIX), num_shards=shards))
        _ = statistics | f"WriteBagStatistics[{split.name}]" >> WriteBagStatistics(
            bag_statistics_path(examples.uri, split.name), artifact_files.write_text)
      _ = results.outcomes | "WriteSlideReport" >> WriteSlideReport(report_dir,
                                                                     artifact_files.write_text)
    for key, value in summarize_outcomes(read_outcomes(report_dir,
                                                       artifact_files.open_file)).items():
      examples.set_int_custom_property(key, value)
    examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
