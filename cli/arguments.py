"""What several commands share: the parser that keeps errors to one line, the
settings a command runs with, and the arguments that say them."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional


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
    data = dataclasses.replace(data, labels_file=args.labels)
  return dataclasses.replace(config, data=data)


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
                      ".bif, .tif/.tiff, .dcm). Default: train_images/*, else the files in "
                      "--data itself")
  parser.add_argument("--labels", help="label CSV, absolute or relative to --data "
                      "(default: the format's, train.csv or train_labels.csv); its columns "
                      "tell the format (image_id,data_provider,isup_grade,gleason_score: panda)")


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
