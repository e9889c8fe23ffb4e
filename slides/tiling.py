"""Cuts one slide into a bag: tissue mask, tile grid, best N tiles, encoding
(or a lossless cut of the slide's own JPEG, `jpeg_crop`, where the tile allows).

The same function serves the SlideExampleGen and clients that tile slides
themselves, so training and serving see identical tiles. It returns data
only: the bag, and the thumbnail the tissue mask was computed on, so a caller
that draws the slide (previews, attention heatmaps) need not open it again.
"""

from __future__ import annotations

from typing import List, NamedTuple

import cv2
import numpy as np

from histopipe.slides import bag_statistics
from histopipe.slides import tissue
from histopipe.bags.bag_features import SlideBag
from histopipe.slides.base import Level, SlideError
from histopipe.slides.limits import ReadLimits
from histopipe.slides.slide_reader import open_slide
from histopipe.slides.tiff_reader import TiffSlide
from histopipe.core import storage
from histopipe.core.configs import TilingConfig


# Long side of the thumbnail the tissue mask is computed on: a 256 px tile at
# downsample 4 of a 25k px slide still spans ~40 mask pixels a side.
THUMBNAIL_MAX_SIDE = 1024
# Mask pixels a tile spans at least, where the slide has a level fine enough:
# a coarser mask calls a tile tissue for its neighbours' sake.
MASK_PIXELS_PER_TILE = 4


def encode_tile(tile_rgb: np.ndarray, tiling: TilingConfig) -> bytes:
  bgr = cv2.cvtColor(tile_rgb, cv2.COLOR_RGB2BGR)
  if tiling.tile_format == "png":
    ok, buf = cv2.imencode(".png", bgr)
  elif tiling.tile_format == "jpeg":
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, tiling.jpeg_quality])
  else:
    raise ValueError(f"tile_format must be png or jpeg, got {tiling.tile_format!r}")
  if not ok:
    raise RuntimeError("tile encoding failed")
  return buf.tobytes()


def decode_tile(encoded: bytes) -> np.ndarray:
  """An encoded tile's RGB pixels, as `encode_tile` took them."""
  bgr = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
  if bgr is None:
    raise RuntimeError("tile decoding failed")
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class TileScale(NamedTuple):
  """Where tiles are cut: a level, and how many level-0 pixels a tile pixel
  spans. `read_factor` > 1: a tile is read as `read_factor` times as many
  pixels of the level and shrunk (the level is finer than the scale asked)."""
  level: Level
  downsample: float

  @property
  def read_factor(self) -> float:
    return self.downsample / self.level.downsample


def choose_scale(slide, tiling: TilingConfig) -> TileScale:
  """The level and scale tiles are cut at (see TilingConfig for the rules).

  The scale asked for is `target_mpp` when the slide states a plausible MPP,
  else `level_downsample`. The coarsest level no coarser than the scale
  (within `scale_tolerance`) is read; if it is within the tolerance it is cut
  as it is, else its tiles are read larger and shrunk to the scale. A scale
  finer than level 0 cuts level 0 as it is: shrinking can not add detail.
  """
  if tiling.level >= 0:
    if tiling.level >= len(slide.levels):
      raise SlideError(slide.path, f"slide has {len(slide.levels)} level(s); the config "
                       f"asks for level {tiling.level} (set tiling.level to -1 to choose "
                       "the level by scale)")
    level = slide.levels[tiling.level]
    return TileScale(level, level.downsample)
  if tiling.target_mpp > 0 and slide.mpp > 0:
    downsample = tiling.target_mpp / slide.mpp
  elif tiling.level_downsample > 0:
    downsample = tiling.level_downsample
  else:
    raise SlideError(slide.path, "no scale to tile at: the slide states no MPP and "
                     "tiling.level_downsample is 0")
  tolerance = max(tiling.scale_tolerance, 1.0)
  finer = [l for l in slide.levels if l.downsample <= downsample * tolerance]
  if not finer:
    return TileScale(slide.levels[0], slide.levels[0].downsample)
  level = max(finer, key=lambda l: l.downsample)
  if level.downsample * tolerance >= downsample:
    return TileScale(level, level.downsample)
  return TileScale(level, downsample)


