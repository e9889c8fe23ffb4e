"""Tiling throughput on PANDA-size synthetic slides: histopipe vs a Kaggle baseline vs the floor.

Run from the repository root:

    TF_USE_LEGACY_KERAS=1 .venv/bin/python bench/tiling.py [--slides N] [--copies K]
        [--tile-format jpeg|png] [--workdir DIR]

What it does, in one process:

1. Slides. Writes N synthetic biopsies of about 25,000 x 15,000 px at level 0
   (`--width/--height`) as JPEG-compressed tiled pyramidal TIFFs with levels at
   downsample 1/4/16 (`data.synthetic.write_pyramidal_tiff`), and a
   PANDA `train.csv`. Tissue is drawn by `data.synthetic.render_tissue`
   at level-1 resolution (downsample 4) with the tumour morphology scaled by
   1/4 (radii / 4, densities x 16), so level 1, the level that is tiled, has
   level-0-like texture; level 0 is that image upscaled with cv2.resize
   (bilinear) and level 2 is it downscaled (area). The benign part of each
   core uses `render_tissue`'s own grade-0 morphology, unscaled. Slides are
   cached in `WORKDIR/slide_cache` by (seed, index, size): a rerun skips
   generation; `WORKDIR/data_N/` holds symlinks to the first N and the CSV.
   With `--copies K`, each slide is linked K times under K image ids, so a run
   tiles N x K slides (enough work to amortise start-up) from N drawn files;
   every method below goes through the same N x K list.

2. Timings, all with `full_config().tiling` (36 tiles of 256 px at 2 um/px: level 1 here,
   JPEG q90 unless `--tile-format png`), on the same slides, each measured once, wall clock
   (`time.perf_counter`), with the slide files warm in the page cache (they
   were just written or read):

   (a) `run_tile_job(previews=False, progress=False)` with
       `--direct_running_mode=in_memory --direct_num_workers=1`: the whole
       `histopipe tile` Beam job, including pipeline start-up and writing the
       TFRecords and reports. A trivial Beam pipeline runs first
       (untimed) so (a) does not pay for Beam's lazy imports alone.
   (b) The popular Kaggle-notebook approach: `tifffile.imread(path, key=1)`
       decodes the WHOLE level 1, pads it with white to a multiple of 256
       (centred, as in the notebooks), reshapes it into tiles, keeps the 36
       with the lowest pixel sum (darkest) and encodes them with
       `slides.tiling.encode_tile`. tifffile decodes with several threads
       by default; (b1) repeats it with `maxworkers=1`, which is the fair
       comparison with the single-worker (a).
   (c) The floor: for exactly the tiles (a) chose (read back from its bags),
       open the slide and `TiffSlide.read_region` each tile rectangle; this
       decodes only the TIFF tiles those rectangles touch. No tissue
       detection, no encoding, no Beam.
   (c2) (c) and encoding each tile as (a) does: the least work that yields
       (a)'s bags once the tiles are known.
   (c3) The necessary work alone, one thread: no Beam, no `tile_slide`, no
       `TiffSlide`. Per slide, `tifffile.TiffFile` opens the file; every
       TIFF tile of the lowest level is read (`fh.read`) and decoded by
       tifffile's per-segment `page.decode(data, index,
       jpegtables=page.jpegtables)`, as `slides/slide_reader.py` does
       (as fast as `page.asarray(maxworkers=1)` here, and it is the same
       decode as the tile step), and the level is shrunk to the pipeline's
       thumbnail (`slides.tiling.THUMBNAIL_MAX_SIDE`, by
       `resample.area_average`, so the mask sees the same pixels); then
       `tissue.tissue_mask`, `tissue.tile_tissue_fractions` and
       `tissue.select_tiles` choose the tiles, only the TIFF tiles under each
       chosen 256 px tile of the tiled level are decoded (decoded TIFF tiles
       kept in a plain dict for the slide, since neighbouring tiles share
       them) and assembled, and each tile is encoded as (a) does
       (`slides.tiling.encode_tile`, after `resize_to` if set). The
       level is the pipeline's own, `slides.tiling.choose_scale` on the
       opened slide, learnt once per distinct file before the clock starts
       (metadata, ~4 ms a slide); (c3) cuts it as it is and refuses a slide
       the pipeline would read at another scale and shrink. Its tiles must
       be (a)'s (`same tiles as (a)` in the notes; a warning if not).
       Targets: (a)/(c3) >= 0.6 and (d)/(c3) >= 1.0.
   (d1) `run_tile_job` with `--direct_running_mode=multi_processing
       --direct_num_workers=1`: one worker process, as (d) runs them.
   (d) the same with `--direct_num_workers=2`; (d)/(d1) is the scaling from
       one to two Beam workers, (d)/(a) compares with the in-memory runner.
   (e) For reference: `slides.tiling.tile_slide` in a plain loop (the
       work (a) does per slide, without Beam and without writing).
   (f) The SlideExampleGen as `histopipe run` runs it: a TFX pipeline of that
       one component under `LocalDagRunner` (ML Metadata in SQLite, no cache,
       the driver's input fingerprint, the split by patient, the slide
       report), Beam in-memory with 1 worker as (a); the time of the whole
       `LocalDagRunner.run`, so TFX's launcher is counted too. Its bags are
       read back from the Examples artifact and must hold (a)'s tiles.
   (f2) (f) with Beam's own choice of TFRecord checksum, crcmod, instead of
       the `google_crc32c` our stages install
       (`beam/tfrecord.py`): what the fast checksum saves. Beam
       2.59 looks for a fast one only in python-snappy's old
       `_snappy`/`_crc32c` modules, which python-snappy 0.7 (cramjam-based,
       the only release on the index) no longer has, so installing
       python-snappy changes nothing (Beam's pick in this environment is in
       the results, "crc32c").

   With `--sizes N1,N2,...`, (f) is also run on the first N slides of the
   list with Beam's in-memory runner (1 worker) and with the `full` preset's
   multi-processing runner (one worker per core), to find from how many
   slides the worker processes pay for their start-up.

   "TIFF tiles decoded / slide" counts the segments `TiffSlide` really
   decodes (`_read_and_decode`, behind its segment cache; `_decode_segment`
   in a reader without one), wrapped at run time, never edited, during (c)
   and (e); (a) and (d) run
   the same `tile_slide` so they decode what (e) decodes; for (b) it is every
   TIFF tile of level 1; (c3) counts its own `page.decode` calls. "Tissue in
   chosen tiles" is the mean fraction of non-white pixels (any channel <
   `slides.tissue.WHITE_LEVEL`) over the tiles each method keeps, a check
   that a faster method does not pick worse tiles. tiles/s counts tiles cut
   from the slide (bag padding excluded).

3. Prints a Markdown table (rates and the throughput ratios (a)/(b),
   (a)/(c), (d)/(a), (a)/(c3), (d)/(c3)) and writes it, with all raw
   numbers, to `WORKDIR/tiling_results.json`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the project needs Keras 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tifffile  # noqa: E402

from histopipe.bags import bag_features
from histopipe.slides import resample, slide_reader, tiff_reader
from histopipe.data import synthetic
from histopipe.slides import tissue  # noqa: E402
from histopipe.beam.tile_job import bag_files, run_tile_job  # noqa: E402
from histopipe.slides.tiling import (  # noqa: E402
    THUMBNAIL_MAX_SIDE, choose_scale, encode_tile, tile_slide)
from histopipe.core.configs import PipelineConfig, TilingConfig, full_config  # noqa: E402

DEFAULT_WORKDIR = os.path.join(tempfile.gettempdir(), "histopipe-bench", "tiling")
RESULTS_FILE = "tiling_results.json"
# Bump when the slide generator below changes, so cached slides are redrawn.
GENERATOR_VERSION = 2
RENDER_DOWNSAMPLE = 4  # slides are drawn at level 1 and upscaled to level 0

BEAM_ONE_WORKER = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
BEAM_ONE_WORKER_PROCESS = ("--direct_running_mode=multi_processing", "--direct_num_workers=1")
BEAM_TWO_WORKERS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
BEAM_FULL_PRESET = tuple(full_config().beam_pipeline_args)


# --------------------------------------------------------------------------
# Synthetic PANDA-size slides
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BenchSlide:
  image_id: str
  path: str
  data_provider: str
  isup_grade: int
  gleason_score: str


def slide_metadata(seed: int, index: int) -> Tuple[str, str, int, str, np.random.Generator]:
  """(image_id, provider, grade, gleason, rng): depends on (seed, index) only,
  so slide i is the same file whatever `--slides` is and the cache can be reused."""
  rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
  image_id = hashlib.md5(f"histopipe-bench-{seed}-{index}".encode()).hexdigest()
  grade = (seed + index) % len(synthetic.GLEASON_BY_ISUP)  # every grade in 6 slides
  provider = synthetic.PROVIDERS[int(rng.integers(0, len(synthetic.PROVIDERS)))]
  choices = synthetic.GLEASON_BY_ISUP[grade]
  gleason = choices[int(rng.integers(0, len(choices)))]
  return image_id, provider, grade, gleason, rng


def render_levels(rng: np.random.Generator, width: int, height: int, grade: int,
                  provider: str) -> List[np.ndarray]:
  """[level 0, level 1, level 2] RGB arrays of one slide (downsample 1/4/16)."""
  if width % RENDER_DOWNSAMPLE or height % RENDER_DOWNSAMPLE:
    raise ValueError(f"width and height must be multiples of {RENDER_DOWNSAMPLE}")
  morph = synthetic.jittered(synthetic.morphology_for_grade(grade), rng)
  tumour_fraction = float(rng.uniform(0.3, 0.9)) if grade else 0.0
  stain = synthetic.PROVIDER_STAIN[provider] * rng.normal(1.0, 0.03, 3)
  level1 = synthetic.render_tissue(
      rng, height // RENDER_DOWNSAMPLE, width // RENDER_DOWNSAMPLE,
      synthetic.at_downsample(morph, RENDER_DOWNSAMPLE),
      tumour_fraction=tumour_fraction, stain_scale=stain)
  level0 = cv2.resize(level1, (width, height), interpolation=cv2.INTER_LINEAR)
  levels = [level0, level1]
  for downsample in synthetic.PANDA_DOWNSAMPLES[2:]:
    size = (-(-width // downsample), -(-height // downsample))  # ceil, as PANDA
    levels.append(cv2.resize(level1, size, interpolation=cv2.INTER_AREA))
  return levels


def cached_slides(workdir: str, count: int, seed: int, width: int, height: int,
                  log: Callable[[str], None],
                  tiff_tile: int = synthetic.TIFF_TILE_SIZE) -> List[BenchSlide]:
  """The first `count` slides, drawing only those not in the cache yet; one
  cache a TIFF tile size (`tiff_tile` px)."""
  cache_dir = os.path.join(workdir, "slide_cache")
  os.makedirs(cache_dir, exist_ok=True)
  slides = []
  for index in range(count):
    image_id, provider, grade, gleason, rng = slide_metadata(seed, index)
    tile_name = "" if tiff_tile == synthetic.TIFF_TILE_SIZE else f"-t{tiff_tile}"
    path = os.path.join(cache_dir,
                        f"{image_id}-{width}x{height}{tile_name}-v{GENERATOR_VERSION}.tiff")
    if os.path.exists(path):
      log(f"slide {index + 1}/{count}: cached {os.path.basename(path)}")
    else:
      start = time.perf_counter()
      levels = render_levels(rng, width, height, grade, provider)
      partial = path + ".partial"
      synthetic.write_pyramidal_tiff(partial, levels, tile_size=tiff_tile)
      del levels
      os.replace(partial, path)
      log(f"slide {index + 1}/{count}: wrote {os.path.getsize(path) / 1e6:.0f} MB "
          f"(grade {grade}) in {time.perf_counter() - start:.1f} s")
    slides.append(BenchSlide(image_id, path, provider, grade, gleason))
  return slides


def with_copies(slides: Sequence[BenchSlide], copies: int) -> List[BenchSlide]:
  """Each slide `copies` times, under image ids `<id>-c<k>` when copies > 1."""
  if copies == 1:
    return list(slides)
  return [dataclasses.replace(s, image_id=f"{s.image_id}-c{k}")
          for k in range(copies) for s in slides]


def make_data_dir(workdir: str, slides: Sequence[BenchSlide]) -> str:
  """`WORKDIR/data_N/`: `train_images/<id>.tiff` symlinks and a PANDA train.csv."""
  data_dir = os.path.join(workdir, f"data_{len(slides)}")
  shutil.rmtree(data_dir, ignore_errors=True)
  images = os.path.join(data_dir, "train_images")
  os.makedirs(images)
  for slide in slides:
    os.symlink(os.path.abspath(slide.path), os.path.join(images, f"{slide.image_id}.tiff"))
  synthetic.write_labels(os.path.join(data_dir, "train.csv"), slides)
  return data_dir


# --------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
  key: str
  method: str
  seconds: float
  slides: int
  tiles: int
  decoded_per_slide: Optional[float] = None  # TIFF tiles (segments) decoded
  tissue: Optional[float] = None  # mean non-white fraction of kept tiles
  notes: str = ""

  @property
  def slides_per_s(self) -> float:
    return self.slides / self.seconds

  @property
  def tiles_per_s(self) -> float:
    return self.tiles / self.seconds

  def to_dict(self) -> Dict[str, object]:
    return {**dataclasses.asdict(self), "slides_per_s": self.slides_per_s,
            "tiles_per_s": self.tiles_per_s}


def _decode_method_name() -> str:
  """The TiffSlide method that really decodes a segment: `_read_and_decode`
  behind the segment cache, `_decode_segment` in readers without a cache."""
  if hasattr(tiff_reader.TiffSlide, "_read_and_decode"):
    return "_read_and_decode"
  return "_decode_segment"


@contextlib.contextmanager
def count_decoded_segments() -> Iterator[collections.Counter]:
  """Counts the TIFF segments (tiles) really decoded, per level, while active."""
  name = _decode_method_name()
  original = getattr(tiff_reader.TiffSlide, name)
  counts: collections.Counter = collections.Counter()

  def counting(self, page, index):
    level = next(i for i, p in enumerate(self._pages) if p is page)
    counts[level] += 1
    return original(self, page, index)

  setattr(tiff_reader.TiffSlide, name, counting)
  try:
    yield counts
  finally:
    setattr(tiff_reader.TiffSlide, name, original)


def non_white_fraction(tile_rgb: np.ndarray) -> float:
  return float((tile_rgb < tissue.WHITE_LEVEL).any(axis=-1).mean())


def cpus_busy_elsewhere(seconds: float = 1.0) -> float:
  """CPUs kept busy by other processes: /proc/stat sampled while this one sleeps."""
  def busy_and_total():
    with open("/proc/stat") as f:
      values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)
  busy0, total0 = busy_and_total()
  time.sleep(seconds)
  busy1, total1 = busy_and_total()
  return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)


def warm_up_beam() -> None:
  """A trivial pipeline, so the first timed job does not pay Beam's lazy imports."""
  with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(
      list(BEAM_ONE_WORKER))) as pipeline:
    _ = pipeline | beam.Create([1, 2]) | beam.Map(lambda x: x)


