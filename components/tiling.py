"""Cuts one slide into a bag: tissue mask, tile grid, best N tiles, encoding.

The same function serves the SlideExampleGen and clients that tile slides
themselves, so training and serving see identical tiles.
"""

from __future__ import annotations

from typing import List

import cv2
import numpy as np

from components import tissue
from components.bag_features import SlideBag
from components.slide_reader import SlideError, TiffSlide
from pipeline.configs import TilingConfig


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


def tile_slide(path: str, tiling: TilingConfig) -> SlideBag:
  """The bag of one slide; raises SlideError with the reason when unusable."""
  with TiffSlide(path) as slide:
    if tiling.level >= len(slide.levels):
      raise SlideError(path, f"slide has {len(slide.levels)} level(s); the "
                       f"config asks for level {tiling.level}")
    level = slide.levels[tiling.level]
    if level.width < tiling.tile_size or level.height < tiling.tile_size:
      raise SlideError(path, f"level {level.index} is {level.width}x"
                       f"{level.height} px, smaller than one "
                       f"{tiling.tile_size} px tile")
    thumbnail = slide.read_level(len(slide.levels) - 1)
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
    return SlideBag(
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