class TiledSlide(NamedTuple):
  """A slide's bag, and the thumbnail its tissue mask was computed on."""
  bag: SlideBag
  thumbnail: np.ndarray  # RGB; a patch's own pixels
  thumbnail_downsample: float  # level-0 pixels per thumbnail pixel
  # Tissue tiles left out by tiling.max_tiles (every-tile bags only).
  tiles_over_cap: int = 0


# Every-tile bags (tiles_per_slide 0) take their image statistics from at most
# this many tiles, those with most tissue: the statistics are means, and
# holding the pixels of 4,096 tiles for them would take 800 MB a slide.
STATISTICS_TILES = 64


def read_limits(tiling: TilingConfig) -> ReadLimits:
  """The reader's budgets for one slide, its clock started now."""
  return ReadLimits(max_segment_bytes=tiling.max_segment_bytes,
                    max_level_pixels=tiling.max_level_pixels,
                    max_seconds=tiling.max_seconds_per_slide)


def read_tile(slide, scale: TileScale, x: int, y: int, tile_size: int) -> np.ndarray:
  """The tile at (x, y) in pixels of `scale`, `tile_size` px a side."""
  if scale.read_factor == 1.0:
    return slide.read_region(scale.level.index, x, y, tile_size, tile_size)
  # The same footprint for every tile: a tile is `side` level pixels, shrunk.
  factor = scale.read_factor
  side = int(round(tile_size * factor))
  region = slide.read_region(scale.level.index, int(round(x * factor)), int(round(y * factor)),
                             side, side)
  return cv2.resize(region, (tile_size, tile_size), interpolation=cv2.INTER_AREA)


def _read_defect(slide, level: Level) -> str:
  """Why the pixels of `level` cannot be read, "" when they can. A slide too small to
  tile is rejected before any pixel is decoded; its defect (a corrupt JPEG, an unknown
  compression) would stay hidden behind the size, so its few pixels are read to find it."""
  try:
    slide.read_level(level.index)
  except SlideError as e:
    return e.reason
  return ""


def tile_slide(path: str, tiling: TilingConfig) -> TiledSlide:
  """The bag of one slide; raises SlideError with the reason when unusable."""
  limits = read_limits(tiling)
  with open_slide(path, tiling.reader, limits) as slide:
    scale = choose_scale(slide, tiling)
    # The grid of tiles covers the slide at the tiling scale: the level's own
    # size when it is cut as it is.
    grid_width, grid_height = scale.level.width, scale.level.height
    if scale.read_factor != 1.0:
      grid_width = int(slide.levels[0].width / scale.downsample)
      grid_height = int(slide.levels[0].height / scale.downsample)
    if grid_width < tiling.tile_size or grid_height < tiling.tile_size:
      too_small = (f"the slide is {grid_width}x{grid_height} px at downsample "
                   f"{scale.downsample:.3g}, smaller than one {tiling.tile_size} px tile")
      defect = _read_defect(slide, scale.level)
      raise SlideError(path, f"{too_small}, and {defect}" if defect else too_small)
    thumbnail, thumbnail_downsample = slide.thumbnail(
        max_side=THUMBNAIL_MAX_SIDE,
        max_downsample=tiling.tile_size * scale.downsample / MASK_PIXELS_PER_TILE)
    mask = tissue.tissue_mask(thumbnail)
    if not mask.any():
      raise SlideError(path, "no tissue found")
    fractions = tissue.tile_tissue_fractions(mask, grid_width, grid_height,
                                             tiling.tile_size)
    every_tile = tiling.tiles_per_slide == 0
    chosen = tissue.select_tiles(fractions, None if every_tile else tiling.tiles_per_slide,
                                 tiling.min_tissue_fraction)
    tiles_over_cap = max(0, len(chosen) - tiling.max_tiles) if every_tile else 0
    chosen = chosen[:len(chosen) - tiles_over_cap]
    if not chosen:
      raise SlideError(path, f"no tile has tissue fraction >= "
                       f"{tiling.min_tissue_fraction}")
    out_size = tiling.resize_to or tiling.tile_size
    lossless = (tiling.lossless_jpeg_crop and tiling.tile_format == "jpeg"
                and out_size == tiling.tile_size and scale.read_factor == 1.0)
    tiles: List[bytes] = []
    pixels_of_tiles: List[np.ndarray] = []
    xs, ys = [], []
    size = tiling.tile_size
    cuts = (slide.read_regions_jpeg(scale.level.index, [
        (c.col * size, c.row * size, size, size) for c in chosen]) if lossless
            else [None] * len(chosen))
    for choice, encoded in zip(chosen, cuts):
      limits.check_time(path)  # tiles read from cached segments decode nothing
      x, y = choice.col * size, choice.row * size
      wants_pixels = not every_tile or len(pixels_of_tiles) < STATISTICS_TILES
      if encoded is not None:
        pixels = decode_tile(encoded) if wants_pixels else None
      else:
        pixels = read_tile(slide, scale, x, y, size)
        if out_size != size:
          pixels = cv2.resize(pixels, (out_size, out_size), interpolation=cv2.INTER_AREA)
        encoded = encode_tile(pixels, tiling)
      tiles.append(encoded)
      if wants_pixels:
        pixels_of_tiles.append(pixels)
      xs.append(int(round(x * scale.downsample)))
      ys.append(int(round(y * scale.downsample)))
    padding = 0 if every_tile else tiling.tiles_per_slide - len(chosen)
    white = encode_tile(np.full((out_size, out_size, 3), 255, np.uint8), tiling)
    bag = SlideBag(
        tiles=tiles + [white] * padding,
        tile_valid=[1] * len(chosen) + [0] * padding,
        tile_x=xs + [-1] * padding,
        tile_y=ys + [-1] * padding,
        tile_tissue=[c.tissue_fraction for c in chosen] + [0.0] * padding,
        level=scale.level.index,
        level_downsample=scale.downsample,
        tile_size=tiling.tile_size,
        mpp=slide.mpp,
        slide_width=slide.levels[0].width,
        slide_height=slide.levels[0].height,
        image_stats=bag_statistics.image_statistics(
            pixels_of_tiles, tiles[:len(pixels_of_tiles)],
            [c.tissue_fraction for c in chosen[:len(pixels_of_tiles)]]),
    )
  return TiledSlide(bag, thumbnail, thumbnail_downsample, tiles_over_cap)


