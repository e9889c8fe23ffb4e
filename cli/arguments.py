"""What several commands share: the parser that keeps errors to one line, the
settings a command runs with, and the arguments that say them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Optional

from histopipe.core.errors import UserError


class Parser(argparse.ArgumentParser):
  """argparse, with its errors on one line like every other user error."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def config_from_args(args, data_format: Optional[str] = None):
  """The settings of --preset/--config, with --format, --slides and --labels
  applied when given."""
  from histopipe.core.configs import load_config
  config = load_config(args.config, preset=args.preset)
  data = config.data
  if data_format:
    data = dataclasses.replace(data, format=data_format)
  if getattr(args, "slides", None):
    data = dataclasses.replace(data, slide_pattern=args.slides)
  if getattr(args, "labels", None):
    data = dataclasses.replace(data, labels_file=labels_file_from_flag(
        args.labels, getattr(args, "data", "") or ""))
  return dataclasses.replace(config, data=data)


def labels_file_from_flag(labels: str, data_dir: str) -> str:
  """--labels as a shell user means it: a relative path naming a file in the current
  folder is that file (made absolute, so nothing joins it to the data folder later);
  else it stays relative to --data (`datasets.labels_path`), and a file found in
  neither place is named with both."""
  from histopipe.core import storage
  if os.path.isfile(labels):
    return os.path.abspath(labels)
  if storage.is_url(labels) or os.path.isabs(labels) or not data_dir:
    return labels  # a missing absolute path or URL is the label reader's to report
  in_data = storage.join(data_dir, labels)
  # A data folder that is not there is reported as such when the data is planned.
  if storage.isdir(data_dir) and not storage.exists(in_data):
    raise UserError(f"--labels {labels}: no such file in the current folder "
                    f"({os.getcwd()}) nor in --data ({in_data})")
  return labels


def model_settings(args, contract):
  """The model's own settings; --preset/--config/--format only where they agree."""
  from histopipe.core.model_contract import flag_settings, settings_for
  config, stated = flag_settings(args.config, args.preset, args.format)
  return settings_for(contract, config, stated)


def add_format_argument(parser) -> None:
  parser.add_argument(
      "--format", default="auto", choices=["auto", "panda", "pcam", "idc"],
      help="dataset layout: panda (train.csv + train_images/*.tiff; ISUP grade, "
      "kappa), pcam (train_labels.csv + train/*.tif) or idc (<patient>/<0|1>/*.png), "
      "both binary (AUC); default: detected from the folder")


def add_slides_arguments(parser) -> None:
  parser.add_argument("--slides", metavar="GLOB",
                      help="the slide files, relative to --data or absolute, e.g. "
                      "'scans/*.svs'; any type the readers take (.svs, .ndpi, .mrxs, .scn, "
                      ".bif, .tif/.tiff, .qptiff, .dcm). Default: train_images/*, else the "
                      "files in --data itself")
  parser.add_argument("--labels", help="label CSV: a path (relative to the current folder "
                      "or absolute), a URL, or a file name relative to --data, tried when no "
                      "such file is in the current folder (default: the format's, train.csv "
                      "or train_labels.csv in --data); its columns tell the format "
                      "(image_id,data_provider,isup_grade,gleason_score: panda; id,label: "
                      "pcam)")


def add_config_arguments(parser, default_preset: str = "demo") -> None:
  """--preset and --config: the settings, the same ones a model was trained with."""
  parser.add_argument("--preset", default=default_preset, choices=["demo", "full"],
                      help=f"configuration preset (default {default_preset})")
  parser.add_argument("--config", help="JSON file overriding fields of the preset")


def add_model_settings_arguments(parser) -> None:
  """For commands that query a model: its own settings by default."""
  parser.add_argument("--preset", choices=["demo", "full"],
                      help="not needed: the model's own settings are used; given, it must "
                      "agree with them (for models exported without a contract: default demo)")
  parser.add_argument("--config", help="JSON file of settings; as --preset, must agree with "
                      "the model")
  parser.add_argument("--format", choices=["panda", "pcam", "idc"],
                      help="slides (panda) or patches (pcam, idc); default: the model's")
