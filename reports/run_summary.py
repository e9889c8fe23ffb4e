"""What a local run produced, read back from ML Metadata and the artifacts."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from tfx.dsl.io import fileio

from histopipe.monitoring import drift
from histopipe.components.drift_check import component as drift_check_component
from histopipe.components.drift_check import executor as drift_check
from histopipe.components.model_card import card as model_card
from histopipe.components.model_card import component as model_card_component
from histopipe.core import referral
from histopipe.core.layout import REJECTS_FILE, SLIDE_REPORT_DIR, TRAINER_SERVING_SUBDIR, RunPaths
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract
from histopipe.reports import lineage
from histopipe.trainer.metrics import AUC, CANCER_AUC, KAPPA

TUNER_RESULTS_FILE = "tuner_results.json"  # what TFX's Tuner executor writes


@dataclasses.dataclass
class RunSummary:
  slides_total: int = 0
  slides_written: int = 0
  slides_rejected: int = 0
  tiles_written: int = 0
  # Every-tile bags (tiling.tiles_per_slide 0): tissue tiles left out by max_tiles.
  slides_over_cap: int = 0
  tiles_over_cap: int = 0
  rejects_file: str = ""
  eval_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  eval_metrics_by_provider: Dict[str, Dict[str, float]] = dataclasses.field(
      default_factory=dict)
  blessed: Optional[bool] = None
  gate_failures: List[str] = dataclasses.field(default_factory=list)
  pushed_to: str = ""
  # DriftCheck's report (monitoring/drift.py) and whether it held the push back.
  drift: Dict[str, Any] = dataclasses.field(default_factory=dict)
  blocked_by_drift: bool = False
  referral: Optional[Dict[str, Any]] = None  # the trained model's contract's
  model_card: str = ""  # model_card.html: beside the pushed version, else in the artifact
  # The Tuner's completed trials, best first: {"score", <hyperparameter>: value}.
  tuner_trials: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  # This run's artifacts, for reports: the Examples (with slide_report/) and
  # the Trainer's model (Format-Serving/ inside).
  examples_uri: str = ""
  model_uri: str = ""
  pipeline_root: str = ""
  metadata_path: str = ""
  run_id: str = ""
  complete: bool = False
  cached_steps: List[str] = dataclasses.field(default_factory=list)  # taken from the cache
  failed_steps: List[str] = dataclasses.field(default_factory=list)
  seconds: float = 0.0


def _custom(artifact, key: str):
  value = artifact.custom_properties.get(key)
  if value is None:
    return None
  return value.int_value if value.HasField("int_value") else value.string_value


def _metric_values(metrics: Dict) -> Dict[str, float]:
  values = {}
  for name, value in metrics.get("", {}).get("", {}).items():
    if "doubleValue" in value:
      values[name] = float(value["doubleValue"])
  return values


def _describe_failure(failure) -> str:
  name = failure.metric_key.name
  value = failure.metric_value.double_value.value
  threshold = failure.metric_threshold
  if threshold.HasField("change_threshold"):
    allowed = threshold.change_threshold.absolute.value
    return (f"{name} changed by {value:+.3f} against the last blessed model "
            f"(allowed {allowed:+.3f})")
  floor = threshold.value_threshold.lower_bound.value
  return f"{name} {value:.3f} is below the threshold {floor:.3f}"


def summarize(paths: RunPaths, complete: bool = False) -> RunSummary:
  """The newest run of `paths` (with `complete`, the newest that went all the
  way), from that run's own executions in ML Metadata."""
  run = lineage.latest_run(paths.metadata_path, complete=complete)
  summary = RunSummary(pipeline_root=paths.pipeline_root, metadata_path=paths.metadata_path,
                       run_id=run.run_id, complete=run.complete,
                       cached_steps=run.cached_steps, failed_steps=run.failed_steps)
  examples = run.output("SlideExampleGen", "examples")
  if examples is not None:
    for key in ("slides_total", "slides_written", "slides_rejected", "tiles_written",
                "slides_over_cap", "tiles_over_cap"):
      setattr(summary, key, _custom(examples, key) or 0)
    summary.rejects_file = os.path.join(examples.uri, SLIDE_REPORT_DIR, REJECTS_FILE)
    summary.examples_uri = examples.uri
  model = run.output("Trainer", "model")
  if model is not None:
    summary.model_uri = model.uri
    contract_path = os.path.join(model.uri, TRAINER_SERVING_SUBDIR, "assets.extra",
                                 CONTRACT_FILE)
    if fileio.exists(contract_path):
      with fileio.open(contract_path) as f:
        summary.referral = ModelContract.from_json(f.read()).referral

  tuner_results = run.output("Tuner", "tuner_results")
  if tuner_results is not None:
    with fileio.open(os.path.join(tuner_results.uri, TUNER_RESULTS_FILE)) as f:
      summary.tuner_trials = json.load(f)

  evaluation = run.output("Evaluator", "evaluation")
  if evaluation is not None and fileio.isdir(evaluation.uri):
    result = tfma.load_eval_result(evaluation.uri)
    for slice_key, metrics in result.slicing_metrics:
      values = _metric_values(metrics)
      if not slice_key:
        summary.eval_metrics = values
      else:
        name = "/".join(str(v.decode() if isinstance(v, bytes) else v)
                        for _, v in slice_key)
        summary.eval_metrics_by_provider[name] = values
    validation = tfma.load_validation_result(evaluation.uri)
    for per_slice in validation.metric_validations_per_slice:
      summary.gate_failures.extend(_describe_failure(f) for f in per_slice.failures)

  blessing = run.output("Evaluator", "blessing")
  if blessing is not None:
    summary.blessed = bool(_custom(blessing, "blessed"))
  drift_report = run.output(drift_check_component.COMPONENT_ID, drift_check.REPORT_KEY)
  if drift_report is not None:
    with fileio.open(os.path.join(drift_report.uri, drift_check.REPORT_FILE)) as f:
      summary.drift = json.load(f)
  final_blessing = run.output(drift_check_component.COMPONENT_ID, drift_check.BLESSING_KEY)
  if final_blessing is not None:
    summary.blocked_by_drift = bool(_custom(final_blessing, "blocked_by_drift"))
  pushed = run.output("Pusher", "pushed_model")
  if pushed is not None and _custom(pushed, "pushed"):
    summary.pushed_to = _custom(pushed, "pushed_destination") or ""
  card = run.output(model_card_component.COMPONENT_ID, "model_card")
  if card is not None:
    summary.model_card = os.path.join(summary.pushed_to or card.uri, model_card.CARD_HTML)
  return summary


