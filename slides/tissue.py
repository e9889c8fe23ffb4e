"""Tissue detection and tile scoring: pure functions on small arrays."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import cv2
import numpy as np

# Saturation below this is glass or dust whatever Otsu says; protects slides
# that are nearly all background, where Otsu splits noise.
MIN_TISSUE_SATURATION = 15
# Pixels brighter than this in every channel are background (white glass).
WHITE_LEVEL = 220
# A brightfield slide whose non-white pixels are this unsaturated (90th
# percentile) is grayscale or faded (IHC counterstain, old H&E): its tissue is
# found by darkness too, not by colour alone.
LOW_SATURATION = 40
# In a low-saturation slide, tissue is at least this much darker than the
# glass (the 99th percentile of gray). Not Otsu: its split falls between
# nuclei and the rest of the tissue, not between tissue and glass.
MIN_TISSUE_DARKNESS = 10
# A slide whose median pixel (brightest channel) is darker than this has a
# dark background: fluorescence (DAPI, immunofluorescence), where tissue is
# what shines.
DARK_BACKGROUND_LEVEL = 50
# In fluorescence, tissue is at least this much brighter than the background
# (the median), whatever Otsu says.
MIN_FLUORESCENCE_SIGNAL = 15


def _otsu(values: np.ndarray) -> float:
  threshold, _ = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
  return float(threshold)


def _brightest_channel(rgb: np.ndarray) -> np.ndarray:
  # OpenCV per channel: numpy's max over the last axis is 10x slower.
  red, green, blue = cv2.split(rgb)
  return cv2.max(cv2.max(red, green), blue)


def _darkest_channel(rgb: np.ndarray) -> np.ndarray:
  red, green, blue = cv2.split(rgb)
  return cv2.min(cv2.min(red, green), blue)


def _percentile(values: np.ndarray, percent: float, where: Optional[np.ndarray] = None) -> int:
  """A percentile of uint8 `values` (optionally only `where` is true), from
  their histogram: a sort of a million pixels costs 5x more."""
  mask = None if where is None else where.astype(np.uint8)
  counts = cv2.calcHist([values], [0], mask, [256], [0, 256]).ravel().cumsum()
  if counts[-1] == 0:
    return 0
  return int(np.searchsorted(counts, counts[-1] * percent / 100.0))


def is_fluorescence(thumbnail_rgb: np.ndarray) -> bool:
  """Dark background, bright tissue: most pixels are dark in every channel."""
  return _percentile(_brightest_channel(thumbnail_rgb), 50) < DARK_BACKGROUND_LEVEL


def tissue_mask(thumbnail_rgb: np.ndarray, min_object_fraction: float = 0.0005
                ) -> np.ndarray:
  """Boolean tissue mask of a thumbnail, cleaned up.

  Brightfield (H&E, IHC): Otsu on HSV saturation, minus white; when even the
  non-white pixels are barely saturated (grayscale, faded stains), pixels
  MIN_TISSUE_DARKNESS darker than the glass count too. Fluorescence (dark
  background): Otsu on the brightest channel. Objects smaller than
  `min_object_fraction` of the image (dust, pen specks) are removed.
  """
  if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3:
    raise ValueError("thumbnail must be RGB [h, w, 3]")
  if is_fluorescence(thumbnail_rgb):
    signal = _brightest_channel(thumbnail_rgb)
    floor = _percentile(signal, 50) + MIN_FLUORESCENCE_SIGNAL
    mask = signal > max(_otsu(signal), floor)
  else:
    saturation = cv2.cvtColor(thumbnail_rgb, cv2.COLOR_RGB2HSV)[..., 1]
    not_white = _darkest_channel(thumbnail_rgb) < WHITE_LEVEL
    mask = (saturation > max(_otsu(saturation), MIN_TISSUE_SATURATION)) & not_white
    if not not_white.any() or _percentile(saturation, 90, not_white) < LOW_SATURATION:
      # Faded tissue can be paler than WHITE_LEVEL: darker than the glass is the test.
      gray = cv2.cvtColor(thumbnail_rgb, cv2.COLOR_RGB2GRAY)
      mask |= gray < _percentile(gray, 99) - MIN_TISSUE_DARKNESS
  mask = mask.astype(np.uint8)
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


def select_tiles(fractions: np.ndarray, tiles_per_slide: Optional[int],
                 min_tissue_fraction: float) -> List[TileChoice]:
  """The `tiles_per_slide` tiles with most tissue, at least the minimum, most
  tissue first; `tiles_per_slide` None: every such tile.

  Ties are broken by grid position (row, then column) so the choice is
  deterministic.
  """
  rows, cols = np.nonzero(fractions >= min_tissue_fraction)
  values = fractions[rows, cols]
  order = np.lexsort((cols, rows, -values))[:tiles_per_slide]
  return [TileChoice(int(rows[i]), int(cols[i]), float(values[i])) for i in order]
