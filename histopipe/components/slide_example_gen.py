"""SlideExampleGen: a file-based TFX ExampleGen that turns slides into bags.

Beam stages, none of which imports TensorFlow: ListSlides (labels joined with
slide files, checked before any tiling) -> TileSlides (components/slide_stages.py:
one serialized bag per slide, keyed by its patient, or a reject with its reason)
-> SplitByPatient (the hash of `patient_id` TFX's own ExampleGen uses, on the
id the stage already has instead of on parsed Examples) -> one TFRecord file
set per split. The records are not gzipped: the tiles are PNG/JPEG already, so
gzip saved 2.5% of the bytes for as much time as the tiling itself; TFX's
readers tell compression by the file name (no `.gz`: none).

Every input slide (a labelled id or a slide file) ends up either as a bag or
as a row of `slide_report/rejects.csv` inside the Examples artifact; the
counts are stored as custom properties of that artifact and as Beam counters.

The driver fingerprints the inputs through core/storage (local or a bucket):
the label file and every slide, by size and modification time. With the
tiling settings in the execution properties, a cached ExampleGen is reused
exactly as long as neither changed.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import apache_beam as beam
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from histopipe.components import artifact_files, bag_features, datasets
from histopipe.components.slide_stages import (TileSlides, WriteSlideReport,
                                               partition_by_patient, read_outcomes,
                                               summarize_outcomes)
from histopipe.core import storage
from histopipe.core.configs import DataConfig, PipelineConfig
from histopipe.core.layout import SLIDE_REPORT_DIR

RECORDS_PREFIX = "data_tfrecord"  # TFX's own name for an ExampleGen's record files
# Keys of the ExampleGen's custom config: only what tiling depends on, so a
# change of training settings leaves a cached ExampleGen valid.
_DATA, _TILING, _CODE = "data", "tiling", "code"


def make_custom_config(config: PipelineConfig,
                       code_fingerprint: str = "") -> example_gen_pb2.CustomConfig:
  # Each part travels as one JSON string: a Struct would turn ints into floats.
  values = struct_pb2.Struct()
  values[_DATA] = json.dumps(config.to_dict()[_DATA], sort_keys=True)
  values[_TILING] = json.dumps(config.to_dict()[_TILING], sort_keys=True)
  values[_CODE] = code_fingerprint
  packed = any_pb2.Any()
  packed.Pack(values)
  return example_gen_pb2.CustomConfig(custom_config=packed)


def config_from_exec_properties(exec_properties: Dict[str, Any]) -> PipelineConfig:
  """The settings the ExampleGen runs with (data and tiling; the rest default)."""
  custom = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY], custom)
  values = struct_pb2.Struct()
  custom.custom_config.Unpack(values)
  return PipelineConfig.from_dict({_DATA: json.loads(values[_DATA]),
                                   _TILING: json.loads(values[_TILING])})


def _input_split(exec_properties: Dict[str, Any]) -> example_gen_pb2.Input.Split:
  input_config = example_gen_pb2.Input()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                            input_config)
  (split,) = input_config.splits
  return split


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
                          config.data.format, _input_split(exec_properties).pattern,
                          config.data.labels_file)
    with self._make_beam_pipeline() as pipeline:
      results = (pipeline
                 | "ListSlides" >> beam.Create(tasks)
                 | "TileSlides" >> TileSlides(config.tiling))
      by_split = results.examples | "SplitByPatient" >> beam.Partition(
          partition_by_patient, len(splits), buckets)
      for split, bags in zip(splits, by_split):
        _ = (bags
             | f"DropPatientKeys[{split.name}]" >> beam.Values()
             | f"WriteSplit[{split.name}]" >> beam.io.WriteToTFRecord(
                 storage.join(artifact_utils.get_split_uri(artifacts, split.name),
                              RECORDS_PREFIX)))
      _ = results.outcomes | "WriteSlideReport" >> WriteSlideReport(report_dir,
                                                                     artifact_files.write_text)
    for key, value in summarize_outcomes(read_outcomes(report_dir,
                                                       artifact_files.open_file)).items():
      examples.set_int_custom_property(key, value)
    examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)


class SlideExampleGenDriver(example_gen_driver.FileBasedDriver):
  """Fingerprints the label file and every input file (core/storage, so local
  folders and buckets alike), instead of TFX's fingerprint of one file pattern."""

  def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
    del pipeline_info, component_info
    config = config_from_exec_properties(exec_properties)
    exec_properties[example_gen_utils.SPAN_PROPERTY_NAME] = 0
    exec_properties[example_gen_utils.VERSION_PROPERTY_NAME] = None
    exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = datasets.input_fingerprint(
        exec_properties[standard_component_specs.INPUT_BASE_KEY], config.data.format,
        _input_split(exec_properties).pattern, config.data.labels_file)
    return exec_properties


def input_pattern(data_dir: str, data: DataConfig) -> str:
  """The input split's file pattern (the slides, for PANDA)."""
  data_format = (datasets.detect_format(data_dir, data.labels_file) if data.format == "auto"
                 else data.format)
  # A bucket, or a data root given only at run time (a Kubeflow parameter), is
  # not looked into when the pipeline is built: there the default is
  # train_images/*.
  local = isinstance(data_dir, str) and not storage.is_url(data_dir)
  default = datasets.default_slide_pattern(data_dir) if local else datasets.PANDA_SLIDES
  return {"panda": data.slide_pattern or default,
          "pcam": datasets.PCAM_PATCHES,
          "idc": datasets.IDC_PATCHES}[data_format]


class SlideExampleGen(FileBasedExampleGen):
  """Bags of the best tiles of each slide, split by patient."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(SlideExampleGenExecutor)
  DRIVER_CLASS = SlideExampleGenDriver

  def __init__(self, input_base: str, config: PipelineConfig, code_fingerprint: str = ""):
    data = config.data
    super().__init__(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(
            name="slides", pattern=input_pattern(input_base, data))]),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
                for name, buckets in (("train", data.train_buckets),
                                      ("valid", data.valid_buckets),
                                      ("eval", data.eval_buckets))
            ],
            partition_feature_name=bag_features.PARTITION_FEATURE)),
        custom_config=make_custom_config(config, code_fingerprint))

