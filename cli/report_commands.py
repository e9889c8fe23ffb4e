"""`histopipe report` (the HTML report of a run) and `explain` (one slide's attention heatmap)."""

from __future__ import annotations

import json
import os
import sys
from histopipe.cli.arguments import (model_settings, add_model_settings_arguments)


def _report(args) -> int:
  from histopipe.core.layout import RunPaths, require_metadata
  from histopipe.core.library_logs import logging_to
  paths = RunPaths(os.path.abspath(args.run))
  require_metadata(paths.metadata_path)  # before a log file is put there
  with logging_to(paths.report_log):
    from histopipe.reports.run_report import write_report  # imports TensorFlow: logs to the file
    report = write_report(args.run, args.out or '', heatmaps=args.heatmaps)
  print(f"report: {report}")
  return 0


def _explain(args) -> int:
  from histopipe.data.datasets import image_id_from_path
  from histopipe.reports.explain import explain_slide, run_model_dir
  out = args.out or f"{image_id_from_path(args.slide)}_attention.png"
  from histopipe.serving.saved_model import read_contract
  from histopipe.serving.slide_predictions import find_slides
  find_slides([args.slide])  # a missing slide is named before the model is looked at
  model_dir = args.model_dir or run_model_dir(args.run)
  record = explain_slide(args.slide, model_dir,
                         model_settings(args, read_contract(model_dir)), out)
  print(json.dumps(record))
  print(f"heatmap: {out}", file=sys.stderr)
  return 0


def add_commands(commands) -> None:
  """report, explain"""
  report = commands.add_parser(
      "report", help="an HTML report of a local run: gate, metrics, figures, attention",
      description="Write RUN/report/index.html (or --out DIR) with PNG figures: the gate "
      "decision and TFMA's numbers, the eval split's confusion matrix and ROC curves "
      "(cancer vs benign for ISUP) overall and per data provider, kappa/AUC per provider, "
      "and attention heatmaps over a sample of eval slides.")
  report.add_argument("--run", required=True, help="the --out folder of `histopipe run`")
  report.add_argument("--out", help="report folder (default RUN/report)")
  report.add_argument("--heatmaps", type=int, default=6,
                      help="eval slides to draw attention for (default 6)")
  report.set_defaults(handler=_report)

  explain = commands.add_parser(
      "explain", help="attention heatmap of one slide under a SavedModel",
      description="Tile SLIDE as SlideExampleGen does, with the model's own settings, "
      "score it with the SavedModel in this process, write the thumbnail with "
      "each chosen tile coloured by its attention weight, and print the prediction record.")
  explain.add_argument("slide", help="a slide file (pyramidal TIFF)")
  explain_model = explain.add_mutually_exclusive_group(required=True)
  explain_model.add_argument("--model-dir",
                             help="a SavedModel, or the Pusher's serving base (latest version)")
  explain_model.add_argument("--run", help="the --out folder of `histopipe run`: the model "
                             "its latest complete run trained (from ML Metadata)")
  explain.add_argument("--out", help="PNG to write (default <image_id>_attention.png)")
  add_model_settings_arguments(explain)
  explain.set_defaults(handler=_explain)
