"""The ModelCard executor: gathers what the run's artifacts say about the model and writes the card
beside its artifact and the pushed version."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from histopipe.bags import bag_features
from histopipe.monitoring import drift
from histopipe.components.drift_check.executor import REPORT_FILE as DRIFT_REPORT_FILE
from histopipe.data import synthetic
from histopipe.core import storage
from histopipe.core.configs import PipelineConfig
from histopipe.core.layout import REJECTS_FILE, SLIDE_REPORT_DIR, TRAINER_SERVING_SUBDIR
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract
from histopipe.components.model_card.card import build_card, write_card

# What TFX's Evaluator records on its blessing (tfx.components.evaluator.constants).
CURRENT_MODEL_ID = "current_model_id"
BASELINE_MODEL_ID = "baseline_model_id"

def slides_per_split(examples: types.Artifact) -> Dict[str, Dict[str, int]]:
  """{split: {provider: bags}} from the bag statistics tables of the Examples."""
  counts: Dict[str, Dict[str, int]] = {}
  for split in artifact_utils.decode_split_names(examples.split_names):
    frame = drift.frame_of_split_files([drift.split_files(examples.uri, split)])
    per_provider = collections.Counter(frame[bag_features.DATA_PROVIDER])
    counts[split] = {provider: int(count) for provider, count in sorted(per_provider.items())}
  return counts


def rejected_slides(examples_uri: str) -> Dict[str, int]:
  """{reason: slides} from the ExampleGen's rejects.csv."""
  path = os.path.join(examples_uri, SLIDE_REPORT_DIR, REJECTS_FILE)
  if not fileio.exists(path):
    return {}
  with fileio.open(path) as f:
    rows = list(csv.DictReader(io.StringIO(f.read())))
  return dict(collections.Counter(row.get("reason", "") for row in rows))


def evaluation_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
  """{slice ("overall" or the provider): {metric: value}} from TFMA's result."""
  result = tfma.load_eval_result(evaluation_uri)
  metrics = {}
  for slice_key, values in result.slicing_metrics:
    name = "/".join(str(v.decode() if isinstance(v, bytes) else v)
                    for _, v in slice_key) or "overall"
    metrics[name] = {key: float(value["doubleValue"])
                     for key, value in values.get("", {}).get("", {}).items()
                     if "doubleValue" in value}
  return metrics


def compared_with_another_model(blessing: types.Artifact) -> bool:
  """Whether the Evaluator had a baseline other than the model it judged (the
  ids it records on its blessing, which DriftCheck passes on): a re-run whose
  baseline is the latest blessed model, this very one, compares it with itself."""
  properties = blessing.mlmd_artifact.custom_properties
  if BASELINE_MODEL_ID not in properties:
    return False
  return (blessing.get_int_custom_property(BASELINE_MODEL_ID)
          != blessing.get_int_custom_property(CURRENT_MODEL_ID))


def _contract(model_uri: str) -> Optional[ModelContract]:
  path = os.path.join(model_uri, TRAINER_SERVING_SUBDIR, "assets.extra", CONTRACT_FILE)
  if not fileio.exists(path):
    return None
  with fileio.open(path) as f:
    return ModelContract.from_json(f.read())


class ModelCardExecutor(base_executor.BaseExecutor):

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    config = PipelineConfig.from_json(exec_properties["config"])
    one = {key: artifact_utils.get_single_instance(value) for key, value in input_dict.items()}
    with fileio.open(os.path.join(one["drift_report"].uri, DRIFT_REPORT_FILE)) as f:
      drift_report = json.load(f)
    pushed_model = one["pushed_model"]
    pushed = {}
    if pushed_model.get_int_custom_property("pushed") == 1:
      pushed = {"version": pushed_model.get_string_custom_property("pushed_version"),
                "destination": pushed_model.get_string_custom_property("pushed_destination")}
    lineage = {f"{key} artifact id": artifact.id for key, artifact in sorted(one.items())}
    run_id = getattr(self._context, "pipeline_run_id", None) if self._context else None
    if run_id:
      lineage["pipeline run"] = run_id
    data_root = exec_properties.get("data_root", "")
    card = build_card(
        config, _contract(one["model"].uri), slides_per_split(one["examples"]),
        rejected_slides(one["examples"].uri), evaluation_metrics(one["evaluation"].uri),
        drift_report, one["blessing"].get_int_custom_property("blessed") == 1, pushed, lineage,
        synthetic_data=bool(data_root) and storage.exists(
            storage.join(data_root, synthetic.SYNTHETIC_MARKER)),
        other_baseline=compared_with_another_model(one["blessing"]))
    out = artifact_utils.get_single_instance(output_dict["model_card"])
    write_card(card, out.uri)
    if pushed.get("destination"):
      write_card(card, pushed["destination"])
