"""Tissue detection and tile scoring: pure functions on small arrays."""

from __future__ import annotations

import dataclasses
from typing import List

import cv2
import numpy as np

# Saturation below this is glass or dust whatever Otsu says; protects slides
# that are nearly all background, where Otsu splits noise.
MIN_TISSUE_SATURATION = 15
# Pixels brighter than this in every channel are background (white glass).
WHITE_LEVEL = 220


def tissue_mask(thumbnail_rgb: np.ndarray, min_object_fraction: float = 0.0005
                ) -> np.ndarray:
  """Boolean tissue mask: Otsu on HSV saturation, minus white, cleaned up.

  Objects smaller than `min_object_fraction` of the image (dust, pen specks)
  are removed.
  """
  if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3:
    raise ValueError("thumbnail must be RGB [h, w, 3]")
  saturation = cv2.cvtColor(thumbnail_rgb, cv2.COLOR_RGB2HSV)[..., 1]
  otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
  threshold = max(otsu, MIN_TISSUE_SATURATION)
  not_white = (thumbnail_rgb < WHITE_LEVEL).any(axis=-1)
  mask = ((saturation > threshold) & not_white).astype(np.uint8)
  kernel = np.ones((3, 3), np.uint8)
  mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
  mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  min_area = min_object_fraction * mask.size
  keep = np.zeros(count, bool)
  keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
  return keep[labels]


def tile_tissue_fractions(mask: np.ndarray, level_width: int, level_height: int,
                          tile_size: int) -> np.ndarray:
  """Tissue fraction of each tile of a grid over a level, from a mask.

  The grid covers the level with `tile_size` tiles from (0, 0); a partial last
  row/column is included (its outside is counted as background). Returns a
  float array [rows, cols]. The mask may be at any lower resolution: tile
  rectangles are mapped onto it and averaged with an integral image.
  """
  rows = -(-level_height // tile_size)
  cols = -(-level_width // tile_size)
  scale_y = mask.shape[0] / level_height
  scale_x = mask.shape[1] / level_width
  integral = cv2.integral(mask.astype(np.uint8))  # [h+1, w+1]

  def edges(count, scale, limit):
    e = np.round(np.arange(count + 1) * tile_size * scale).astype(int)
    return np.clip(e, 0, limit)

  ys = edges(rows, scale_y, mask.shape[0])
  xs = edges(cols, scale_x, mask.shape[1])
  y0, y1 = ys[:-1, None], ys[1:, None]
  x0, x1 = xs[None, :-1], xs[None, 1:]
  tissue = (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] +
            integral[y0, x0]).astype(np.float64)
  # Divide by the full tile's footprint, so a tile hanging off the slide edge
  # is penalised for its missing part.
  full_area = (tile_size * scale_y) * (tile_size * scale_x)
  return np.clip(tissue / max(full_area, 1e-9), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class TileChoice:
  row: int
  col: int
  tissue_fraction: float


def select_tiles(fractions: np.ndarray, tiles_per_slide: int,
                 min_tissue_fraction: float) -> List[TileChoice]:
  """The `tiles_per_slide` tiles with most tissue, at least the minimum.

  Ties are broken by grid position (row, then column) so the choice is
  deterministic.
  """
  rows, cols = np.nonzero(fractions >= min_tissue_fraction)
  values = fractions[rows, cols]
  order = np.lexsort((cols, rows, -values))[:tiles_per_slide]
  return [TileChoice(int(rows[i]), int(cols[i]), float(values[i])) for i in order]
