"""Peak memory of tiling a 100,000 x 60,000 px slide, against a 1 GB budget.

Run from the repository root:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/tiling_memory.py [--workdir DIR]

1. Writes a sparse slide (mostly white glass, a few thin biopsy-like tissue
   strips) of `--width x --height` px (default 100,000 x 60,000; 18 GB as raw
   RGB at level 0) as a JPEG-compressed, 256-px tiled pyramidal TIFF with
   levels at `--downsamples` (default 1,4,16, PANDA's layout), WITHOUT holding
   any level in memory: the slide is designed once at downsample 16 (a
   6,250 x 3,750 image), and `tifffile.TiffWriter.write` takes each level as
   a generator of 256 x 256 tiles (`shape=`, `dtype=`, `tile=` given), each
   tile upscaled from its small patch of the design (bilinear, with a 1-pixel
   margin so neighbouring tiles join seamlessly; tiles over glass are one
   shared white array). The writer's own peak RSS is reported too. The file is
   cached in the workdir.
2. Tiles it in a fresh SUBPROCESS per mode, with the `full` config (36 tiles of
   256 px from level 1, the preset's tile format):
     * `tile_slide`: `slides.tiling.tile_slide(path, full_config().tiling)`;
     * `tile_job`: `run_tile_job` (the `histopipe tile` Beam job, in-memory
       DirectRunner, 1 worker, previews on as in the CLI) on a data folder
       holding only this slide.
   Memory is read in the subprocess from /proc/self/status: after its
   imports (Beam for `tile_job`; TensorFlow for neither) it notes
   its RSS and its peak so far (`VmHWM`), resets `VmHWM` (`clear_refs` 5),
   tiles, and reads `VmHWM` again: the peak while tiling. "process peak" is
   the larger of the two peaks and is what is compared with the budget;
   "tiling adds" is the peak while tiling minus the RSS before it.
   `ru_maxrss` from `os.wait4` is shown as a cross-check; note that the
   `clear_refs` reset also lowers it, so it can miss an import-time peak.
   Inside the subprocess the reader's real decode (`TiffSlide._read_and_decode`
   behind its segment cache, or `_decode_segment` without one) and
   `TiffSlide.read_level` are wrapped (at run time; the project files are not
   touched) to count the TIFF tiles decoded per level and the whole levels
   read into one array, which shows where the reader decodes more than the
   chosen tiles.
3. Prints a Markdown table and the places where more was decoded than the
   chosen tiles, and writes everything to `WORKDIR/tiling_memory_results.json`.
   Exits with status 1 when a mode goes over `--budget-mb`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np
import tifffile

from histopipe.data import synthetic

DEFAULT_WORKDIR = os.path.join(tempfile.gettempdir(), "histopipe-bench", "tiling_memory")
RESULTS_FILE = "tiling_memory_results.json"
TIFF_TILE = synthetic.TIFF_TILE_SIZE  # 256, as PANDA
DESIGN_DOWNSAMPLE = 16  # the slide is designed at this downsample, then upscaled
BUDGET_MB = 1024
IMAGE_ID = "sparse0000000000000000000000000000"  # 32 characters, like a PANDA id
MODES = ("tile_slide", "tile_job")
GENERATOR_VERSION = 1


# --------------------------------------------------------------------------
# Memory measures
# --------------------------------------------------------------------------

def proc_status_mb(field: str) -> float:
  """`VmHWM` (peak RSS) or `VmRSS` of this process from /proc, in MB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024  # kB
  raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
  """Resets this process's VmHWM to its current RSS (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# --------------------------------------------------------------------------
# The sparse slide, written tile by tile
# --------------------------------------------------------------------------

def design_slide(rng: np.random.Generator, width: int, height: int,
                 strips: int) -> np.ndarray:
  """RGB image at DESIGN_DOWNSAMPLE: white glass and `strips` thin tissue cores.

  Each core is a rotated ellipse about 0.6-1.1 mm wide and 8-12 mm long at
  0.5 um/px (level 0), with glands and nuclei-like specks drawn in it.
  """
  image = np.empty((height, width, 3), np.uint8)
  image[:] = synthetic.BACKGROUND_RGB
  mask = np.zeros((height, width), np.uint8)
  for _ in range(strips):
    center = (int(rng.uniform(0.15, 0.85) * width), int(rng.uniform(0.15, 0.85) * height))
    half_length = int(rng.uniform(16_000, 24_000) / DESIGN_DOWNSAMPLE)
    half_width = int(rng.uniform(600, 1_100) / DESIGN_DOWNSAMPLE)
    cv2.ellipse(mask, center, (half_length, half_width), float(rng.uniform(0, 180)),
                0, 360, 255, -1)
  tissue = np.empty_like(image)
  tissue[:] = synthetic.STROMA_RGB
  ys, xs = np.nonzero(mask)
  for i in rng.integers(0, len(ys), len(ys) // 400):  # glands with lumens
    radius = int(rng.integers(3, 7))
    cv2.circle(tissue, (int(xs[i]), int(ys[i])), radius, synthetic.EPITHELIUM_RGB, -1)
    cv2.circle(tissue, (int(xs[i]), int(ys[i])), radius // 2, synthetic.BACKGROUND_RGB, -1)
  specks = rng.integers(0, len(ys), len(ys) // 12)  # nuclei
  tissue[ys[specks], xs[specks]] = synthetic.NUCLEUS_RGB_MALIGNANT
  tissue = cv2.GaussianBlur(tissue, (0, 0), 0.7)
  inside = mask > 0
  image[inside] = tissue[inside]
  return image


def level_tiles(design: np.ndarray, level_downsample: int, level_width: int,
                level_height: int) -> Iterator[np.ndarray]:
  """The level's TIFF tiles in row-major order, each upscaled from the design."""
  scale = DESIGN_DOWNSAMPLE // level_downsample
  if DESIGN_DOWNSAMPLE % level_downsample or TIFF_TILE % scale:
    raise ValueError(f"downsample {level_downsample} does not divide the design")
  patch = TIFF_TILE // scale  # design pixels under one tile
  # One pixel of margin on every side, and a full patch beyond the bottom and
  # right edges so edge tiles are full size (outside the level is never read).
  padded = cv2.copyMakeBorder(design, 1, patch + 1, 1, patch + 1, cv2.BORDER_REPLICATE)
  is_tissue = (padded != np.asarray(synthetic.BACKGROUND_RGB, np.uint8)).any(axis=-1)
  integral = cv2.integral(is_tissue.astype(np.uint8))
  white = np.empty((TIFF_TILE, TIFF_TILE, 3), np.uint8)
  white[:] = synthetic.BACKGROUND_RGB
  rows, cols = -(-level_height // TIFF_TILE), -(-level_width // TIFF_TILE)
  for row in range(rows):
    for col in range(cols):
      y0, x0 = row * patch, col * patch  # in padded coordinates: design - 1
      y1, x1 = y0 + patch + 2, x0 + patch + 2
      tissue_pixels = (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] +
                       integral[y0, x0])
      if not tissue_pixels:
        yield white
        continue
      if scale == 1:
        yield padded[y0 + 1:y0 + 1 + TIFF_TILE, x0 + 1:x0 + 1 + TIFF_TILE]
        continue
      up = cv2.resize(padded[y0:y1, x0:x1], None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_LINEAR)
      yield up[scale:scale + TIFF_TILE, scale:scale + TIFF_TILE]


