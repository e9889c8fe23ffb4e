"""All-tissue tiling, histopipe vs CLAM: whole processes, one core each.

Run from the repository root with a CLAM checkout beside it (CLAM is not a
dependency of histopipe; its own Python dependencies, OpenSlide, h5py, OpenCV,
pandas, are ours too):

    git clone https://github.com/mahmoodlab/CLAM /tmp/CLAM
    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/clam_tiling.py --clam /tmp/CLAM \\
        [--slides 16] [--copies 12] [--runs 2] [--tiff-tile 256] [--workdir DIR]

The workload: every tissue tile, 256 px, at level 1 (downsample 4) of PANDA-size
synthetic biopsies (`bench/tiling.py`'s generator, 25,000 x 15,000 px, JPEG
q90 TIFF tiles of `--tiff-tile` px), drawn with a seed no other benchmark or
test uses (held back), each linked `--copies` times under its own name. Every
command below runs as its own process, pinned to one core
(`os.sched_setaffinity`), timed from start to exit, imports included; the
runs alternate, so a slow minute of the machine falls on both.

(a) histopipe, lossless: `histopipe tile --preset full --config` with
    `tiling.tiles_per_slide 0, tiling.level 1`, Beam in-memory on one worker,
    `--no-previews`: the SlideExampleGen's tiling, writing the bags (every tile
    a JPEG) and slide reports. JPEG tiles are cut from the slide's own JPEG data
    (`slides/jpeg_crop.py`), the default.
(a0) the same with `tiling.lossless_jpeg_crop: false`: every tile decoded and
    encoded again at q90 (histopipe before the lossless cut).
(b) CLAM: `create_patches_fp.py --seg --patch --patch_level 1 --patch_size 256
    --step_size 256 --preset bwh_biopsy.csv` (CLAM's biopsy preset: its default
    drops any tissue smaller than 100 reference patches, that is every core of a
    biopsy), then this file's `clam-read`: for each `.h5` of coordinates, the
    slide opened with `openslide.open_slide` and every patch read as CLAM's
    feature-extraction dataset (`Whole_Slide_Bag_FP.__getitem__`) reads it,
    `wsi.read_region(coord, patch_level, (patch_size, patch_size)).convert('RGB')`,
    without the torch transforms. (b) is the sum of the two processes.
(c) the floor for histopipe's bags: `floor` (this file), one process, no Beam,
    no TFX: open each slide with tifffile, decode the level the thumbnail comes
    from, mask tissue and choose tiles as the pipeline does, and copy each tile's
    JPEG (lossless cut) into a list. No statistics, no TFRecords.

The tissue detectors differ (CLAM: contours on a saturation threshold;
histopipe: `slides/tissue.py` and `min_tissue_fraction`), so tile counts are
printed with the times; ratios are of slides per second and tiles per second.
Writes WORKDIR/clam_results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
DEFAULT_WORKDIR = os.path.join(tempfile.gettempdir(), "histopipe-bench", "clam")
# Held back: no other benchmark or test draws slides with this seed.
HELD_BACK_SEED = 2718
LEVEL = 1
TILE_SIZE = 256


def histopipe_config(lossless: bool) -> Dict[str, object]:
  return {"tiling": {"tiles_per_slide": 0, "level": LEVEL, "tile_size": TILE_SIZE,
                     "tile_format": "jpeg", "lossless_jpeg_crop": lossless},
          "beam_pipeline_args": ["--direct_running_mode=in_memory",
                                 "--direct_num_workers=1"]}


def timed_process(command: Sequence[str], core: int, cwd: str, log_file: str) -> float:
  """Wall seconds of `command` from start to exit, pinned to one core."""
  start = time.perf_counter()
  with open(log_file, "w") as log:
    subprocess.run(list(command), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=True,
                   preexec_fn=lambda: os.sched_setaffinity(0, {core}))
  return time.perf_counter() - start


# --------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------

def run_histopipe(data_dir: str, out_dir: str, lossless: bool, core: int,
                  workdir: str) -> Dict[str, float]:
  shutil.rmtree(out_dir, ignore_errors=True)
  config_file = os.path.join(workdir, f"histopipe-{'lossless' if lossless else 'reencode'}.json")
  with open(config_file, "w") as f:
    json.dump(histopipe_config(lossless), f)
  seconds = timed_process(
      [sys.executable, "-m", "histopipe", "tile", "--data", data_dir, "--out", out_dir,
       "--preset", "full", "--config", config_file, "--no-previews"],
      core, REPO_ROOT, out_dir + ".log")
  with open(os.path.join(out_dir, "summary.json")) as f:
    summary = json.load(f)
  return {"seconds": seconds, "slides": summary["slides_written"],
          "tiles": summary["tiles_written"], "rejected": summary["slides_rejected"],
          "bag_bytes": sum(os.path.getsize(p) for p in glob.glob(
              os.path.join(out_dir, "bags-*.tfrecord")))}


def run_clam(clam_dir: str, images_dir: str, out_dir: str, core: int) -> Dict[str, float]:
  shutil.rmtree(out_dir, ignore_errors=True)
  patching = timed_process(
      [sys.executable, "create_patches_fp.py", "--source", images_dir, "--save_dir", out_dir,
       "--patch_size", str(TILE_SIZE), "--step_size", str(TILE_SIZE), "--seg", "--patch",
       "--patch_level", str(LEVEL), "--preset", "bwh_biopsy.csv"],
      core, clam_dir, out_dir + "-patching.log")
  counts_file = out_dir + "-read.json"
  reading = timed_process(
      [sys.executable, os.path.abspath(__file__), "clam-read", os.path.join(out_dir, "patches"),
       images_dir, counts_file], core, REPO_ROOT, out_dir + "-read.log")
  with open(counts_file) as f:
    counts = json.load(f)
  return {"seconds": patching + reading, "patching_seconds": patching,
          "reading_seconds": reading, "slides": counts["slides"], "tiles": counts["tiles"]}


def clam_read(patches_dir: str, images_dir: str, counts_file: str) -> None:
  """CLAM's reading of every patch, as `Whole_Slide_Bag_FP.__getitem__` does."""
  import h5py  # pylint: disable=import-outside-toplevel
  import openslide  # pylint: disable=import-outside-toplevel
  slides = tiles = 0
  for h5_path in sorted(glob.glob(os.path.join(patches_dir, "*.h5"))):
    slide_id = os.path.splitext(os.path.basename(h5_path))[0]
    wsi = openslide.open_slide(os.path.join(images_dir, slide_id + ".tiff"))
    with h5py.File(h5_path, "r") as f:
      coords = f["coords"][:]
      patch_level = int(f["coords"].attrs["patch_level"])
      patch_size = int(f["coords"].attrs["patch_size"])
    for coord in coords:
      img = wsi.read_region(coord, patch_level, (patch_size, patch_size)).convert("RGB")
      del img
    wsi.close()
    slides += 1
    tiles += len(coords)
  with open(counts_file, "w") as f:
    json.dump({"slides": slides, "tiles": tiles}, f)


