"""Cuts one slide into a bag: tissue mask, tile grid, best N tiles, encoding.

The same function serves the SlideExampleGen and clients that tile slides
themselves, so training and serving see identical tiles. It returns data
only: the bag, and the thumbnail the tissue mask was computed on, so a caller
that draws the slide (previews, attention heatmaps) need not open it again.
"""

from __future__ import annotations

import logging
import math
from typing import List, NamedTuple

import cv2
import numpy as np

from histopipe.components import tissue
from histopipe.components.bag_features import SlideBag
from histopipe.components.slide_reader import Level, SlideError, TiffSlide, open_slide
from histopipe.core import storage
from histopipe.core.configs import TilingConfig


# Long side of the thumbnail the tissue mask is computed on: a 256 px tile at
# downsample 4 of a 25k px slide still spans ~40 mask pixels a side.
THUMBNAIL_MAX_SIDE = 1024


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


def choose_level(slide, tiling: TilingConfig) -> Level:
  """The level to cut tiles from (see TilingConfig for the order of rules)."""

  def nearest(value_of_level, target: float) -> Level:
    return min(slide.levels, key=lambda l: abs(math.log(value_of_level(l) / target)))

  if tiling.target_mpp > 0 and slide.mpp > 0:
    return nearest(lambda l: slide.mpp * l.downsample, tiling.target_mpp)
  if tiling.target_mpp > 0:
    logging.warning("%s: no plausible MPP in the file; choosing the level by "
                    "downsample/index instead of %.2f um/px", slide.path, tiling.target_mpp)
  if tiling.level_downsample > 0:
    return nearest(lambda l: l.downsample, tiling.level_downsample)
  if tiling.level >= len(slide.levels):
    raise SlideError(slide.path, f"slide has {len(slide.levels)} level(s); the config "
                     f"asks for level {tiling.level} (set level_downsample or "
                     "target_mpp to choose by scale)")
  return slide.levels[tiling.level]


class TiledSlide(NamedTuple):
  """A slide's bag, and the thumbnail its tissue mask was computed on."""
  bag: SlideBag
  thumbnail: np.ndarray  # RGB; a patch's own pixels
  thumbnail_downsample: float  # level-0 pixels per thumbnail pixel


def tile_slide(path: str, tiling: TilingConfig) -> TiledSlide:
  """The bag of one slide; raises SlideError with the reason when unusable."""
  with open_slide(path, tiling.reader, tiling.max_segment_bytes) as slide:
    level = choose_level(slide, tiling)
    if level.width < tiling.tile_size or level.height < tiling.tile_size:
      raise SlideError(path, f"level {level.index} is {level.width}x"
                       f"{level.height} px, smaller than one "
                       f"{tiling.tile_size} px tile")
    thumbnail, thumbnail_downsample = slide.thumbnail(max_side=THUMBNAIL_MAX_SIDE)
    mask = tissue.tissue_mask(thumbnail)
    if not mask.any():
      raise SlideError(path, "no tissue found")
    fractions = tissue.tile_tissue_fractions(mask, level.width, level.height,
                                             tiling.tile_size)
    chosen = tissue.select_tiles(fractions, tiling.tiles_per_slide,
                                 tiling.min_tissue_fraction)
    if not chosen:
      raise SlideError(path, f"no tile has tissue fraction >= "
                       f"{tiling.min_tissue_fraction}")
    out_size = tiling.resize_to or tiling.tile_size
    tiles: List[bytes] = []
    xs, ys = [], []
    for choice in chosen:
      x, y = choice.col * tiling.tile_size, choice.row * tiling.tile_size
      pixels = slide.read_region(level.index, x, y, tiling.tile_size, tiling.tile_size)
      if out_size != tiling.tile_size:
        pixels = cv2.resize(pixels, (out_size, out_size), interpolation=cv2.INTER_AREA)
      tiles.append(encode_tile(pixels, tiling))
      xs.append(int(round(x * level.downsample)))
      ys.append(int(round(y * level.downsample)))
    padding = tiling.tiles_per_slide - len(chosen)
    white = encode_tile(np.full((out_size, out_size, 3), 255, np.uint8), tiling)
    bag = SlideBag(
        tiles=tiles + [white] * padding,
        tile_valid=[1] * len(chosen) + [0] * padding,
        tile_x=xs + [-1] * padding,
        tile_y=ys + [-1] * padding,
        tile_tissue=[c.tissue_fraction for c in chosen] + [0.0] * padding,
        level=level.index,
        level_downsample=level.downsample,
        tile_size=tiling.tile_size,
        mpp=slide.mpp,
        slide_width=slide.levels[0].width,
        slide_height=slide.levels[0].height,
    )
  return TiledSlide(bag, thumbnail, thumbnail_downsample)


def _read_patch(path: str, tiling: TilingConfig) -> np.ndarray:
  """A small RGB image: TIFF through the slide reader, anything else via OpenCV."""
  if path.lower().endswith((".tif", ".tiff")):
    with TiffSlide(path, tiling.max_segment_bytes) as slide:
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
  bag = SlideBag(tiles=[encode_tile(pixels, tiling)], tile_valid=[1], tile_x=[tile_x],
                 tile_y=[tile_y], tile_tissue=[1.0], level=0, level_downsample=1.0,
                 tile_size=max(height, width), mpp=0.0, slide_width=width,
                 slide_height=height)
  return TiledSlide(bag, original, 1.0)


def cut_bag(path: str, kind: str, tiling: TilingConfig, tile_x: int = 0,
            tile_y: int = 0) -> TiledSlide:
  """The bag of one input item: a slide is tiled, a patch is its own one tile.
  SlideExampleGen, `histopipe predict`, `score` and `explain` all cut bags here."""
  if kind == "patch":
    return tile_patch(path, tiling, tile_x, tile_y)
  return tile_slide(path, tiling)
