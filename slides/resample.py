"""Shrinking pixels exactly: block means for thumbnails (OpenCV's area
resize where it is exact, a summed-area table elsewhere) and the thumbnail of a
backend that reads regions, in bands so memory stays flat."""

from __future__ import annotations

from typing import List, Tuple

import cv2
import numpy as np

from histopipe.slides.base import Level

# A level up to this many pixels (48 MB as RGB) is decoded whole for its
# thumbnail: one vectorised average instead of one per TIFF segment, 2x faster
# on a PANDA lowest level. Larger levels are shrunk a segment at a time.
WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS = 16 * 2**20


def thumbnail_level(levels: List[Level], max_downsample: float) -> Level:
  """The smallest level with downsample at most `max_downsample` (level 0 if
  none is): a tissue mask needs a few pixels per tile, and a scanner's
  smallest level can be a few dozen pixels wide (NDPI)."""
  fine_enough = [level for level in levels if level.downsample <= max_downsample]
  return max(fine_enough, key=lambda level: level.downsample) if fine_enough else levels[0]


def banded_thumbnail(slide, max_side: int,
                     max_downsample: float = float("inf")) -> Tuple[np.ndarray, float]:
  """The thumbnail of a slide whose backend reads regions (OpenSlide,
  wsidicom), and its downsample: the smallest level at most `max_downsample`
  (`thumbnail_level`), area-averaged, read in bands of rows so memory stays at
  one band plus the thumbnail whatever the level's size (OpenSlide's own
  `get_thumbnail` reads the whole level)."""
  level = thumbnail_level(slide.levels, max_downsample)
  slide.limits.check_level(slide.path, level)
  factor = max(1, -(-max(level.width, level.height) // max_side))
  if factor == 1:
    return slide.read_level(level.index), level.downsample
  if level.width * level.height <= WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS:
    return area_average(slide.read_level(level.index), factor), level.downsample * factor
  rows = max(factor, (WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS // level.width) // factor * factor)
  bands = [area_average(slide.read_region(level.index, 0, top, level.width,
                                          min(rows, level.height - top)), factor)
           for top in range(0, level.height, rows)]
  return np.concatenate(bands, axis=0), level.downsample * factor


def area_average(image: np.ndarray, factor: int) -> np.ndarray:
  """`image` shrunk by `factor`: each output pixel is the mean of its
  factor x factor block (halves rounded up), the blocks on the right and
  bottom edges clipped.

  The whole blocks of factors up to 8 go through OpenCV's area resize in
  float32 (5x faster than the summed-area table on a PANDA lowest level):
  for an integer factor it is the block sum times 1/factor^2, exact to
  ~1e-3, while a mean that is not a tie is at least 1/64 from one, so the
  rounding below is exact. The edge blocks and larger factors use the
  summed-area table.
  """
  height, width = image.shape[:2]
  full_height, full_width = height // factor * factor, width // factor * factor
  if factor > _FAST_AREA_MAX_FACTOR or not full_height or not full_width:
    return _area_average_by_table(image, factor)
  out = np.empty((-(-height // factor), -(-width // factor)) + image.shape[2:], np.uint8)
  means = cv2.resize(image[:full_height, :full_width].astype(np.float32),
                     (full_width // factor, full_height // factor), interpolation=cv2.INTER_AREA)
  out[:full_height // factor, :full_width // factor] = np.floor(
      means + (0.5 + _TIE_MARGIN)).reshape(out[:full_height // factor,
                                                :full_width // factor].shape)
  if full_width < width:
    out[:, -1] = _area_average_by_table(image[:, full_width:], factor)[:, 0]
  if full_height < height:
    out[-1, :] = _area_average_by_table(image[full_height:, :], factor)[0]
  return out


# Factors up to this take OpenCV's float32 area resize; its error (~f^2 x
# 255 x 6e-8) stays well under the margin, and the margin under 1/f^2.
_FAST_AREA_MAX_FACTOR = 8
_TIE_MARGIN = 4e-3


def _area_average_by_table(image: np.ndarray, factor: int) -> np.ndarray:
  """`area_average` from a summed-area table: any factor, any edge."""
  height, width = image.shape[:2]
  # Block sums from the summed-area table: 4 corner lookups per block.
  # cv2 sums in int32, which wraps past 8 Mpx of white; the differences of
  # wrapped values are still exact, since each block sum is far below 2**31.
  table = cv2.integral(image)  # [height + 1, width + 1, 3]
  if table.ndim == 2:
    table = table[..., None]
  corners = _every(_every(table, factor, height, axis=0), factor, width, axis=1)
  sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
  rows = np.diff(np.append(np.arange(0, height, factor), height))  # block heights
  cols = np.diff(np.append(np.arange(0, width, factor), width))
  counts = np.outer(rows, cols).astype(np.float32)[..., None]
  # float32 is exact here: sums < 2**24, and a tie (k + 1/2) is representable.
  means = np.floor(sums.astype(np.float32) / counts + 0.5).astype(np.uint8)
  return means.reshape(means.shape[:2] + image.shape[2:])


def _every(table: np.ndarray, step: int, end: int, axis: int) -> np.ndarray:
  """Entries 0, step, 2*step, ... and `end` of `table` along `axis` (slices, no gather)."""
  picked = table[::step] if axis == 0 else table[:, ::step]
  if end % step:
    last = table[end:end + 1] if axis == 0 else table[:, end:end + 1]
    picked = np.concatenate([picked, last], axis=axis)
  return picked


def block_starts(start: int, length: int, factor: int) -> np.ndarray:
  """Offsets in a segment at [start, start+length) where a new output pixel begins."""
  first = (-start) % factor
  return np.unique(np.concatenate([[0], np.arange(first, length, factor)])).astype(np.intp)