def write_streamed_slide(path: str, width: int, height: int,
                         downsamples: Sequence[int], seed: int, strips: int,
                         jpeg_quality: int = 90) -> Dict[str, float]:
  """Writes the pyramid level by level from tile generators; returns stats."""
  if width % DESIGN_DOWNSAMPLE or height % DESIGN_DOWNSAMPLE:
    raise ValueError(f"width and height must be multiples of {DESIGN_DOWNSAMPLE}")
  start = time.perf_counter()
  rng = np.random.default_rng([seed, GENERATOR_VERSION])
  design = design_slide(rng, width // DESIGN_DOWNSAMPLE, height // DESIGN_DOWNSAMPLE, strips)
  tissue_fraction = float((design != np.asarray(synthetic.BACKGROUND_RGB)).any(-1).mean())
  pixels_per_cm0 = 1e4 / synthetic.LEVEL0_MPP
  raw_bytes = width * height * 3
  with tifffile.TiffWriter(path, bigtiff=raw_bytes > 2**32) as tif:
    for index, downsample in enumerate(downsamples):
      level_w, level_h = -(-width // downsample), -(-height // downsample)
      tif.write(level_tiles(design, downsample, level_w, level_h),
                shape=(level_h, level_w, 3), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE),
                photometric="rgb", compression="jpeg",
                compressionargs={"level": jpeg_quality},
                subfiletype=1 if index else 0,
                resolution=(pixels_per_cm0 / downsample, pixels_per_cm0 / downsample),
                resolutionunit="CENTIMETER", metadata=None)
  return {"seconds": time.perf_counter() - start, "file_mb": os.path.getsize(path) / 1e6,
          "tissue_fraction": tissue_fraction, "writer_peak_rss_mb": proc_status_mb("VmHWM"),
          "level0_raw_mb": raw_bytes / 1e6}


def write_labels(data_dir: str, slide_path: str) -> None:
  images = os.path.join(data_dir, "train_images")
  os.makedirs(images, exist_ok=True)
  link = os.path.join(images, f"{IMAGE_ID}.tiff")
  if os.path.lexists(link):
    os.remove(link)
  os.symlink(os.path.abspath(slide_path), link)
  with open(os.path.join(data_dir, "train.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image_id", "data_provider", "isup_grade", "gleason_score"])
    writer.writerow([IMAGE_ID, "radboud", 3, "4+3"])


# --------------------------------------------------------------------------
# The measured subprocess
# --------------------------------------------------------------------------

def child_main(mode: str, slide_path: str, data_dir: str, out_dir: str,
               result_path: str) -> None:
  """Runs in the subprocess: tile once, write what was measured as JSON."""
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from histopipe.slides import tiff_reader  # pylint: disable=import-outside-toplevel
  from histopipe.slides.tiling import tile_slide  # pylint: disable=import-outside-toplevel
  from histopipe.core.configs import full_config  # pylint: disable=import-outside-toplevel
  if mode == "tile_job":  # Beam: imported only where it runs
    from histopipe.beam.tile_job import run_tile_job  # pylint: disable=import-outside-toplevel

  decoded: Dict[int, int] = {}
  whole_levels: List[Dict[str, float]] = []
  # The method that really decodes, behind the reader's segment cache.
  decode_name = "_read_and_decode"
  original_decode = getattr(tiff_reader.TiffSlide, decode_name)
  original_read_level = tiff_reader.TiffSlide.read_level

  def counting_decode(self, page, index):
    level = next(i for i, p in enumerate(self._pages) if p is page)
    decoded[level] = decoded.get(level, 0) + 1
    return original_decode(self, page, index)

  def recording_read_level(self, level):
    page = self._pages[level]
    whole_levels.append({"level": level, "width": page.imagewidth,
                         "height": page.imagelength,
                         "rgb_mb": page.imagewidth * page.imagelength * 3 / 1e6})
    return original_read_level(self, level)

  setattr(tiff_reader.TiffSlide, decode_name, counting_decode)
  tiff_reader.TiffSlide.read_level = recording_read_level
  with tiff_reader.TiffSlide(slide_path) as slide:
    levels = [{"width": l.width, "height": l.height, "downsample": l.downsample}
              for l in slide.levels]
  config = full_config()
  before = {"import_peak_rss_mb": proc_status_mb("VmHWM"), "rss_mb": proc_status_mb("VmRSS"),
            "peak_reset": reset_peak_rss()}
  start = time.perf_counter()
  if mode == "tile_slide":
    bag = tile_slide(slide_path, config.tiling).bag
    tiles, status = sum(bag.tile_valid), "written"
  else:
    summary = run_tile_job(data_dir, out_dir, config,
                           beam_pipeline_args=("--direct_running_mode=in_memory",
                                               "--direct_num_workers=1"),
                           previews=True, progress=False)
    tiles = summary["tiles_written"]
    status = "written" if summary["slides_written"] == 1 else "rejected"
  seconds = time.perf_counter() - start
  tiling_peak = proc_status_mb("VmHWM")  # since the reset, if it worked
  result = {"mode": mode, "seconds": seconds, "tiles": tiles, "status": status,
            "before_tiling": before, "tiling_peak_rss_mb": tiling_peak,
            "peak_rss_mb": max(tiling_peak, before["import_peak_rss_mb"]),
            "segments_decoded_per_level": {str(k): v for k, v in sorted(decoded.items())},
            "whole_level_reads": whole_levels, "levels": levels,
            "tiles_per_slide": config.tiling.tiles_per_slide,
            "tile_level": config.tiling.level}
  with open(result_path, "w") as f:
    json.dump(result, f, indent=2)


def run_child(mode: str, slide_path: str, workdir: str) -> Dict[str, object]:
  """Starts the measured subprocess and adds its rusage peak RSS."""
  result_path = os.path.join(workdir, f"child_{mode}.json")
  data_dir = os.path.join(workdir, "data")
  out_dir = os.path.join(workdir, f"out_{mode}")
  if os.path.exists(result_path):
    os.remove(result_path)
  command = [sys.executable, os.path.abspath(__file__), "--child", mode,
             "--child-slide", slide_path, "--child-data", data_dir,
             "--child-out", out_dir, "--child-result", result_path]
  log_path = os.path.join(workdir, f"child_{mode}.log")
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode != 0 or not os.path.exists(result_path):
    raise RuntimeError(f"{mode} subprocess failed (exit {process.returncode}); see {log_path}")
  with open(result_path) as f:
    result = json.load(f)
  result["ru_maxrss_mb"] = usage.ru_maxrss / 1024  # kB on Linux
  result["log"] = log_path
  return result


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def markdown_table(slide: Dict[str, object], results: Sequence[Dict[str, object]],
                   budget_mb: float) -> str:
  lines = [
      f"Tiling one {slide['width']:,} x {slide['height']:,} px slide "
      f"(levels at downsample {slide['downsamples']}, 256-px JPEG tiles, "
      f"{slide['tissue_fraction']:.1%} tissue, {slide['file_mb']:.0f} MB file; level 0 "
      f"would be {slide['level0_raw_mb'] / 1e3:.1f} GB as raw RGB) with the `full` "
      f"config, each mode in a fresh subprocess, budget {budget_mb:.0f} MB:",
      "",
      "| mode | process peak RSS | RSS before tiling | peak while tiling | tiling adds "
      "| ru_maxrss (wait4) | within budget | time (s) | TIFF tiles decoded per level "
      "| whole levels read |",
      "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
  ]
  for r in results:
    peak, base = r["peak_rss_mb"], r["before_tiling"]["rss_mb"]
    tiling_peak = r["tiling_peak_rss_mb"]
    whole = ", ".join(f"level {w['level']} ({w['width']}x{w['height']}, "
                      f"{w['rgb_mb']:.0f} MB RGB)" for w in r["whole_level_reads"]) or "none"
    decoded = ", ".join(f"L{k}: {v}" for k, v in r["segments_decoded_per_level"].items())
    lines.append(f"| `{r['mode']}` | {peak:.0f} MB | {base:.0f} MB | {tiling_peak:.0f} MB | "
                 f"{tiling_peak - base:.0f} MB | {r['ru_maxrss_mb']:.0f} MB | {'yes' if peak <= budget_mb else 'NO'} | "
                 f"{r['seconds']:.1f} | {decoded} | {whole} |")
  lines += ["", f"Writing the slide (streamed, when it was generated): peak RSS "
                f"{slide['writer_peak_rss_mb']:.0f} MB, {slide['seconds']:.0f} s."]
  return "\n".join(lines)


def findings(results: Sequence[Dict[str, object]]) -> List[str]:
  """Where the reader decoded more than the chosen tiles need."""
  notes = []
  for r in results:
    tile_level = str(r["tile_level"])
    for level, count in r["segments_decoded_per_level"].items():
      size = r["levels"][int(level)]
      total = (-(-size["width"] // TIFF_TILE)) * (-(-size["height"] // TIFF_TILE))
      if level == tile_level and count > r["tiles"]:
        notes.append(f"{r['mode']}: {count} TIFF tiles decoded at level {level} for "
                     f"{r['tiles']} chosen tiles")
      elif level != tile_level:
        notes.append(f"{r['mode']}: {count} of the {total} TIFF tiles of level {level} "
                     f"({size['width']}x{size['height']}) decoded, for the tissue mask "
                     "thumbnail")
    for w in r["whole_level_reads"]:
      notes.append(f"{r['mode']}: read_level({w['level']}) holds a whole "
                   f"{w['width']}x{w['height']} level ({w['rgb_mb']:.0f} MB as RGB) "
                   "in one array")
  return notes


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                      help=f"slide cache, outputs and results (default {DEFAULT_WORKDIR})")
  parser.add_argument("--width", type=int, default=100_000, help="level-0 width")
  parser.add_argument("--height", type=int, default=60_000, help="level-0 height")
  parser.add_argument("--downsamples", default="1,4,16",
                      help="pyramid levels (default 1,4,16 as PANDA)")
  parser.add_argument("--strips", type=int, default=4, help="tissue strips (default 4)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--budget-mb", type=float, default=BUDGET_MB)
  parser.add_argument("--modes", default=",".join(MODES),
                      help=f"comma-separated subset of {','.join(MODES)}")
  # Internal: the measured subprocess.
  parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
  parser.add_argument("--child-slide", help=argparse.SUPPRESS)
  parser.add_argument("--child-data", help=argparse.SUPPRESS)
  parser.add_argument("--child-out", help=argparse.SUPPRESS)
  parser.add_argument("--child-result", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.downsamples = tuple(int(d) for d in args.downsamples.split(","))
  args.modes = tuple(m for m in args.modes.split(",") if m)
  unknown = set(args.modes) - set(MODES)
  if unknown:
    parser.error(f"unknown mode(s) {sorted(unknown)}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  if args.child:
    child_main(args.child, args.child_slide, args.child_data, args.child_out,
               args.child_result)
    return 0
  total_start = time.perf_counter()
  os.makedirs(args.workdir, exist_ok=True)
  name = (f"sparse_{args.width}x{args.height}_ds{'-'.join(map(str, args.downsamples))}"
          f"_s{args.seed}_n{args.strips}_v{GENERATOR_VERSION}")
  slide_path = os.path.join(args.workdir, name + ".tiff")
  stats_path = os.path.join(args.workdir, name + ".json")
  if os.path.exists(slide_path) and os.path.exists(stats_path):
    with open(stats_path) as f:
      slide = json.load(f)
    print(f"using cached {slide_path}", file=sys.stderr)
  else:
    print(f"writing {slide_path} ...", file=sys.stderr, flush=True)
    slide = write_streamed_slide(slide_path + ".partial", args.width, args.height,
                                 args.downsamples, args.seed, args.strips)
    os.replace(slide_path + ".partial", slide_path)
    slide.update(width=args.width, height=args.height, downsamples=list(args.downsamples))
    with open(stats_path, "w") as f:
      json.dump(slide, f, indent=2)
    print(f"wrote {slide['file_mb']:.0f} MB in {slide['seconds']:.0f} s, writer peak RSS "
          f"{slide['writer_peak_rss_mb']:.0f} MB", file=sys.stderr)
  write_labels(os.path.join(args.workdir, "data"), slide_path)

  results = []
  for mode in args.modes:
    print(f"tiling in a subprocess: {mode} ...", file=sys.stderr, flush=True)
    results.append(run_child(mode, slide_path, args.workdir))
  table = markdown_table(slide, results, args.budget_mb)
  notes = findings(results)
  total_seconds = time.perf_counter() - total_start
  report = {"slide": {**slide, "path": slide_path}, "budget_mb": args.budget_mb,
            "results": results, "findings": notes, "markdown": table,
            "total_seconds": round(total_seconds, 1)}
  results_path = os.path.join(args.workdir, RESULTS_FILE)
  with open(results_path, "w") as f:
    json.dump(report, f, indent=2)
  print(table)
  if notes:
    print("\nDecoded beyond the chosen tiles:")
    print("\n".join(f"- {n}" for n in notes))
  print(f"\ntotal: {total_seconds:.0f} s; results: {results_path}")
  over = [r["mode"] for r in results if r["peak_rss_mb"] > args.budget_mb]
  return 1 if over else 0


if __name__ == "__main__":
  sys.exit(main())
