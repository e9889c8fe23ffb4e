"""`histopipe run`: the whole pipeline with the local runner, and its summary."""

from __future__ import annotations

import sys
import time
from histopipe.cli.arguments import (config_from_args, add_format_argument, add_slides_arguments,
                                     add_config_arguments)


def _run(args) -> int:
  from histopipe.pipeline.local_runner import PipelineFailed, run_local
  from histopipe.reports import run_summary
  config = config_from_args(args, args.format)
  start = time.time()
  try:
    paths = run_local(config, args.data, args.out, enable_cache=not args.no_cache)
  except PipelineFailed as e:
    print(f"histopipe run: {e}", file=sys.stderr)
    return 1
  summary = run_summary.summarize(paths)
  summary.seconds = time.time() - start
  print(run_summary.format_summary(summary))
  return 0


def add_commands(commands) -> None:
  """run"""
  run = commands.add_parser(
      "run", help="run the whole pipeline locally (LocalDagRunner)",
      description="Run SlideExampleGen through Pusher on DATA with "
      "LocalDagRunner. OUT receives pipeline_root/, metadata.sqlite (ML "
      "Metadata) and serving_model/<version>/ (the pushed SavedModel).")
  run.add_argument("--data", required=True,
                   help="data folder: train.csv and train_images/*.tiff (PANDA), or a "
                   "PCam or IDC folder")
  add_slides_arguments(run)
  add_format_argument(run)
  run.add_argument("--out", required=True, help="output folder")
  run.add_argument("--no-cache", action="store_true",
                   help="run every step again, even where the inputs, settings and code "
                   "are those of an earlier run on this --out (default: reuse its outputs)")
  add_config_arguments(run)
  run.set_defaults(handler=_run)