def floor(images_dir: str, counts_file: str) -> None:
  """The least work that yields histopipe's lossless bags' tiles: per slide, the
  tissue thumbnail (decoded), the pipeline's mask and choice of tiles, and each
  tile's lossless JPEG cut."""
  # pylint: disable=import-outside-toplevel
  from histopipe.core.configs import full_config
  from histopipe.slides import tissue
  from histopipe.slides.tiff_reader import TiffSlide
  from histopipe.slides.tiling import MASK_PIXELS_PER_TILE, THUMBNAIL_MAX_SIDE
  tiling = dataclasses.replace(full_config().tiling, **histopipe_config(True)["tiling"])
  slides = tiles = 0
  for path in sorted(glob.glob(os.path.join(images_dir, "*.tiff"))):
    with TiffSlide(path) as slide:
      level = slide.levels[LEVEL]
      thumbnail, _ = slide.thumbnail(
          max_side=THUMBNAIL_MAX_SIDE,
          max_downsample=TILE_SIZE * level.downsample / MASK_PIXELS_PER_TILE)
      fractions = tissue.tile_tissue_fractions(tissue.tissue_mask(thumbnail), level.width,
                                               level.height, TILE_SIZE)
      chosen = tissue.select_tiles(fractions, None, tiling.min_tissue_fraction)
      cut = slide.read_regions_jpeg(LEVEL, [(c.col * TILE_SIZE, c.row * TILE_SIZE, TILE_SIZE,
                                             TILE_SIZE) for c in chosen[:tiling.max_tiles]])
    slides += 1
    tiles += sum(c is not None for c in cut)
  with open(counts_file, "w") as f:
    json.dump({"slides": slides, "tiles": tiles}, f)


def run_floor(images_dir: str, workdir: str, core: int) -> Dict[str, float]:
  counts_file = os.path.join(workdir, "floor.json")
  seconds = timed_process([sys.executable, os.path.abspath(__file__), "floor", images_dir,
                           counts_file], core, REPO_ROOT, os.path.join(workdir, "floor.log"))
  with open(counts_file) as f:
    counts = json.load(f)
  return {"seconds": seconds, **counts}


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------