# --------------------------------------------------------------------------
# (a), (d): the histopipe Beam job
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ChosenTiles:
  level: int
  downsample: float
  tile_size: int
  xy: List[Tuple[int, int]]  # level coordinates of each valid tile
  tissue: List[float]  # non-white fraction of each valid tile (decoded PNG)


def read_bag_files(files: Sequence[str], compression: str = "") -> Dict[str, ChosenTiles]:
  """image_id -> the valid tiles of its bag, from TFRecord files of bags."""
  bags = {}
  for record in tf.data.TFRecordDataset(list(files), compression_type=compression):
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    ints = lambda key: list(feature[key].int64_list.value)  # noqa: E731
    downsample = feature[bag_features.LEVEL_DOWNSAMPLE].float_list.value[0]
    xy, tissue_values = [], []
    for valid, x, y, png in zip(ints(bag_features.TILE_VALID), ints(bag_features.TILE_X),
                                ints(bag_features.TILE_Y),
                                feature[bag_features.TILES].bytes_list.value):
      if not valid:
        continue
      xy.append((int(round(x / downsample)), int(round(y / downsample))))
      tile = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
      tissue_values.append(non_white_fraction(tile))
    image_id = feature[bag_features.IMAGE_ID].bytes_list.value[0].decode()
    bags[image_id] = ChosenTiles(ints(bag_features.LEVEL)[0], downsample,
                                 ints(bag_features.TILE_SIZE)[0], xy, tissue_values)
  return bags


