"""SlideExampleGen: a file-based TFX ExampleGen that turns slides into bags.

Beam stages: ListSlides (labels joined with slide files, checked before any
tiling) -> TileSlides (components/slide_stages.py: one `tf.Example` bag per
slide, or a reject with its reason) -> the base executor's hash split on
`patient_id` -> TFRecords.

Every input slide (a labelled id or a slide file) ends up either as a bag or
as a row of `slide_report/rejects.csv` inside the Examples artifact; the
counts are stored as custom properties of that artifact and as Beam counters.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import apache_beam as beam
import tensorflow as tf
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import proto_utils

from histopipe.components import bag_features, datasets
from histopipe.components.slide_stages import (TileSlides, WriteSlideReport, read_outcomes,
                                               summarize_outcomes)
from histopipe.core.configs import PipelineConfig
from histopipe.core.layout import SLIDE_REPORT_DIR
# exec_properties key the executor adds for its own PTransform.
_REPORT_DIR_KEY = "_slide_report_dir"


def config_from_exec_properties(exec_properties: Dict[str, Any]) -> PipelineConfig:
  custom = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(exec_properties["custom_config"], custom)
  values = struct_pb2.Struct()
  custom.custom_config.Unpack(values)
  return PipelineConfig.from_json(values["pipeline_config"])


@beam.ptransform_fn
def _SlidesToExample(pipeline, exec_properties: Dict[str, Any], split_pattern: str):  # pylint: disable=invalid-name
  config = config_from_exec_properties(exec_properties)
  # Planning reads the label file here, at pipeline construction, so a bad
  # label file fails before any slide is tiled.
  tasks = datasets.plan(exec_properties["input_base"], config.data.format, split_pattern,
                        config.data.labels_file)
  results = (pipeline
             | "ListSlides" >> beam.Create(tasks)
             | "TileSlides" >> TileSlides(config.tiling))
  _ = results.outcomes | "WriteSlideReport" >> WriteSlideReport(
      exec_properties[_REPORT_DIR_KEY])
  # The base executor splits on `patient_id`, which it reads from parsed Examples.
  return results.examples | "ParseBags" >> beam.Map(tf.train.Example.FromString)


class SlideExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _SlidesToExample

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    examples = artifact_utils.get_single_instance(output_dict["examples"])
    report_dir = os.path.join(examples.uri, SLIDE_REPORT_DIR)
    exec_properties = dict(exec_properties, **{_REPORT_DIR_KEY: report_dir})
    super().Do(input_dict, output_dict, exec_properties)
    for key, value in summarize_outcomes(read_outcomes(report_dir)).items():
      examples.set_int_custom_property(key, value)


def make_custom_config(config: PipelineConfig) -> example_gen_pb2.CustomConfig:
  # The config travels as one JSON string: a Struct would turn ints into floats.
  values = struct_pb2.Struct()
  values["pipeline_config"] = config.to_json()
  packed = any_pb2.Any()
  packed.Pack(values)
  return example_gen_pb2.CustomConfig(custom_config=packed)


def input_pattern(data_dir: str, data_format: str, slide_pattern: str) -> str:
  """The files the ExampleGen driver fingerprints to detect new data."""
  if data_format == "auto":
    data_format = datasets.detect_format(data_dir)
  return {"panda": slide_pattern, "pcam": "train/*.tif", "idc": "*/*/*.png"}[data_format]


class SlideExampleGen(FileBasedExampleGen):
  """Bags of the best tiles of each slide, split by patient."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(SlideExampleGenExecutor)

  def __init__(self, input_base: str, config: PipelineConfig):
    data = config.data
    super().__init__(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(
            name="slides", pattern=input_pattern(input_base, data.format, data.slide_pattern))]),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
                for name, buckets in (("train", data.train_buckets),
                                      ("valid", data.valid_buckets),
                                      ("eval", data.eval_buckets))
            ],
            partition_feature_name=bag_features.PARTITION_FEATURE)),
        custom_config=make_custom_config(config))
