"""`histopipe explain SLIDE --model-dir DIR`: the attention heatmap of one slide.

The slide is tiled as SlideExampleGen tiles it, scored by the SavedModel's
`serving_default` in this process, and drawn: its thumbnail with each chosen
tile coloured by the attention the model gave it.
"""

from __future__ import annotations

import numpy as np

from histopipe.components import bag_features
from histopipe.components.datasets import image_id_from_path
from histopipe.components.tiling import cut_bag
from histopipe.core.configs import PipelineConfig
from histopipe.reports.run_report import write_heatmap
from histopipe.serving.dev_server import DEFAULT_SIGNATURE, LoadedModel
from histopipe.serving.slide_predictions import prediction_record


def explain_slide(slide_path: str, model_dir: str, config: PipelineConfig, out_png: str) -> dict:
  """Writes the heatmap PNG; returns the slide's prediction record (as `predict` prints it)."""
  image_id = image_id_from_path(slide_path)
  bag = cut_bag(slide_path, "slide", config.tiling)
  model = LoadedModel("explain", model_dir)  # a SavedModel or a serving base's latest
  outputs = model.run(DEFAULT_SIGNATURE, {"examples": np.array(
      [bag_features.serialize_request(bag, image_id)], dtype=object)})
  record = prediction_record(image_id, bag, outputs)
  probabilities = np.round(record["probabilities"], 2).tolist()
  write_heatmap(slide_path, bag, outputs["attention"][0], out_png,
                f"{image_id}: predicted {record['grade']} (probabilities {probabilities})")
  return record
