"""SlideExampleGen: a file-based TFX ExampleGen that turns slides into bags.

Beam stages: ListSlides (labels joined with slide files, checked before any
tiling) -> TileSlides (one `tf.Example` bag per slide, or a reject with its
reason) -> the base executor's hash split on `patient_id` -> TFRecords.

Every input slide (a labelled id or a slide file) ends up either as a bag or
as a row of `slide_report/rejects.csv` inside the Examples artifact; the
counts are stored as custom properties of that artifact and as Beam counters.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from typing import Any, Dict, Iterator, List, NamedTuple

import apache_beam as beam
import tensorflow as tf
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import proto_utils

from components import bag_features, datasets
from components.datasets import SlideTask
from components.slide_reader import SlideError
from components.tiling import tile_patch, tile_slide
from pipeline.configs import PipelineConfig, TilingConfig

REPORT_DIR = "slide_report"
REJECTS_FILE = "rejects.csv"
OUTCOMES_FILE = "slides.csv"
REJECTS_HEADER = "image_id,path,reason"
OUTCOMES_HEADER = "image_id,path,status,reason,tiles"
# exec_properties key the executor adds for its own PTransform.
_REPORT_DIR_KEY = "_slide_report_dir"
_COUNTERS = "SlideExampleGen"


class SlideOutcome(NamedTuple):
  image_id: str
  path: str
  status: str  # "written" or "rejected"
  reason: str
  tiles: int


class TileSlideFn(beam.DoFn):
  """One slide -> one bag; any failure becomes an outcome with its reason.

  With `preview_dir`, writes `<image_id>.png` there for every tiled slide.
  With `progress_total`, prints a counter with rate to stderr (per worker).
  """

  def __init__(self, tiling: TilingConfig, preview_dir: str = "", progress_total: int = 0):
    self._tiling = tiling
    self._preview_dir = preview_dir
    self._progress_total = progress_total
    self._written = beam.metrics.Metrics.counter(_COUNTERS, "slides_written")
    self._rejected = beam.metrics.Metrics.counter(_COUNTERS, "slides_rejected")
    self._tiles = beam.metrics.Metrics.counter(_COUNTERS, "tiles_written")

  def setup(self):
    self._done = 0
    self._start = time.time()
    self._last_print = 0.0

  def _report_progress(self):
    self._done += 1
    now = time.time()
    if not self._progress_total or (now - self._last_print < 1.0 and
                                    self._done < self._progress_total):
      return
    self._last_print = now
    rate = self._done / max(now - self._start, 1e-9)
    print(f"tiling slides: {self._done}/{self._progress_total} ({rate:.1f} slides/s)",
          file=sys.stderr, end="\n" if self._done >= self._progress_total else "\r",
          flush=True)

  def _reject(self, task: SlideTask, reason: str):
    self._rejected.inc()
    return beam.pvalue.TaggedOutput(
        "outcomes", SlideOutcome(task.image_id, task.path, "rejected", reason, 0))

  def process(self, task: SlideTask) -> Iterator[Any]:
    yield from self._tile(task)
    self._report_progress()

  def _tile(self, task: SlideTask) -> Iterator[Any]:
    if task.problem:
      yield self._reject(task, task.problem)
      return
    try:
      if task.kind == "patch":
        bag = tile_patch(task.path, self._tiling, task.tile_x, task.tile_y)
      else:
        preview = (os.path.join(self._preview_dir, f"{task.image_id}.png")
                   if self._preview_dir else "")
        bag = tile_slide(task.path, self._tiling, preview_path=preview)
    except SlideError as e:
      yield self._reject(task, e.reason)
      return
    except Exception as e:  # an item must never take the run down with it
      yield self._reject(task, f"unexpected {type(e).__name__}: {e}")
      return
    label = task.label
    example = bag_features.bag_to_example(
        bag, image_id=label.image_id, patient_id=label.patient_id,
        data_provider=label.data_provider, label=label.label,
        gleason_score=label.gleason_score)
    tiles = sum(bag.tile_valid)
    self._written.inc()
    self._tiles.inc(tiles)
    yield example
    yield beam.pvalue.TaggedOutput(
        "outcomes", SlideOutcome(task.image_id, task.path, "written", "", tiles))


def _csv_line(values) -> str:
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="").writerow(values)
  return buffer.getvalue()


@beam.ptransform_fn
def TileSlides(tasks, tiling: TilingConfig, preview_dir: str = "",  # pylint: disable=invalid-name
               progress_total: int = 0):
  """PCollection[SlideTask] -> (examples, outcomes)."""
  return (tasks
          | "Reshuffle" >> beam.Reshuffle()  # spread slides over workers
          | "Tile" >> beam.ParDo(TileSlideFn(tiling, preview_dir, progress_total)).with_outputs(
              "outcomes", main="examples"))


@beam.ptransform_fn
def WriteSlideReport(outcomes, report_dir: str):  # pylint: disable=invalid-name
  """`slides.csv` (every slide and what happened) and `rejects.csv`."""
  (outcomes
   | "FormatOutcomes" >> beam.Map(_csv_line)
   | "WriteOutcomes" >> beam.io.WriteToText(
       os.path.join(report_dir, OUTCOMES_FILE), shard_name_template="",
       header=OUTCOMES_HEADER))
  return (outcomes
          | "OnlyRejects" >> beam.Filter(lambda o: o.status == "rejected")
          | "FormatRejects" >> beam.Map(lambda o: _csv_line((o.image_id, o.path, o.reason)))
          | "WriteRejects" >> beam.io.WriteToText(
              os.path.join(report_dir, REJECTS_FILE), shard_name_template="",
              header=REJECTS_HEADER))


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
  return results.examples


def read_outcomes(report_dir: str) -> List[SlideOutcome]:
  with tf.io.gfile.GFile(os.path.join(report_dir, OUTCOMES_FILE)) as f:
    return [SlideOutcome(r["image_id"], r["path"], r["status"], r["reason"], int(r["tiles"]))
            for r in csv.DictReader(f)]


def summarize_outcomes(outcomes: List[SlideOutcome]) -> Dict[str, int]:
  written = [o for o in outcomes if o.status == "written"]
  return {"slides_total": len(outcomes), "slides_written": len(written),
          "slides_rejected": len(outcomes) - len(written),
          "tiles_written": sum(o.tiles for o in written)}


class SlideExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _SlidesToExample

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    examples = artifact_utils.get_single_instance(output_dict["examples"])
    report_dir = os.path.join(examples.uri, REPORT_DIR)
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