def median(values: List[float]) -> float:
  ordered = sorted(values)
  middle = len(ordered) // 2
  return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def markdown_table(results: Dict[str, List[Dict[str, float]]]) -> str:
  reference = median([r["seconds"] for r in results["clam"]])
  reference_tiles = results["clam"][0]["tiles"] / reference
  lines = ["| method | slides | tiles | seconds (each run) | slides/s | tiles/s | "
           "slides/s vs CLAM | tiles/s vs CLAM |", "|---|---:|---:|---|---:|---:|---:|---:|"]
  for key, runs in results.items():
    seconds = median([r["seconds"] for r in runs])
    lines.append(f"| {key} | {runs[0]['slides']} | {runs[0]['tiles']} | "
                 f"{', '.join(format(r['seconds'], '.1f') for r in runs)} | "
                 f"{runs[0]['slides'] / seconds:.2f} | {runs[0]['tiles'] / seconds:.0f} | "
                 f"{reference / seconds:.2f} | {runs[0]['tiles'] / seconds / reference_tiles:.2f} |")
  return "\n".join(lines)


def bench(args: argparse.Namespace) -> None:
  sys.path.insert(0, BENCH_DIR)
  import tiling as tiling_bench  # pylint: disable=import-outside-toplevel (bench/tiling.py)
  os.makedirs(args.workdir, exist_ok=True)
  slides_workdir = os.path.join(args.workdir, f"tiff{args.tiff_tile}")
  slides = tiling_bench.cached_slides(slides_workdir, args.slides, HELD_BACK_SEED, args.width,
                                      args.height, print, tiff_tile=args.tiff_tile)
  data_dir = tiling_bench.make_data_dir(slides_workdir,
                                        tiling_bench.with_copies(slides, args.copies))
  images_dir = os.path.join(data_dir, "train_images")
  core = sorted(os.sched_getaffinity(0))[0]
  results: Dict[str, List[Dict[str, float]]] = {"histopipe lossless (a)": [],
                                                "histopipe re-encoding (a0)": [], "clam": [],
                                                "floor (c)": []}
  for run in range(args.runs):
    print(f"run {run + 1}/{args.runs}", flush=True)
    results["clam"].append(run_clam(args.clam, images_dir, os.path.join(args.workdir, "clam"),
                                    core))
    print("  clam", results["clam"][-1], flush=True)
    results["histopipe lossless (a)"].append(run_histopipe(
        data_dir, os.path.join(args.workdir, "histopipe"), True, core, args.workdir))
    print("  histopipe lossless", results["histopipe lossless (a)"][-1], flush=True)
    results["histopipe re-encoding (a0)"].append(run_histopipe(
        data_dir, os.path.join(args.workdir, "histopipe"), False, core, args.workdir))
    print("  histopipe re-encoding", results["histopipe re-encoding (a0)"][-1], flush=True)
    results["floor (c)"].append(run_floor(images_dir, args.workdir, core))
    print("  floor", results["floor (c)"][-1], flush=True)
  table = markdown_table(results)
  print(table)
  with open(os.path.join(args.workdir, "clam_results.json"), "w") as f:
    json.dump({"results": results, "table": table, "slides": args.slides,
               "copies": args.copies, "tiff_tile": args.tiff_tile,
               "size": [args.width, args.height], "machine": platform.processor(),
               "cpus": os.cpu_count(), "clam": args.clam}, f, indent=2)


def main(argv: Sequence[str]) -> None:
  if argv[:1] == ["clam-read"]:
    clam_read(*argv[1:4])
    return
  if argv[:1] == ["floor"]:
    floor(*argv[1:3])
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--clam", required=True, help="a CLAM checkout (create_patches_fp.py)")
  parser.add_argument("--slides", type=int, default=16, help="slides drawn (default 16)")
  parser.add_argument("--copies", type=int, default=12,
                      help="names each slide is linked under (default 12: 192 slides)")
  parser.add_argument("--runs", type=int, default=2, help="runs of each method (default 2)")
  parser.add_argument("--tiff-tile", type=int, default=256,
                      help="TIFF tile size of the slides (default 256, the synthetic slides' own)")
  parser.add_argument("--width", type=int, default=25000)
  parser.add_argument("--height", type=int, default=15000)
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
  bench(parser.parse_args(argv))


if __name__ == "__main__":
  main(sys.argv[1:])
