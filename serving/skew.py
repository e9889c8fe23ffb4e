"""Serving skew: the bags a model scored against the bags it was trained on.

`histopipe score` writes each slide's bag image statistics into its record
(slide_predictions.prediction_record); here they become TFDV statistics and
are compared, by the same drift comparator as the pipeline's DriftCheck
(monitoring/drift.py), with the training statistics the model carries. That
comparison needs `evaluation.min_drift_bags` bags; each record's own
`out_of_range` (monitoring/slide_skew.py, checked as it was scored) is
counted beside it, so a handful of slides is not left unchecked. The report
goes to `skew.json` beside the records.
"""

from __future__ import annotations

import json
from typing import List, Optional

import pandas as pd

from histopipe.bags import bag_features
from histopipe.monitoring import drift, slide_skew
from histopipe.core import storage
from histopipe.core.configs import EvaluationConfig

SKEW_FILE = "skew.json"
NO_TRAINING_STATISTICS = "the model carries no training statistics"


def skew_path(records_path: str) -> str:
  folder = storage.dirname(records_path)
  return storage.join(folder, SKEW_FILE) if folder else SKEW_FILE


def read_records(records_path: str) -> List[dict]:
  return [json.loads(line)
          for line in storage.read_bytes(records_path).decode("utf-8").splitlines()]


def frame_of_records(records: List[dict]) -> pd.DataFrame:
  """One row per scored slide (rejected slides have no bag)."""
  rows = [{**record["image_stats"], bag_features.DATA_PROVIDER: ""}
          for record in records if "image_stats" in record]
  return pd.DataFrame(rows, columns=list(bag_features.IMAGE_STATISTICS) +
                      [bag_features.DATA_PROVIDER])


def check_skew(model_dir: str, records_path: str, evaluation: EvaluationConfig,
               out_path: Optional[str] = None) -> dict:
  """The skew report of what was scored (written to `out_path`, default
  skew.json beside the records). `compared` is false when the model carries
  no training statistics or nothing was scored. `per_slide` counts the
  records' `out_of_range` and holds the ranges they were checked against;
  `per_slide_summary` is its line."""
  records = read_records(records_path)
  frame = frame_of_records(records)
  training = drift.model_training_statistics(model_dir)
  if frame.empty or training is None:
    report = drift.compare(drift.statistics_of_frame(frame), None,
                           evaluation.max_drift_jsd, evaluation.min_drift_bags)
    report["reason"] = ("nothing was scored" if frame.empty else
                        f"{NO_TRAINING_STATISTICS} (exported before they existed)")
  else:
    report = drift.compare(drift.statistics_of_frame(frame), training,
                           evaluation.max_drift_jsd, evaluation.min_drift_bags)
  report["model"] = model_dir
  report["summary"] = (f"serving skew: not checked ({report['reason']})" if "reason" in report
                       else drift.summary_line(report).replace("input drift", "serving skew"))
  report["per_slide"] = {**slide_skew.summarize(records),
                         "ranges": slide_skew.training_ranges(training)}
  report["per_slide_summary"] = slide_skew.summary_line(report["per_slide"],
                                                        NO_TRAINING_STATISTICS)
  storage.write_text(out_path or skew_path(records_path), json.dumps(report, indent=1))
  return report
