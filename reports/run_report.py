"""`histopipe report --run DIR`: one HTML page about a local run, with PNG figures.

The page shows the gate decision and TFMA's numbers (what the Evaluator
judged), and figures from the trained model's own predictions on the eval
split, which the Trainer made once through the exported signature
(trainer/eval_predictions.py): the confusion matrix, ROC curves (cancer vs benign for ISUP, the
positive class for binary tasks) overall and per data provider, kappa and AUC
per provider, and for a sample of eval slides the thumbnail with an attention
heatmap over the chosen tiles.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Dict, List, Optional

import numpy as np
from sklearn.metrics import cohen_kappa_score, roc_auc_score, roc_curve
from tfx.dsl.io import fileio

from histopipe.bags import bag_features
from histopipe.monitoring import drift
from histopipe.slides.base import SlideError
from histopipe.slides.slide_reader import open_slide
from histopipe.beam.slide_stages import read_outcomes
from histopipe.core import referral
from histopipe.core import storage
from histopipe.core.errors import UserError
from histopipe.core.layout import EVAL_SPLIT, SLIDE_REPORT_DIR, TRAINER_SERVING_SUBDIR, RunPaths
from histopipe.reports import figures, lineage, run_summary
from histopipe.serving.saved_model import read_contract
from histopipe.trainer import eval_predictions
from histopipe.trainer.eval_predictions import EvalPredictions

THUMBNAIL_MAX_SIDE = 768


def eval_split_predictions(model_uri: str, examples_uri: str) -> EvalPredictions:
  """The model's predictions on the eval split, as the Trainer made them once
  (trainer/eval_predictions.py); for a model trained before it did, made
  here from the eval split's bags, as the Trainer would."""
  path = eval_predictions.path_in_model(model_uri)
  if fileio.exists(path):
    return eval_predictions.load(path)
  files = sorted(fileio.glob(storage.join(examples_uri, f"Split-{EVAL_SPLIT}", "*")))
  if not files:
    raise UserError(f"no eval split under {examples_uri}")
  logging.warning("%s: the Trainer kept no eval predictions (a model trained before it "
                  "did): running the model over the eval split", model_uri)
  return eval_predictions.predict(os.path.join(model_uri, TRAINER_SERVING_SUBDIR), files)


def positive_scores(predictions: EvalPredictions):
  """(is positive, score) for the ROC: cancer (grade >= 1) scored by
  1 - P(grade 0) for ISUP; label 1 scored by P(1) for binary tasks."""
  probabilities = predictions.probabilities
  if probabilities.shape[1] == 1:
    return predictions.labels > 0, probabilities[:, 0]
  return predictions.labels > 0, 1.0 - probabilities[:, 0]


def _auc(positive: np.ndarray, score: np.ndarray) -> Optional[float]:
  return float(roc_auc_score(positive, score)) if 0 < positive.sum() < len(positive) else None


def slice_metrics(predictions: EvalPredictions, num_classes: int) -> Dict[str, Dict[str, float]]:
  """kappa (ISUP), AUC, accuracy and bag count: overall and per provider."""
  positive, score = positive_scores(predictions)
  slices = {"overall": np.ones(len(predictions.labels), bool)}
  for provider in sorted(set(predictions.providers)):
    slices[provider] = np.array([p == provider for p in predictions.providers])
  table = {}
  for name, rows in slices.items():
    labels, grades = predictions.labels[rows], predictions.grades[rows]
    values = {"bags": int(rows.sum()), "accuracy": float((labels == grades).mean())}
    if num_classes > 2:
      values["kappa"] = quadratic_weighted_kappa(labels, grades, num_classes)
    auc = _auc(positive[rows], score[rows])
    if auc is not None:
      values["auc"] = auc
    table[name] = values
  return table


