"""`histopipe score`: a folder of slides through the exported model with Beam.

Beam's RunInference with a model handler for our SavedModel's
`serving_default` (serialized bags in; grade, probabilities, attention out):
each worker loads the model once and scores batches of bags. Tiling is
`components.tiling.cut_bag`, as in SlideExampleGen and `histopipe predict`,
and the records are `predict`'s: the JSON lines (predictions and rejected
slides) and optionally the submission CSV. Runs on any Beam runner; the
DirectRunner by default.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference import base as inference
from apache_beam.options.pipeline_options import PipelineOptions

from histopipe.components.slide_stages import ProgressCounter
from histopipe.core.configs import PipelineConfig
from histopipe.serving.dev_server import DEFAULT_SIGNATURE, resolve_version_dir
from histopipe.serving.slide_predictions import CSV_HEADER, SlideRequest, cut_request, prediction_record


class CutRequestFn(beam.DoFn):
  """A path -> a SlideRequest, or a rejected record (tagged "rejected")."""

  def __init__(self, config: PipelineConfig, progress_total: int = 0):
    self._config = config
    self._progress_total = progress_total

  def setup(self):
    self._progress = ProgressCounter("tiling slides for scoring", self._progress_total)

  def process(self, path: str):
    request = cut_request(path, self._config)
    yield request if isinstance(request, SlideRequest) else beam.pvalue.TaggedOutput(
        "rejected", request)
    self._progress.step()


class SavedModelHandler(inference.ModelHandler[SlideRequest, Dict[str, np.ndarray], Any]):
  """RunInference over a SavedModel signature that takes serialized bags."""

  def __init__(self, model_dir: str, signature: str = DEFAULT_SIGNATURE,
               max_batch_size: int = 8):
    super().__init__()
    self._path, _ = resolve_version_dir(model_dir)
    self._signature = signature
    self._max_batch_size = max_batch_size

  def load_model(self):
    import tensorflow as tf  # on the worker, once per model load
    return tf.saved_model.load(self._path).signatures[self._signature]

  def run_inference(self, batch: Sequence[SlideRequest], model,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[inference.PredictionResult]:
    import tensorflow as tf
    outputs = model(examples=tf.constant([request.example for request in batch]))
    outputs = {key: value.numpy() for key, value in outputs.items()}
    for row, request in enumerate(batch):
      yield inference.PredictionResult(
          request, {key: value[row:row + 1] for key, value in outputs.items()})

  def batch_elements_kwargs(self):
    return {"max_batch_size": self._max_batch_size}

  def get_num_bytes(self, batch: Sequence[SlideRequest]) -> int:
    return sum(len(request.example) for request in batch)


def _record(result: inference.PredictionResult) -> dict:
  request = result.example
  return prediction_record(request.image_id, request.bag, result.inference)


def score_slides(model_dir: str, paths: List[str], config: PipelineConfig, out_path: str,
                 csv_path: str = "", beam_args: Sequence[str] = ()) -> None:
  """Writes `out_path` (JSON lines, one per path) and, if asked, `csv_path`."""
  options = PipelineOptions(list(beam_args))
  with beam.Pipeline(options=options) as pipeline:
    requests = (pipeline | "Paths" >> beam.Create(paths)
                | "Reshuffle" >> beam.Reshuffle()  # spread slides over workers
                | "CutBags" >> beam.ParDo(CutRequestFn(config, len(paths))).with_outputs(
                    "rejected", main="requests"))
    predicted = (requests.requests
                 | "Predict" >> inference.RunInference(SavedModelHandler(model_dir))
                 | "ToRecords" >> beam.Map(_record))
    records = (predicted, requests.rejected) | "AllRecords" >> beam.Flatten()
    _ = (records | "ToJson" >> beam.Map(json.dumps)
         | "WriteRecords" >> beam.io.WriteToText(out_path, shard_name_template=""))
    if csv_path:
      _ = (predicted
           | "ToCsv" >> beam.Map(lambda r: f"{r['image_id']},{r['grade']}")
           | "WriteCsv" >> beam.io.WriteToText(csv_path, shard_name_template="",
                                               header=",".join(CSV_HEADER[config.task])))
