"""The `histopipe` command: synthesize slides, run the pipeline."""

from __future__ import annotations

import os

# Transform and TFMA need Keras 2; must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import List, Optional  # noqa: E402


def _progress_printer(label: str, every_seconds: float = 1.0):
  """A counter with rate, redrawn in place at most once per `every_seconds`."""
  start = time.time()
  last_print = [0.0]

  def report(done: int, total: int) -> None:
    now = time.time()
    if done < total and now - last_print[0] < every_seconds:
      return
    last_print[0] = now
    end = "\n" if done == total else "\r"
    rate = done / max(now - start, 1e-9)
    print(f"{label}: {done}/{total} ({rate:.1f}/s)", end=end, flush=True)

  return report


def _synth(args) -> int:
  from components import synthetic
  if args.format == "pcam":
    patches = synthetic.write_patch_dataset(
        args.out, args.slides, seed=args.seed,
        progress=_progress_printer("synthesizing patches"))
    positives = sum(p.label for p in patches)
    print(f"wrote {len(patches)} patches ({positives} positive) to "
          f"{os.path.join(args.out, 'train')} and labels to "
          f"{os.path.join(args.out, 'train_labels.csv')}")
    return 0
  slides = synthetic.write_dataset(
      args.out, args.slides, seed=args.seed,
      level0_size=(args.width, args.height),
      progress=_progress_printer("synthesizing slides"))
  grades = sorted({s.isup_grade for s in slides})
  print(f"wrote {len(slides)} slides to {os.path.join(args.out, 'train_images')} "
        f"and labels to {os.path.join(args.out, 'train.csv')} (grades {grades})")
  return 0


def _run(args) -> int:
  from pipeline import run_summary
  from pipeline.configs import load_config
  from pipeline.local_runner import run_local
  config = _with_format(load_config(args.config, preset=args.preset), args.format)
  start = time.time()
  paths = run_local(config, args.data, args.out)
  summary = run_summary.summarize(paths)
  summary.seconds = time.time() - start
  print(run_summary.format_summary(summary))
  return 0


def _with_format(config, data_format: str):
  return dataclasses.replace(config, data=dataclasses.replace(config.data, format=data_format))


def _add_format_argument(parser) -> None:
  parser.add_argument(
      "--format", default="auto", choices=["auto", "panda", "pcam", "idc"],
      help="dataset layout: panda (train.csv + train_images/*.tiff; ISUP grade, "
      "kappa), pcam (train_labels.csv + train/*.tif) or idc (<patient>/<0|1>/*.png), "
      "both binary (AUC); default: detected from the folder")


def _tile(args) -> int:
  from components.tile_job import run_tile_job
  from pipeline.configs import load_config
  config = _with_format(load_config(args.config, preset=args.preset), args.format)
  summary = run_tile_job(args.data, args.out, config, labels_file=args.labels,
                         gzip=args.gzip)
  print(f"{summary['slides_written']} of {summary['slides_total']} slides tiled "
        f"({summary['tiles_written']} tiles), {summary['slides_rejected']} rejected, "
        f"in {summary['seconds']:.1f} s")
  bags = "bags-*.tfrecord.gz" if args.gzip else "bags-*.tfrecord"
  print(f"bags: {os.path.join(args.out, bags)}; rejects: "
        f"{os.path.join(args.out, 'rejects.csv')}; previews: {os.path.join(args.out, 'previews')}/")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="histopipe",
      description="Whole-slide images to a served MIL model: a TFX pipeline "
      "(SlideExampleGen, Transform, Trainer, Evaluator, Pusher).")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  synth = commands.add_parser(
      "synth", help="write a synthetic PANDA-style (or PatchCamelyon-style) dataset",
      description="Write PANDA-format slides (JPEG-compressed tiled pyramidal "
      "TIFF, levels at downsample 1/4/16) under OUT/train_images/ and labels "
      "in OUT/train.csv; morphology depends on the ISUP grade. With --format "
      "pcam: 96x96 patches OUT/train/<id>.tif and OUT/train_labels.csv (id,label), "
      "positives showing tumour morphology.")
  synth.add_argument("--out", required=True, help="output folder")
  synth.add_argument("--slides", type=int, required=True,
                     help="number of slides (or patches with --format pcam)")
  synth.add_argument("--format", default="panda", choices=["panda", "pcam"],
                     help="dataset layout to write (default panda)")
  synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  synth.add_argument("--width", type=int, default=2048,
                     help="level-0 width in pixels (default 2048)")
  synth.add_argument("--height", type=int, default=1536,
                     help="level-0 height in pixels (default 1536)")
  synth.set_defaults(handler=_synth)

  tile = commands.add_parser(
      "tile", help="tile slides into bags with the SlideExampleGen's Beam code, outside TFX",
      description="Run the same Beam tiling as SlideExampleGen and write "
      "OUT/bags-*.tfrecord (.tfrecord.gz with --gzip), OUT/rejects.csv (image_id,path,reason), "
      "OUT/slides.csv, OUT/summary.json and OUT/previews/<image_id>.png (the "
      "thumbnail with the chosen tiles outlined and numbered).")
  tile.add_argument("--data", required=True, help="data folder with the slides")
  tile.add_argument("--labels", help="label CSV, absolute or relative to --data "
                    "(default: the format's, train.csv or train_labels.csv)")
  _add_format_argument(tile)
  tile.add_argument("--out", required=True, help="output folder")
  tile.add_argument("--config", help="JSON file overriding fields of the preset")
  tile.add_argument("--gzip", action="store_true",
                    help="gzip the bag files (2-3%% smaller: the tiles are PNG/JPEG "
                    "already; costs about as much time as tiling)")
  tile.add_argument("--preset", default="demo", choices=["demo", "full"],
                    help="configuration preset (default demo)")
  tile.set_defaults(handler=_tile)

  run = commands.add_parser(
      "run", help="run the whole pipeline locally (LocalDagRunner)",
      description="Run SlideExampleGen through Pusher on DATA with "
      "LocalDagRunner. OUT receives pipeline_root/, metadata.sqlite (ML "
      "Metadata) and serving_model/<version>/ (the pushed SavedModel).")
  run.add_argument("--data", required=True,
                   help="data folder: train.csv and train_images/*.tiff (PANDA), or a "
                   "PCam or IDC folder")
  _add_format_argument(run)
  run.add_argument("--out", required=True, help="output folder")
  run.add_argument("--config", help="JSON file overriding fields of the preset")
  run.add_argument("--preset", default="demo", choices=["demo", "full"],
                   help="configuration preset (default demo)")
  run.set_defaults(handler=_run)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  return args.handler(args)


if __name__ == "__main__":
  sys.exit(main())