def quadratic_weighted_kappa(labels: np.ndarray, grades: np.ndarray, num_classes: int) -> float:
  """scikit-learn's kappa; 0 where it is undefined (labels and grades all one
  class), the value TFMA's metric reports there, so the two can be compared."""
  with np.errstate(divide="ignore", invalid="ignore"):
    kappa = cohen_kappa_score(labels, grades, labels=list(range(num_classes)),
                              weights="quadratic")
  return 0.0 if np.isnan(kappa) else float(kappa)


def _heatmap_sample(predictions: EvalPredictions, count: int) -> List[int]:
  """Up to `count` eval bags spread over the labels, highest label first."""
  order = sorted(range(len(predictions.labels)),
                 key=lambda i: (-predictions.labels[i], predictions.image_ids[i]))
  chosen, seen = [], set()
  for i in order:  # one per label first, then the rest
    if predictions.labels[i] not in seen:
      chosen.append(i)
      seen.add(predictions.labels[i])
  chosen += [i for i in order if i not in chosen]
  return chosen[:count]


def write_heatmap(slide_path: str, bag: bag_features.SlideBag, attention, path: str,
                  title: str) -> None:
  with open_slide(slide_path) as slide:
    thumbnail, downsample = slide.thumbnail(max_side=THUMBNAIL_MAX_SIDE)
  figures.attention_heatmap_png(thumbnail, downsample, bag, attention, path, title)


def _table(rows: List[List[str]], header: List[str]) -> str:
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                 for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def referral_section(predictions: EvalPredictions, settings: Optional[dict], task: str,
                     out_dir: str) -> str:
  """The coverage curve on the eval split (core/referral.py), the model's
  threshold (chosen on the valid split) marked on it; HTML."""
  if not settings:
    return "<p>The model carries no referral threshold.</p>"
  name = "AUC" if task == "binary" else "kappa"
  points = [p for p in referral.coverage_curve(predictions.labels, predictions.grades,
                                               predictions.probabilities, task)
            if p.metric is not None]
  uncertainties = referral.uncertainty(predictions.probabilities, predictions.grades, task)
  accepted = ~referral.refer(uncertainties, settings["threshold"])
  scores = predictions.probabilities.reshape(len(predictions.labels), -1)[:, -1]
  metric = referral.metric_of(predictions.labels[accepted], predictions.grades[accepted],
                              scores[accepted], task)
  text = html.escape(referral.describe(settings))
  if not points or metric is None:
    return (f"<p>{text}</p><p>The eval split has too few slides of more than one class "
            "for a coverage curve.</p>")
  coverage = float(accepted.mean())
  figures.coverage_curve_png([p.coverage for p in points], [p.metric for p in points], name,
                             (coverage, metric), settings["target"],
                             storage.join(out_dir, "referral.png"),
                             f"Referral on the eval split ({len(predictions.labels)} slides)")
  return (f"<p>{text}.</p><p>On the eval split (unseen when the threshold was chosen): "
          f"<b>{coverage:.0%} accepted, {name} {metric:.3f}</b>; "
          f"{int((~accepted).sum())} of {len(accepted)} slides referred.</p>"
          '<figure><img src="referral.png" alt="coverage against the metric"></figure>')


COLOUR_PANELS = {bag_features.MEAN_RGB[0]: "mean R (stained pixels)",
                 bag_features.MEAN_RGB[1]: "mean G", bag_features.MEAN_RGB[2]: "mean B",
                 bag_features.OD_HAEMATOXYLIN: "haematoxylin OD",
                 bag_features.OD_EOSIN: "eosin OD", bag_features.FOCUS: "focus"}


