"""The DriftCheck executor: compares this run's bag statistics with the baseline's training
statistics and passes the blessing on or withholds it."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import path_utils

from histopipe.monitoring import drift
from histopipe.components.served_model.executor import served_nothing

EXAMPLES_KEY = "examples"
BASELINE_MODEL_KEY = "baseline_model"
MODEL_BLESSING_KEY = "model_blessing"
REPORT_KEY = "drift_report"
BLESSING_KEY = "blessing"
MAX_JSD_KEY = "max_jsd"
MIN_BAGS_KEY = "min_bags"
BLOCK_KEY = "block_on_drift"
REPORT_FILE = "drift.json"
STATISTICS_FILE = "statistics.pb"
# Custom properties: on the report "drift" is drifted / none / not checked;
# on the blessing "drifted" 0/1 and "blocked_by_drift" 0/1.
DRIFT_STATUS = "drift"
BLESSED = "blessed"


def _baseline_statistics(models: List[types.Artifact]):
  """(training statistics, model uri) of the baseline, or (None, reason)."""
  for model in models:
    if served_nothing(model):
      continue
    statistics = drift.model_training_statistics(path_utils.serving_model_path(model.uri))
    if statistics is None:
      return None, f"the baseline model ({model.uri}) carries no training statistics"
    return statistics, model.uri
  return None, "no baseline model (the first blessed model of this pipeline)"


def pass_blessing(source: types.Artifact, target: types.Artifact, blessed: bool) -> None:
  """`target` as the Evaluator's `source` blessing (its custom properties: the
  model, the baseline), with `blessed` as given, and TFX's marker file."""
  for key, value in source.mlmd_artifact.custom_properties.items():
    target.mlmd_artifact.custom_properties[key].CopyFrom(value)
  target.set_int_custom_property(BLESSED, int(blessed))
  fileio.makedirs(target.uri)
  marker = "BLESSED" if blessed else "NOT_BLESSED"  # tfx.components.evaluator.constants
  with fileio.open(os.path.join(target.uri, marker), "w") as f:
    f.write("")


class DriftCheckExecutor(base_executor.BaseExecutor):

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
    # The bag statistics tables the SlideExampleGen wrote, not the bags.
    current = drift.statistics_of_frame(drift.frame_of_split_files(
        [drift.split_files(examples.uri, split)
         for split in artifact_utils.decode_split_names(examples.split_names)]))
    baseline, baseline_from = _baseline_statistics(input_dict.get(BASELINE_MODEL_KEY, []))
    report = drift.compare(current, baseline, float(exec_properties[MAX_JSD_KEY]),
                           int(exec_properties[MIN_BAGS_KEY]))
    report["baseline"] = baseline_from
    block = bool(exec_properties[BLOCK_KEY])
    report["block_on_drift"] = block
    report["summary"] = drift.summary_line(report)

    out = artifact_utils.get_single_instance(output_dict[REPORT_KEY])
    fileio.makedirs(out.uri)
    with fileio.open(os.path.join(out.uri, REPORT_FILE), "w") as f:
      json.dump(report, f, indent=1)
    drift.write_statistics(current, os.path.join(out.uri, STATISTICS_FILE))
    out.set_string_custom_property(
        DRIFT_STATUS, ("drifted" if report["drifted"] else "none") if report["compared"]
        else "not checked")

    evaluator_blessing = artifact_utils.get_single_instance(input_dict[MODEL_BLESSING_KEY])
    evaluator_blessed = evaluator_blessing.get_int_custom_property(BLESSED) == 1
    blocked = evaluator_blessed and block and report["drifted"]
    blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
    pass_blessing(evaluator_blessing, blessing, evaluator_blessed and not blocked)
    blessing.set_int_custom_property("drifted", int(report["drifted"]))
    blessing.set_int_custom_property("blocked_by_drift", int(blocked))