def _read_patch(path: str, tiling: TilingConfig) -> np.ndarray:
  """A small RGB image: TIFF through the slide reader, anything else via OpenCV."""
  if path.lower().endswith((".tif", ".tiff")):
    with TiffSlide(path, read_limits(tiling)) as slide:
      return slide.read_level(0)
  data = np.frombuffer(storage.read_bytes(path), np.uint8)
  if data.size == 0:
    raise SlideError(path, "empty file")
  image = cv2.imdecode(data, cv2.IMREAD_COLOR)
  if image is None:
    raise SlideError(path, "not a readable image")
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def tile_patch(path: str, tiling: TilingConfig, tile_x: int = 0, tile_y: int = 0) -> TiledSlide:
  """A patch dataset item (PCam, IDC): the whole image is the bag's one tile.

  Patches were cut around tissue by the dataset's authors, so no tissue
  check; `tile_x`/`tile_y` are the patch's position in its slide when known.
  """
  if not storage.exists(path):
    raise SlideError(path, "file not found")
  original = _read_patch(path, tiling)
  height, width = original.shape[:2]
  pixels = original
  if tiling.resize_to:
    pixels = cv2.resize(pixels, (tiling.resize_to, tiling.resize_to),
                        interpolation=cv2.INTER_AREA)
  encoded = encode_tile(pixels, tiling)
  bag = SlideBag(tiles=[encoded], tile_valid=[1], tile_x=[tile_x],
                 tile_y=[tile_y], tile_tissue=[1.0], level=0, level_downsample=1.0,
                 tile_size=max(height, width), mpp=0.0, slide_width=width,
                 slide_height=height,
                 image_stats=bag_statistics.image_statistics([pixels], [encoded], [1.0]))
  return TiledSlide(bag, original, 1.0)


def cut_bag(path: str, kind: str, tiling: TilingConfig, tile_x: int = 0,
            tile_y: int = 0) -> TiledSlide:
  """The bag of one input item: a slide is tiled, a patch is its own one tile.
  SlideExampleGen, `histopipe predict`, `score` and `explain` all cut bags here."""
  if kind == "patch":
    return tile_patch(path, tiling, tile_x, tile_y)
  return tile_slide(path, tiling)
