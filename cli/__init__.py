"""The `histopipe` command: parses the arguments and hands each command to the
package it belongs to.

Each handler loads the settings, calls one function of that package and
prints its result. A UserError (a missing path, a bad value or label file, a
server that does not answer) is one line on stderr and exit status 2, as are
argparse's own errors; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

# Transform and TFMA need Keras 2; must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up logs (on a CPU wheel: "Unable to register cuDNN
# factory ...", at error level) are noise in a command's output; Python errors
# still surface. Set TF_CPP_MIN_LOG_LEVEL to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

# Google's client libraries (Beam's GCP extras, TFX's Vertex client) warn on
# every start about versions the pinned stack cannot move: Python 3.10 (TFX
# 1.16) and google-cloud-storage < 3.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")

import argparse  # noqa: E402
import sys  # noqa: E402
from typing import List, Optional  # noqa: E402

from histopipe.cli import (data_commands, kubeflow_commands, report_commands,  # noqa: E402
                           run_commands, serving_commands)
from histopipe.cli.arguments import Parser  # noqa: E402
from histopipe.core.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(
      prog="histopipe",
      description="Whole-slide images to a served MIL model: a TFX pipeline "
      "(SlideExampleGen, Transform, Trainer, Evaluator, Pusher).")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for group in (data_commands, run_commands, serving_commands, report_commands,
                kubeflow_commands):
    group.add_commands(commands)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.handler(args)
  except UserError as e:
    command = " ".join(filter(None, [args.command, getattr(args, "kubeflow_command", None)]))
    print(f"histopipe {command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