GATE_METRIC_NAMES = {KAPPA: "quadratic weighted kappa", AUC: "ROC AUC"}


def format_summary(summary: RunSummary) -> str:
  metrics = summary.eval_metrics
  lines = [
      "== histopipe run ==",
      f"slides: {summary.slides_written} tiled, {summary.slides_rejected} rejected "
      f"of {summary.slides_total} ({summary.tiles_written} tiles)",
  ]
  if summary.slides_over_cap:
    lines.append(f"tiling.max_tiles left out {summary.tiles_over_cap} tissue tiles of "
                 f"{summary.slides_over_cap} slides (slides.csv: tiles_over_cap)")
  if summary.slides_rejected:
    lines.append(f"rejects (image_id, path, reason): {summary.rejects_file}")
  for key, name in GATE_METRIC_NAMES.items():
    if key in metrics:
      lines.append(f"eval {name}: {metrics[key]:.3f} "
                   f"(accuracy {metrics.get('accuracy', float('nan')):.3f}, "
                   f"{int(metrics.get('example_count', 0))} eval bags)")
      if CANCER_AUC in metrics:
        lines.append(f"eval cancer vs benign ROC AUC: {metrics[CANCER_AUC]:.3f}")
      for provider, values in sorted(summary.eval_metrics_by_provider.items()):
        if key in values:
          lines.append(f"  {provider}: {key} {values[key]:.3f}")
  if summary.tuner_trials:
    best = summary.tuner_trials[0]
    values = " ".join(f"{k}={v}" for k, v in best.items() if k not in ("trial_id", "score"))
    lines.append(f"tuner: best of {len(summary.tuner_trials)} trials: {values} "
                 f"(validation {best['score']:.3f}); the Trainer used these")
  if summary.blessed is not None:
    lines.append("blessed: by the gate, but held back for input drift" if
                 summary.blocked_by_drift else f"blessed: {'yes' if summary.blessed else 'no'}")
  for failure in summary.gate_failures:
    lines.append(f"  gate: {failure}")
  if summary.model_uri:
    lines.append(referral.describe(summary.referral))
  if summary.drift:
    lines.append(summary.drift.get("summary") or drift.summary_line(summary.drift))
  if summary.pushed_to:
    lines.append(f"pushed to: {summary.pushed_to}")
  elif summary.blocked_by_drift:
    lines.append("pushed: no (input drift, and evaluation.block_on_drift is set)")
  else:
    lines.append("pushed: no (model not blessed)")
  if summary.model_card:
    lines.append(f"model card: {summary.model_card}")
  if summary.cached_steps:
    lines.append(f"from the cache ({len(summary.cached_steps)} steps, inputs, settings and code "
                 f"unchanged): {', '.join(summary.cached_steps)}")
  lines.append(f"artifacts: {summary.pipeline_root}")
  lines.append(f"ML Metadata: {summary.metadata_path} (run {summary.run_id})")
  if summary.seconds:
    lines.append(f"pipeline time: {summary.seconds / 60:.1f} min")
  return "\n".join(lines)