def read_bags(out_dir: str) -> Dict[str, ChosenTiles]:
  """image_id -> the valid tiles of its bag, from `OUT/bags-*.tfrecord`."""
  files, compression = bag_files(out_dir)
  return read_bag_files(files, compression)


def bench_tile_job(key: str, method: str, data_dir: str, out_dir: str, config: PipelineConfig,
                   beam_args: Sequence[str]) -> Tuple[Result, Dict[str, ChosenTiles]]:
  shutil.rmtree(out_dir, ignore_errors=True)
  start = time.perf_counter()
  summary = run_tile_job(data_dir, out_dir, config, beam_pipeline_args=beam_args,
                         previews=False, progress=False)
  seconds = time.perf_counter() - start
  if summary["slides_rejected"]:
    raise RuntimeError(f"{key}: {summary['slides_rejected']} slide(s) rejected, see "
                       f"{out_dir}/rejects.csv")
  bags = read_bags(out_dir)
  tissue_values = [t for bag in bags.values() for t in bag.tissue]
  return Result(key, method, seconds, summary["slides_written"], summary["tiles_written"],
                tissue=float(np.mean(tissue_values)) if tissue_values else None,
                notes=" ".join(beam_args)), bags


# --------------------------------------------------------------------------
# (b): the Kaggle-notebook baseline
# --------------------------------------------------------------------------

