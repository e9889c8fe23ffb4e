"""`histopipe explain SLIDE --model-dir DIR`: the attention heatmap of one slide.

The slide is opened once: tiled as SlideExampleGen tiles it (which also gives
the thumbnail the tissue mask was found on), scored by the SavedModel's
`serving_default` in this process, and drawn on that thumbnail, each chosen
tile coloured by the attention the model gave it.
"""

from __future__ import annotations

import os

import numpy as np

from histopipe.bags import bag_features
from histopipe.slides import dicom_reader
from histopipe.data.datasets import image_id_from_path
from histopipe.slides.base import SlideError
from histopipe.slides.tiling import cut_bag
from histopipe.core import signatures
from histopipe.core.configs import PATCH_FORMATS, PipelineConfig
from histopipe.core.errors import UserError
from histopipe.core import storage
from histopipe.core.layout import TRAINER_SERVING_SUBDIR, RunPaths
from histopipe.reports import figures, lineage
from histopipe.serving.saved_model import LoadedModel, read_contract
from histopipe.serving.slide_predictions import prediction_record


def run_model_dir(run_dir: str) -> str:
  """The model the latest complete run of `histopipe run --out RUN_DIR`
  trained (its Trainer's output in ML Metadata, blessed or not)."""
  run = lineage.latest_run(RunPaths(storage.absolute(run_dir)).metadata_path, complete=True)
  model = run.output("Trainer", "model")
  if model is None:
    raise UserError(f"{run_dir}: run {run.run_id} has no Trainer model")
  return os.path.join(model.uri, TRAINER_SERVING_SUBDIR)


def explain_slide(slide_path: str, model_dir: str, config: PipelineConfig, out_png: str) -> dict:
  """Writes the heatmap PNG; returns the slide's prediction record (as `predict` prints it)."""
  if not (storage.isfile(slide_path) or dicom_reader.is_dicom_folder(slide_path)):
    raise UserError(f"{slide_path}: no such slide file (or folder of DICOM instances)")
  model = LoadedModel(model_dir)  # a SavedModel or a serving base's latest version
  image_id = image_id_from_path(slide_path)
  kind = "patch" if config.data.format in PATCH_FORMATS else "slide"
  try:
    tiled = cut_bag(slide_path, kind, config.tiling)
  except SlideError as e:
    raise UserError(f"{slide_path}: cannot be tiled: {e.reason}") from None
  outputs = model.run(signatures.SERVING_DEFAULT, {signatures.EXAMPLES: np.array(
      [bag_features.serialize_request(tiled.bag, image_id)], dtype=object)})
  contract = read_contract(model_dir)
  record = prediction_record(image_id, tiled.bag, outputs,
                             contract.referral if contract else None)
  probabilities = np.round(record["probabilities"], 2).tolist()
  figures.attention_heatmap_png(
      tiled.thumbnail, tiled.thumbnail_downsample, tiled.bag,
      outputs[signatures.ATTENTION][0], out_png,
      f"{image_id}: predicted {record['grade']} (probabilities {probabilities})")
  return record
