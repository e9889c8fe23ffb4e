"""`histopipe synth` (a synthetic dataset) and `histopipe tile` (slides to bags with the
ExampleGen's Beam code, outside TFX)."""

from __future__ import annotations

import os
import sys
from histopipe.cli.arguments import (config_from_args, add_format_argument, add_slides_arguments,
                                     add_config_arguments)


def _synth(args) -> int:
  from histopipe.data import synthetic
  if args.format == "pcam":
    patches = synthetic.write_patch_dataset(args.out, args.slides, seed=args.seed,
                                            progress=True)
    print(f"wrote {len(patches)} patches ({sum(p.label for p in patches)} positive) to "
          f"{os.path.join(args.out, 'train')} and labels to "
          f"{os.path.join(args.out, 'train_labels.csv')}")
    return 0
  if args.format == "idc":
    patches = synthetic.write_idc_dataset(args.out, args.slides, seed=args.seed, progress=True)
    patients = len({os.path.dirname(os.path.dirname(p.path)) for p in patches})
    print(f"wrote {len(patches)} patches ({sum(p.label for p in patches)} positive) of "
          f"{patients} patients to {args.out}/<patient>/<0|1>/")
    return 0
  slides = synthetic.write_dataset(args.out, args.slides, seed=args.seed,
                                   level0_size=(args.width, args.height), progress=True)
  print(f"wrote {len(slides)} slides to {os.path.join(args.out, 'train_images')} "
        f"and labels to {os.path.join(args.out, 'train.csv')} "
        f"(grades {sorted({s.isup_grade for s in slides})})")
  return 0


def _tile(args) -> int:
  from histopipe.beam.tile_job import describe, run_tile_job
  config = config_from_args(args, args.format)
  summary = run_tile_job(args.data, args.out, config, gzip=args.gzip,
                         previews=not args.no_previews)
  print(describe(summary, args.out, gzip=args.gzip, previews=not args.no_previews))
  if summary["slides_total"] and not summary["slides_written"]:
    print("histopipe tile: error: no slide was tiled; the reasons are in "
          f"{args.out}/rejects.csv", file=sys.stderr)
    return 1
  return 0


def add_commands(commands) -> None:
  """synth, tile"""
  synth = commands.add_parser(
      "synth", help="write a synthetic PANDA-style (or PatchCamelyon- or IDC-style) dataset",
      description="Write PANDA-format slides (JPEG-compressed tiled pyramidal "
      "TIFF, levels at downsample 1/4/16) under OUT/train_images/ and labels "
      "in OUT/train.csv; morphology depends on the ISUP grade. With --format "
      "pcam: 96x96 patches OUT/train/<id>.tif and OUT/train_labels.csv (id,label), "
      "positives showing tumour morphology; with --format idc: 50x50 patches "
      "OUT/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<0|1>.png, four a patient.")
  synth.add_argument("--out", required=True, help="output folder")
  synth.add_argument("--slides", type=int, required=True,
                     help="number of slides (or patches with --format pcam or idc)")
  synth.add_argument("--format", default="panda", choices=["panda", "pcam", "idc"],
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
  add_slides_arguments(tile)
  add_format_argument(tile)
  tile.add_argument("--out", required=True, help="output folder")
  tile.add_argument("--gzip", action="store_true",
                    help="gzip the bag files (2-3%% smaller: the tiles are PNG/JPEG "
                    "already; costs about as much time as tiling)")
  tile.add_argument("--no-previews", action="store_true",
                    help="do not draw OUT/previews/ (one PNG a slide)")
  add_config_arguments(tile)
  tile.set_defaults(handler=_tile)