def inputs_section(examples_uri: str, drift_report: dict, out_dir: str) -> str:
  """Each provider's distribution of the bag image statistics (every split)
  and DriftCheck's verdict; HTML."""
  try:
    frame = drift.frame_of_split_files([drift.split_files(examples_uri, split)
                                        for split in drift.split_names(examples_uri)])
  except ValueError as e:  # bags tiled before they carried image statistics
    return f"<p>{html.escape(str(e))}</p>"
  if frame.empty:
    return "<p>no bags</p>"
  by_provider = {provider or "(none)": {key: rows[key].to_numpy() for key in COLOUR_PANELS}
                 for provider, rows in frame.groupby(bag_features.DATA_PROVIDER)}
  figures.colour_distributions_png(by_provider, COLOUR_PANELS,
                                   storage.join(out_dir, "colours.png"),
                                   f"Bag image statistics by provider ({len(frame)} bags)")
  rows = []
  for slice_name, entry in drift_report.get("slices", {}).items():
    statistics = entry.get("statistics", {})
    worst = max(statistics.items(), key=lambda item: item[1]["jsd"]) if statistics else None
    rows.append([slice_name, str(entry["bags"]), str(entry.get("baseline_bags", "–")),
                 f"{worst[0]} {worst[1]['jsd']:.3f}" if worst else entry.get("skipped", "–"),
                 ", ".join(entry.get("drifted", [])) or "–"])
  table = (_table(rows, ["slice", "bags", "baseline bags", "largest divergence", "flagged"])
           if rows else "")
  verdict = html.escape(drift_report.get("summary", "input drift: no DriftCheck result"))
  return (f"<p><b>{verdict}</b></p>{table}"
          '<figure><img src="colours.png" alt="colour distributions by provider"></figure>')


def write_report(run_dir: str, out_dir: str = "", heatmaps: int = 6) -> str:
  """Writes `<out_dir>/index.html` and its PNGs (default `<run_dir>/report`); returns the path."""
  paths = RunPaths(os.path.abspath(run_dir))
  # The newest run that went all the way: its model, examples and evaluation belong together.
  summary = run_summary.summarize(paths, complete=True)
  newest = lineage.latest_run(paths.metadata_path)
  later = ("" if newest.run_id == summary.run_id else
           f"The newest run, {newest.run_id}, did not complete (failed: "
           f"{', '.join(newest.failed_steps) or 'unknown'}); this report is of run "
           f"{summary.run_id}, the newest that did.")
  if not summary.model_uri or not summary.examples_uri:
    raise UserError(f"{run_dir}: no trained model or examples in its ML Metadata")
  return write_page(summary, out_dir or paths.report_dir, os.path.abspath(run_dir), later,
                    heatmaps)


