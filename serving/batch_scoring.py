"""`histopipe score`: a folder of slides through the exported model with Beam.

Beam's RunInference with a model handler for our SavedModel's
`serving_default` (serialized bags in; grade, probabilities, attention out):
each worker loads the model once and scores batches of bags. Tiling is
`slides.tiling.cut_bag`, as in SlideExampleGen and `histopipe predict`,
and the records are `predict`'s: the JSON lines (predictions and rejected
slides) and optionally the submission CSV; unlike `predict`, `score` has the
model folder, so each record's `out_of_range` is checked against the training
statistics in it (monitoring/slide_skew.py). Runs on any Beam runner; the
DirectRunner by default.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference import base as inference
from apache_beam.options.pipeline_options import PipelineOptions

from histopipe.beam.slide_stages import (CountingDoFn, ItemProgress, csv_line,
                                               single_worker)
from histopipe.core import signatures
from histopipe.core.configs import PipelineConfig
from histopipe.monitoring import drift, slide_skew
from histopipe.serving.saved_model import LoadedModel, resolve_version_dir
from histopipe.serving.slide_predictions import (CSV_HEADER, SlideRequest, cut_request,
                                                 prediction_record)


class CutRequestFn(CountingDoFn):
  """A path -> a SlideRequest, or a rejected record (tagged "rejected")."""

  def __init__(self, config: PipelineConfig, progress: ItemProgress):
    super().__init__(progress)
    self._config = config

  def process(self, path: str):
    request = cut_request(path, self._config)
    yield request if isinstance(request, SlideRequest) else beam.pvalue.TaggedOutput(
        "rejected", request)
    self._progress.step()


class SavedModelHandler(inference.ModelHandler[SlideRequest, Dict[str, np.ndarray], Any]):
  """RunInference over a SavedModel signature that takes serialized bags."""

  def __init__(self, model_dir: str, signature: str = signatures.SERVING_DEFAULT,
               max_batch_size: int = 8):
    super().__init__()
    self._path, _ = resolve_version_dir(model_dir)  # a missing model fails here, not on a worker
    self._signature = signature
    self._max_batch_size = max_batch_size

  def load_model(self) -> LoadedModel:
    return LoadedModel(self._path)  # on the worker, once per model load

  def run_inference(self, batch: Sequence[SlideRequest], model: LoadedModel,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[inference.PredictionResult]:
    examples = np.array([request.example for request in batch], dtype=object)
    outputs = model.run(self._signature, {signatures.EXAMPLES: examples})
    for row, request in enumerate(batch):
      yield inference.PredictionResult(
          request, {key: value[row:row + 1] for key, value in outputs.items()})

  def batch_elements_kwargs(self):
    return {"max_batch_size": self._max_batch_size}

  def get_num_bytes(self, batch: Sequence[SlideRequest]) -> int:
    return sum(len(request.example) for request in batch)


_COUNTERS = "histopipe.score"


def _record(result: inference.PredictionResult, referral_settings: Optional[dict],
            training_ranges: Optional[Dict[str, Dict[str, float]]]) -> dict:
  request = result.example
  beam.metrics.Metrics.counter(_COUNTERS, "predicted").inc()
  record = prediction_record(request.image_id, request.bag, result.inference, referral_settings,
                             training_ranges)
  if record.get("refer"):
    beam.metrics.Metrics.counter(_COUNTERS, "referred").inc()
  return record


def _rejected(record: dict) -> dict:
  beam.metrics.Metrics.counter(_COUNTERS, "rejected").inc()
  return record


def score_slides(model_dir: str, paths: List[str], config: PipelineConfig, out_path: str,
                 csv_path: str = "", beam_args: Sequence[str] = (),
                 progress: bool = False,
                 referral_settings: Optional[dict] = None) -> Dict[str, int]:
  """Writes `out_path` (JSON lines, one per path) and, if asked, `csv_path`;
  returns counts of predicted, rejected and referred slides (`referral_settings`:
  the model contract's referral threshold). Each record's `out_of_range` is
  checked against the training statistics the model carries (null without)."""
  # Two numbers a statistic, read here once and sent to the workers with the
  # stage, rather than each worker reading the statistics file.
  training_ranges = slide_skew.training_ranges(
      drift.model_training_statistics(resolve_version_dir(model_dir)[0]))
  options = PipelineOptions(list(beam_args))
  counter = ItemProgress("tiling slides for scoring", len(paths) if progress else 0,
                         shared=not single_worker(options))
  pipeline = beam.Pipeline(options=options)
  requests = (pipeline | "Paths" >> beam.Create(paths)
              | "Reshuffle" >> beam.Reshuffle()  # spread slides over workers
              | "CutBags" >> beam.ParDo(CutRequestFn(config, counter)).with_outputs(
                  "rejected", main="requests"))
  predicted = (requests.requests
               | "Predict" >> inference.RunInference(SavedModelHandler(model_dir))
               | "ToRecords" >> beam.Map(_record, referral_settings, training_ranges))
  rejected = requests.rejected | "CountRejected" >> beam.Map(_rejected)
  records = (predicted, rejected) | "AllRecords" >> beam.Flatten()
  _ = (records | "ToJson" >> beam.Map(json.dumps)
       | "WriteRecords" >> beam.io.WriteToText(out_path, shard_name_template=""))
  if csv_path:
    _ = (predicted
         | "ToCsv" >> beam.Map(lambda r: csv_line((r["image_id"], r["grade"])))
         | "WriteCsv" >> beam.io.WriteToText(csv_path, shard_name_template="",
                                             header=csv_line(CSV_HEADER[config.task])))
  result = pipeline.run()
  result.wait_until_finish()
  counts = {"predicted": 0, "rejected": 0, "referred": 0}
  for metric in result.metrics().query(
      beam.metrics.MetricsFilter().with_namespace(_COUNTERS))["counters"]:
    counts[metric.key.metric.name] += metric.committed
  return counts