def kaggle_tiles(path: str, level: int, tile_size: int, count: int,
                 maxworkers: Optional[int] = None) -> np.ndarray:
  """The `count` darkest `tile_size` tiles of a whole decoded level [count, s, s, 3]."""
  image = tifffile.imread(path, key=level, maxworkers=maxworkers)
  height, width = image.shape[:2]
  pad_y, pad_x = (-height) % tile_size, (-width) % tile_size
  image = np.pad(image, [[pad_y // 2, pad_y - pad_y // 2],
                         [pad_x // 2, pad_x - pad_x // 2], [0, 0]], constant_values=255)
  tiles = image.reshape(image.shape[0] // tile_size, tile_size,
                        image.shape[1] // tile_size, tile_size, 3)
  tiles = tiles.transpose(0, 2, 1, 3, 4).reshape(-1, tile_size, tile_size, 3)
  if len(tiles) < count:
    tiles = np.pad(tiles, [[0, count - len(tiles)], [0, 0], [0, 0], [0, 0]],
                   constant_values=255)
  darkest = np.argsort(tiles.reshape(len(tiles), -1).sum(-1))[:count]
  return tiles[darkest]


def level_segment_count(path: str, level: int) -> int:
  with tifffile.TiffFile(path) as tif:
    return len(tif.pages[level].dataoffsets)


def bench_kaggle(key: str, method: str, paths: Sequence[str], tiling: TilingConfig,
                 level: int, maxworkers: Optional[int]) -> Result:
  """(b) on `level`, the level (a) tiles."""
  tissue_values, tiles_kept = [], 0
  start = time.perf_counter()
  for path in paths:
    tiles = kaggle_tiles(path, level, tiling.tile_size, tiling.tiles_per_slide,
                         maxworkers)
    encoded = [encode_tile(tile, tiling) for tile in tiles]
    tiles_kept += len(encoded)
    tissue_values.extend(tiles)  # arrays; scored after the clock stops
  seconds = time.perf_counter() - start
  decoded = np.mean([level_segment_count(p, level) for p in paths])
  tissue_mean = float(np.mean([non_white_fraction(t) for t in tissue_values]))
  threads = "tifffile default threads" if maxworkers is None else f"maxworkers={maxworkers}"
  return Result(key, method, seconds, len(paths), tiles_kept, float(decoded), tissue_mean,
                notes=threads)


# --------------------------------------------------------------------------
# (c): the floor, (e): tile_slide without Beam
# --------------------------------------------------------------------------

def bench_floor(key: str, method: str, paths_by_id: Dict[str, str],
                bags: Dict[str, ChosenTiles]) -> Result:
  tiles_read = 0
  with count_decoded_segments() as counts:
    start = time.perf_counter()
    for image_id, bag in bags.items():
      with tiff_reader.TiffSlide(paths_by_id[image_id]) as slide:
        for x, y in bag.xy:
          slide.read_region(bag.level, x, y, bag.tile_size, bag.tile_size)
          tiles_read += 1
    seconds = time.perf_counter() - start
  return Result(key, method, seconds, len(bags), tiles_read,
                sum(counts.values()) / len(bags),
                notes=f"segments decoded per level: {dict(sorted(counts.items()))}")


def bench_floor_and_encode(key: str, method: str, paths_by_id: Dict[str, str],
                           bags: Dict[str, ChosenTiles], tiling: TilingConfig) -> Result:
  """(c) plus encoding each tile as (a) does: the least work that yields (a)'s
  tiles once the tiles are known (no tissue mask, no records, no Beam)."""
  tiles_read = 0
  start = time.perf_counter()
  for image_id, bag in bags.items():
    with tiff_reader.TiffSlide(paths_by_id[image_id]) as slide:
      for x, y in bag.xy:
        encode_tile(slide.read_region(bag.level, x, y, bag.tile_size, bag.tile_size), tiling)
        tiles_read += 1
  seconds = time.perf_counter() - start
  return Result(key, method, seconds, len(bags), tiles_read, notes=tiling.tile_format)


def pipeline_level(path: str, tiling: TilingConfig) -> Tuple[int, float]:
  """(index, downsample) of the level the pipeline tiles in `path`:
  `choose_scale` on the opened slide, so (c3) follows whatever rule it has."""
  with slide_reader.open_slide(path, tiling.reader) as slide:
    scale = choose_scale(slide, tiling)
    with tifffile.TiffFile(path) as tif:  # (c3) takes level i as page i (PANDA layout)
      sizes = [(p.imagewidth, p.imagelength) for p in tif.pages]
      tiled = all(p.is_tiled for p in tif.pages)
    if sizes != [(l.width, l.height) for l in slide.levels] or not tiled:
      raise ValueError(f"{path}: (c3) needs one tiled TIFF page per level, largest first")
  if scale.read_factor != 1.0:
    raise ValueError(f"{path}: (c3) cuts a level as it is; the pipeline would shrink "
                     f"level {scale.level.index} by {scale.read_factor:.3g}")
  return scale.level.index, float(scale.downsample)


def decode_tiff_tile(fh, page, index: int) -> Tuple[np.ndarray, Tuple[int, int]]:
  """One TIFF tile, read and decoded by tifffile, and its (y, x) in the page."""
  fh.seek(page.dataoffsets[index])
  data = fh.read(page.databytecounts[index])
  segment, indices, _ = page.decode(data, index, jpegtables=page.jpegtables)
  return segment[0], (indices[2], indices[3])


def necessary_work(path: str, level_index: int, tiling: TilingConfig,
                   counts: collections.Counter) -> List[Tuple[int, int]]:
  """(c3) on one slide: the (x, y) of its chosen, encoded tiles at the level;
  `counts` gets the TIFF tiles decoded, per level."""
  size = tiling.tile_size
  with tifffile.TiffFile(path) as tif:
    fh = tif.filehandle
    # 1. The lowest level, every TIFF tile decoded, shrunk to the thumbnail.
    lowest = tif.pages[len(tif.pages) - 1]
    image = np.full((lowest.imagelength, lowest.imagewidth, 3), 255, np.uint8)
    for index in range(len(lowest.dataoffsets)):
      segment, (y, x) = decode_tiff_tile(fh, lowest, index)
      h, w = min(segment.shape[0], lowest.imagelength - y), min(segment.shape[1],
                                                                lowest.imagewidth - x)
      image[y:y + h, x:x + w] = segment[:h, :w]
    counts[len(tif.pages) - 1] += len(lowest.dataoffsets)
    factor = max(1, -(-max(image.shape[:2]) // THUMBNAIL_MAX_SIDE))
    thumbnail = resample.area_average(image, factor) if factor > 1 else image
    # 2. The mask and the choice of tiles.
    page = tif.pages[level_index]
    width, height = page.imagewidth, page.imagelength
    fractions = tissue.tile_tissue_fractions(tissue.tissue_mask(thumbnail), width, height, size)
    chosen = tissue.select_tiles(fractions, tiling.tiles_per_slide, tiling.min_tissue_fraction)
    # 3. Only the TIFF tiles under the chosen tiles, each decoded once per slide.
    decoded: Dict[int, Tuple[np.ndarray, Tuple[int, int]]] = {}
    across = -(-width // page.tilewidth)
    xy = []
    for choice in chosen:
      x, y = choice.col * size, choice.row * size
      x1, y1 = min(x + size, width), min(y + size, height)
      tile = np.full((size, size, 3), 255, np.uint8)
      for row in range(y // page.tilelength, (y1 - 1) // page.tilelength + 1):
        for col in range(x // page.tilewidth, (x1 - 1) // page.tilewidth + 1):
          index = row * across + col
          if index not in decoded:
            decoded[index] = decode_tiff_tile(fh, page, index)
          segment, (seg_y, seg_x) = decoded[index]
          ix0, iy0 = max(seg_x, x), max(seg_y, y)
          ix1 = min(seg_x + segment.shape[1], x1)
          iy1 = min(seg_y + segment.shape[0], y1)
          tile[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = segment[
              iy0 - seg_y:iy1 - seg_y, ix0 - seg_x:ix1 - seg_x]
      # 4. Encoded as (a) encodes it.
      if tiling.resize_to and tiling.resize_to != size:
        tile = cv2.resize(tile, (tiling.resize_to,) * 2, interpolation=cv2.INTER_AREA)
      encode_tile(tile, tiling)
      xy.append((x, y))
    counts[level_index] += len(decoded)
  return xy


def bench_necessary_work(key: str, method: str, paths_by_id: Dict[str, str],
                         tiling: TilingConfig, reference: Dict[str, ChosenTiles]
                         ) -> Tuple[Result, Dict[str, ChosenTiles]]:
  """(c3): mask, choice, decode and encode on one thread, with tifffile and
  the pipeline's pure functions only; its tiles are checked against (a)'s."""
  levels = {path: pipeline_level(path, tiling) for path in set(paths_by_id.values())}
  counts: collections.Counter = collections.Counter()
  chosen: Dict[str, List[Tuple[int, int]]] = {}
  start = time.perf_counter()
  for image_id, path in paths_by_id.items():
    chosen[image_id] = necessary_work(path, levels[path][0], tiling, counts)
  seconds = time.perf_counter() - start
  bags = {image_id: ChosenTiles(*levels[paths_by_id[image_id]], tiling.tile_size, xy, [])
          for image_id, xy in chosen.items()}
  same = same_tiles(bags, reference)
  return Result(key, method, seconds, len(bags), sum(len(xy) for xy in chosen.values()),
                sum(counts.values()) / len(bags),
                notes=f"segments decoded per level: {dict(sorted(counts.items()))}; "
                f"{tiling.tile_format}; {'same' if same else 'OTHER'} tiles as (a)"), bags


def bench_plain_loop(key: str, method: str, paths: Sequence[str],
                     tiling: TilingConfig) -> Result:
  tiles_cut = 0
  with count_decoded_segments() as counts:
    start = time.perf_counter()
    for path in paths:
      bag = tile_slide(path, tiling).bag
      tiles_cut += sum(bag.tile_valid)
    seconds = time.perf_counter() - start
  return Result(key, method, seconds, len(paths), tiles_cut,
                sum(counts.values()) / len(paths),
                notes=f"segments decoded per level: {dict(sorted(counts.items()))}")


# --------------------------------------------------------------------------
# (f): the SlideExampleGen inside a TFX pipeline
# --------------------------------------------------------------------------

@contextlib.contextmanager
def beams_own_checksum() -> Iterator[None]:
  """While active, our stages leave Beam's TFRecord checksum as Beam picks it
  (in-process runners only: the patch does not reach worker processes)."""
  from apache_beam.io import tfrecordio  # pylint: disable=import-outside-toplevel
  from histopipe.beam import tfrecord as beam_tfrecord  # pylint: disable=import-outside-toplevel
  saved_fn, saved_use = tfrecordio._default_crc32c_fn.fn, beam_tfrecord.use_fast_checksum  # pylint: disable=protected-access
  tfrecordio._default_crc32c_fn.fn = None  # pylint: disable=protected-access
  beam_tfrecord.use_fast_checksum = lambda: False
  try:
    yield
  finally:
    tfrecordio._default_crc32c_fn.fn = saved_fn  # pylint: disable=protected-access
    beam_tfrecord.use_fast_checksum = saved_use


def beam_crc32c_name() -> str:
  """Which checksum Beam's TFRecord writer picks by itself in this environment."""
  from apache_beam.io import tfrecordio  # pylint: disable=import-outside-toplevel
  with beams_own_checksum():
    tfrecordio._default_crc32c_fn(b"")  # pylint: disable=protected-access
    function = tfrecordio._default_crc32c_fn.fn  # pylint: disable=protected-access
  return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"


def bench_example_gen(key: str, method: str, data_dir: str, run_dir: str,
                      config: PipelineConfig, beam_args: Sequence[str],
                      fast_checksum: bool = True) -> Tuple[Result, Dict[str, ChosenTiles]]:
  """The SlideExampleGen alone in a TFX pipeline under LocalDagRunner."""
  from tfx import v1 as tfx  # pylint: disable=import-outside-toplevel (seconds to import)
  from histopipe.components.slide_example_gen.component import (SlideExampleGen)  # pylint: disable=import-outside-toplevel
  from histopipe.core.library_logs import logging_to  # pylint: disable=import-outside-toplevel
  shutil.rmtree(run_dir, ignore_errors=True)
  os.makedirs(run_dir)
  dag = tfx.dsl.Pipeline(
      pipeline_name="bench-tiling", pipeline_root=os.path.join(run_dir, "pipeline_root"),
      components=[SlideExampleGen(input_base=data_dir, config=config)], enable_cache=False,
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
          os.path.join(run_dir, "metadata.sqlite")),
      beam_pipeline_args=list(beam_args))
  checksum = contextlib.nullcontext() if fast_checksum else beams_own_checksum()
  with logging_to(os.path.join(run_dir, "run.log")), checksum:
    start = time.perf_counter()
    tfx.orchestration.LocalDagRunner().run(dag)
    seconds = time.perf_counter() - start
  files = sorted(tf.io.gfile.glob(os.path.join(
      run_dir, "pipeline_root", "SlideExampleGen", "examples", "*", "Split-*", "*")))
  bags = read_bag_files(files)
  tissue_values = [t for bag in bags.values() for t in bag.tissue]
  return Result(key, method, seconds, len(bags), sum(len(b.xy) for b in bags.values()),
                tissue=float(np.mean(tissue_values)) if tissue_values else None,
                notes=" ".join(beam_args)), bags


def same_tiles(bags: Dict[str, ChosenTiles], reference: Dict[str, ChosenTiles]) -> bool:
  return {k: v.xy for k, v in bags.items()} == {k: v.xy for k, v in reference.items()}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def throughput_ratios(results: Dict[str, Result]) -> Dict[str, float]:
  """slides/s of the first over slides/s of the second (= time ratio inverted)."""
  pairs = {"(a)/(b)": ("a", "b"), "(a)/(b1)": ("a", "b1"), "(a)/(c)": ("a", "c"),
           "(a)/(c2)": ("a", "c2"), "(a)/(c3)": ("a", "c3"), "(d)/(c3)": ("d", "c3"),
           "(d)/(d1)": ("d", "d1"), "(d)/(a)": ("d", "a"), "(e)/(c)": ("e", "c"),
           "(f)/(a)": ("f", "a"), "(f)/(f2)": ("f", "f2")}
  return {name: results[x].slides_per_s / results[y].slides_per_s
          for name, (x, y) in pairs.items() if x in results and y in results}


def markdown_table(results: Dict[str, Result], ratios: Dict[str, float],
                   context: Dict[str, object]) -> str:
  fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
  lines = [
      f"Tiling {context['slides']} synthetic PANDA-size slides ({context['copies_note']}) "
      f"({context['level0']} px at level 0, levels 1/4/16, JPEG tiled TIFF) with the `full` "
      f"config ({context['tiles_per_slide']} tiles of {context['tile_size']} px from level "
      f"{context['level']}, {context['tile_format'].upper()}), {context['cpus']} CPU cores "
      f"({context['cpus_busy_elsewhere'][0]:.2f} / {context['cpus_busy_elsewhere'][1]:.2f} "
      "kept busy by other processes before / after), warm page cache, one run each:",
      "",
      "| | method | time (s) | slides/s | tiles/s | TIFF tiles decoded / slide "
      "| tissue in chosen tiles |",
      "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for key, r in results.items():
    lines.append(f"| ({key}) | {r.method} | {r.seconds:.2f} | {r.slides_per_s:.2f} | "
                 f"{r.tiles_per_s:.0f} | {fmt(r.decoded_per_slide, '.0f')} | "
                 f"{fmt(r.tissue, '.2f')} |")
  lines += ["", "| throughput ratio (slides/s ÷ slides/s) | value |", "| --- | ---: |"]
  lines += [f"| {name} | {value:.2f} |" for name, value in ratios.items()]
  return "\n".join(lines)


def environment() -> Dict[str, object]:
  return {"python": platform.python_version(), "machine": platform.machine(),
          "cpus": os.cpu_count(), "numpy": np.__version__, "tifffile": tifffile.__version__,
          "opencv": cv2.__version__, "apache_beam": beam.__version__,
          "tensorflow": tf.__version__}


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--slides", type=int, default=4, help="number of slides (default 4)")
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                      help=f"slide cache, job outputs and results (default {DEFAULT_WORKDIR})")
  parser.add_argument("--width", type=int, default=25000, help="level-0 width (multiple of 4)")
  parser.add_argument("--height", type=int, default=15000, help="level-0 height (multiple of 4)")
  parser.add_argument("--copies", type=int, default=1,
                      help="list each drawn slide this many times (default 1)")
  parser.add_argument("--tile-format", choices=["jpeg", "png"],
                      default=full_config().tiling.tile_format,
                      help="tile encoding (default: the full preset's, "
                      f"{full_config().tiling.tile_format})")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--skip-multiprocess", action="store_true",
                      help="leave out (d), the 2-worker Beam run")
  parser.add_argument("--sizes", default="",
                      help="comma-separated slide counts: (f) in-memory vs the full preset's "
                      "multi-processing on the first N slides, for the break-even")
  args = parser.parse_args(argv)
  if args.slides < 1 or args.copies < 1:
    parser.error("--slides and --copies must be >= 1")
  try:
    args.sizes = [int(n) for n in args.sizes.split(",") if n.strip()]
  except ValueError:
    parser.error(f"--sizes: not a list of integers: {args.sizes}")
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
  os.makedirs(args.workdir, exist_ok=True)
  total_start = time.perf_counter()

  drawn = cached_slides(args.workdir, args.slides, args.seed, args.width, args.height, log)
  slides = with_copies(drawn, args.copies)
  data_dir = make_data_dir(args.workdir, slides)
  paths = [s.path for s in slides]
  paths_by_id = {s.image_id: s.path for s in slides}
  config = full_config()
  config = dataclasses.replace(config, tiling=dataclasses.replace(
      config.tiling, tile_format=args.tile_format))
  tiling = config.tiling
  generation_seconds = time.perf_counter() - total_start

  warm_up_beam()
  busy_before = cpus_busy_elsewhere()
  if busy_before > 0.25:
    log(f"WARNING: other processes keep {busy_before:.2f} CPUs busy; they compete with "
        "the timings")
  results: Dict[str, Result] = {}
  log("(a) run_tile_job, in-memory, 1 worker")
  results["a"], bags = bench_tile_job(
      "a", "`run_tile_job`, Beam in-memory, 1 worker", data_dir,
      os.path.join(args.workdir, "out_1_worker"), config, BEAM_ONE_WORKER)
  log("(b) Kaggle baseline: whole level decode, darkest tiles")
  level, _ = pipeline_level(paths[0], tiling)  # the bench's slides share one layout
  results["b"] = bench_kaggle("b", f"Kaggle notebook: whole level {level} decoded, darkest tiles",
                              paths, tiling, level, maxworkers=None)
  results["b1"] = bench_kaggle("b1", "same, tifffile decode on 1 thread", paths, tiling, level,
                               maxworkers=1)
  log("(c) floor: read_region on (a)'s tiles only")
  results["c"] = bench_floor("c", "floor: decode only the TIFF tiles under (a)'s tiles",
                             paths_by_id, bags)
  results["c2"] = bench_floor_and_encode(
      "c2", "(c) and encoding each tile as (a) does", paths_by_id, bags, tiling)
  log("(c3) the necessary work alone, one thread: mask, choice, decode, encode")
  results["c3"], bags_c3 = bench_necessary_work(
      "c3", "necessary work alone, one thread: lowest level decoded, mask, choice, "
      "TIFF tiles under the chosen tiles decoded, encoded", paths_by_id, tiling, bags)
  if not same_tiles(bags_c3, bags):
    log("WARNING: (c3) chose other tiles than (a)")
  if not args.skip_multiprocess:
    for key, method, beam_args in (
        ("d1", "`run_tile_job`, Beam multi-processing, 1 worker", BEAM_ONE_WORKER_PROCESS),
        ("d", "`run_tile_job`, Beam multi-processing, 2 workers", BEAM_TWO_WORKERS)):
      log(f"({key}) {method}")
      results[key], bags_multi = bench_tile_job(
          key, method, data_dir, os.path.join(args.workdir, f"out_{key}"), config, beam_args)
      if {k: v.xy for k, v in bags_multi.items()} != {k: v.xy for k, v in bags.items()}:
        log(f"WARNING: ({key}) chose other tiles than (a)")
  log("(f) SlideExampleGen in a TFX pipeline (LocalDagRunner), in-memory, 1 worker")
  crc32c_default = beam_crc32c_name()
  results["f"], bags_f = bench_example_gen(
      "f", "SlideExampleGen in a TFX pipeline (`LocalDagRunner`), Beam in-memory, 1 worker",
      data_dir, os.path.join(args.workdir, "pipeline_f"), config, BEAM_ONE_WORKER)
  if not same_tiles(bags_f, bags):
    log("WARNING: (f) chose other tiles than (a)")
  log("(f2) the same with Beam's own TFRecord checksum (crcmod)")
  results["f2"], _ = bench_example_gen(
      "f2", "(f) with Beam's own TFRecord checksum (crcmod)", data_dir,
      os.path.join(args.workdir, "pipeline_f2"), config, BEAM_ONE_WORKER,
      fast_checksum=False)
  break_even = []
  for size in args.sizes:
    subset_dir = make_data_dir(args.workdir, slides[:size])
    row = {"slides": size}
    for name, beam_args in (("in_memory_1", BEAM_ONE_WORKER), ("full_preset", BEAM_FULL_PRESET)):
      log(f"break-even: {size} slides, {name} ({' '.join(beam_args)})")
      result, _ = bench_example_gen(
          f"f@{size}", name, subset_dir, os.path.join(args.workdir, "pipeline_sizes"), config,
          beam_args)
      row[name] = result.slides_per_s
    row["ratio"] = row["full_preset"] / row["in_memory_1"]
    break_even.append(row)
  log("(e) tile_slide loop, no Beam")
  results["e"] = bench_plain_loop("e", "`tile_slide` in a plain loop (no Beam, no writing)",
                                  paths, tiling)
  # (a), (d) and (f) run tile_slide per slide, so they decode what (e) decodes.
  for key in ("a", "d1", "d", "f", "f2"):
    if key in results:
      results[key].decoded_per_slide = results["e"].decoded_per_slide

  ratios = throughput_ratios(results)
  copies_note = (f"{len(drawn)} drawn, each listed {args.copies} times" if args.copies > 1
                 else "each a distinct file")
  context = {"slides": len(slides), "drawn": len(drawn), "copies": args.copies,
             "copies_note": copies_note, "level0": f"{args.width} x {args.height}",
             "tiles_per_slide": tiling.tiles_per_slide, "tile_size": tiling.tile_size,
             "level": level, "tile_format": tiling.tile_format,
             "cpus": os.cpu_count(),
             "cpus_busy_elsewhere": [round(busy_before, 2), round(cpus_busy_elsewhere(), 2)]}
  table = markdown_table(results, ratios, context)
  bytes_written = sum(os.path.getsize(f) for f in tf.io.gfile.glob(os.path.join(
      args.workdir, "pipeline_f", "pipeline_root", "SlideExampleGen", "examples", "*",
      "Split-*", "*")))
  table += (f"\n\nBeam's own TFRecord checksum here: {crc32c_default}; (f) wrote "
            f"{bytes_written / 1e6:.0f} MB of bags.")
  if break_even:
    table += ("\n\n| slides | (f) in-memory, 1 worker (slides/s) | (f) `full` preset's "
              f"runner: {' '.join(BEAM_FULL_PRESET)} (slides/s) | ratio |\n"
              "| ---: | ---: | ---: | ---: |\n" + "\n".join(
                  f"| {r['slides']} | {r['in_memory_1']:.2f} | {r['full_preset']:.2f} | "
                  f"{r['ratio']:.2f} |" for r in break_even))
  total_seconds = time.perf_counter() - total_start
  report = {
      "context": context, "environment": environment(),
      "slides": [dataclasses.asdict(s) for s in drawn],
      "slide_bytes": {s.image_id: os.path.getsize(s.path) for s in drawn},
      "results": {k: r.to_dict() for k, r in results.items()},
      "ratios": ratios, "markdown": table, "break_even": break_even,
      "crc32c": crc32c_default,
      "generation_seconds": round(generation_seconds, 2),
      "total_seconds": round(total_seconds, 2),
  }
  results_path = os.path.join(args.workdir, RESULTS_FILE)
  with open(results_path, "w") as f:
    json.dump(report, f, indent=2)
  print(table)
  print(f"\nslide generation/cache: {generation_seconds:.1f} s; total: {total_seconds:.1f} s; "
        f"results: {results_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