def write_page(summary: run_summary.RunSummary, out_dir: str, run_name: str, later: str = "",
               heatmaps: int = 6) -> str:
  """The report of one run's artifacts (`summary`'s Examples, model, DriftCheck
  and Evaluator results), without its ML Metadata: what write_report writes,
  and what bench/scale.py times on a Kubeflow run's artifacts. Reads the bag
  statistics tables, the Trainer's eval predictions and a few slides for
  the heatmaps; no bag."""
  fileio.makedirs(out_dir)
  model_dir = os.path.join(summary.model_uri, TRAINER_SERVING_SUBDIR)
  predictions = eval_split_predictions(summary.model_uri, summary.examples_uri)
  num_classes = 2 if predictions.probabilities.shape[1] == 1 else predictions.probabilities.shape[1]
  names = figures.class_names(num_classes)

  confusion = np.zeros((num_classes, num_classes), int)
  np.add.at(confusion, (predictions.labels, predictions.grades), 1)
  task = "ISUP grade" if num_classes > 2 else "label"
  figures.confusion_matrix_png(confusion, names, storage.join(out_dir, "confusion.png"),
                               f"{task}: eval split, {len(predictions.labels)} bags")
  positive, score = positive_scores(predictions)
  curves = {}
  for name in ["overall"] + sorted(set(predictions.providers)):
    rows = (np.ones(len(positive), bool) if name == "overall"
            else np.array([p == name for p in predictions.providers]))
    auc = _auc(positive[rows], score[rows])
    if auc is not None:
      fpr, tpr, _ = roc_curve(positive[rows], score[rows])
      curves[name] = (fpr, tpr, auc)
  roc_title = "cancer (grade ≥ 1) vs benign" if num_classes > 2 else "label 1 vs 0"
  if curves:
    figures.roc_curves_png(curves, storage.join(out_dir, "roc.png"), f"ROC: {roc_title}")

  contract = read_contract(model_dir)
  referral_html = referral_section(predictions, contract.referral if contract else None,
                                   "binary" if num_classes == 2 else "isup", out_dir)
  inputs_html = inputs_section(summary.examples_uri, summary.drift, out_dir)

  slide_paths = {o.image_id: o.path for o in read_outcomes(
      storage.join(summary.examples_uri, SLIDE_REPORT_DIR), fileio.open)}
  heatmap_files = []
  for i in _heatmap_sample(predictions, heatmaps):
    image_id = predictions.image_ids[i]
    path = slide_paths.get(image_id, "")
    if not path.lower().endswith((".tif", ".tiff")) or not storage.exists(path):
      continue  # moved since the run, or a PNG patch (IDC): no pyramid to draw on
    name = f"attention_{image_id}.png"
    try:
      write_heatmap(path, predictions.bags[i], predictions.attention[i],
                    storage.join(out_dir, name),
                    f"{image_id} ({predictions.providers[i]}): label {predictions.labels[i]}, "
                    f"predicted {predictions.grades[i]}")
    except SlideError:
      continue
    heatmap_files.append(name)

  metrics = slice_metrics(predictions, num_classes)
  columns = ["slice", "bags"] + (["kappa"] if num_classes > 2 else []) + ["auc", "accuracy"]
  rows = [[name] + [f"{values[c]:.3f}" if isinstance(values.get(c), float)
                    else str(values.get(c, "–")) for c in columns[1:]]
          for name, values in metrics.items()]
  tfma_rows = [[key, f"{value:.0f}" if key == "example_count" else f"{value:.3f}"]
               for key, value in sorted(summary.eval_metrics.items())]
  gate = ("blessed: yes" if summary.blessed else "blessed: no") if summary.blessed is not None \
      else "no Evaluator result"
  gate_lines = "".join(f"<li>{html.escape(f)}</li>" for f in summary.gate_failures)
  pushed = (f"pushed to {summary.pushed_to}" if summary.pushed_to
            else "not pushed (model not blessed)")
  images = "".join(f'<figure><img src="{n}" alt="{n}"></figure>' for n in heatmap_files)
  page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>histopipe run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;
text-align:right}}figure{{display:inline-block;margin:6px}}img{{max-width:520px}}</style></head>
<body><h1>histopipe run report</h1>
<p>run: {html.escape(run_name)} ({html.escape(summary.run_id)})<br>
model: {html.escape(model_dir)}</p>
{f"<p><b>{html.escape(later)}</b></p>" if later else ""}
<h2>Gate</h2><p><b>{gate}</b>; {html.escape(pushed)}</p><ul>{gate_lines}</ul>
{f'<p>Model card: <a href="file://{html.escape(summary.model_card)}">'
 f'{html.escape(summary.model_card)}</a></p>' if summary.model_card else ""}
<h3>TFMA (what the Evaluator judged, overall slice)</h3>{_table(tfma_rows, ["metric", "value"])}
<h2>Eval split, from the model's predictions</h2>
{_table(rows, columns)}
<figure><img src="confusion.png" alt="confusion matrix"></figure>
{'<figure><img src="roc.png" alt="ROC curves"></figure>' if curves else
 '<p>ROC: the eval split has one class only, so there is no curve (and the AUC TFMA '
 'reports, 0, is a convention, not a measurement).</p>'}
<h2>Referral of uncertain slides</h2>
{referral_html}
<h2>Watching the inputs</h2>
{inputs_html}
<h2>Attention on eval slides</h2>
<p>Each chosen tile coloured by its attention weight (scaled to the slide's largest).</p>
{images or '<p>no slide files found for the eval bags</p>'}
</body></html>
"""
  index = storage.join(out_dir, "index.html")
  with fileio.open(index, "w") as f:
    f.write(page)
  return index
