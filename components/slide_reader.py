"""Reads regions of pyramidal TIFF slides one TIFF tile (or strip) at a time.

A whole level is never decoded to cut a few tiles: `read_region` reads and
decodes only the TIFF segments that intersect the requested rectangle, so
memory follows the region size, not the slide size.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Tuple

import numpy as np
import tifffile


class SlideError(Exception):
  """A slide that cannot be used; the message names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Level:
  index: int
  width: int
  height: int
  downsample: float  # level-0 pixels per pixel of this level


# Microns per pixel outside this range are treated as unknown: scanners write
# placeholder resolutions (72 dpi is 352 um/px) that would mislead a reader.
_PLAUSIBLE_MPP = (0.05, 20.0)


class TiffSlide:
  """A pyramidal RGB TIFF: `levels` from largest to smallest."""

  def __init__(self, path: str):
    self.path = path
    if not os.path.exists(path):
      raise SlideError(path, "file not found")
    if os.path.getsize(path) == 0:
      raise SlideError(path, "empty file")
    try:
      self._tiff = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises several types for bad headers
      raise SlideError(path, f"not a readable TIFF ({e})") from e
    try:
      self._pages = self._pyramid_pages()
    except SlideError:
      self.close()
      raise
    base = self._pages[0]
    self.levels: List[Level] = [
        Level(i, p.imagewidth, p.imagelength, base.imagewidth / p.imagewidth)
        for i, p in enumerate(self._pages)
    ]
    self.mpp = self._level0_mpp(base)

  def _pyramid_pages(self) -> list:
    pages = [p for p in self._tiff.pages]
    if not pages:
      raise SlideError(self.path, "TIFF has no images")
    base = pages[0]
    if base.imagewidth == 0 or base.imagelength == 0:
      raise SlideError(self.path, "TIFF image has zero size")
    aspect = base.imagewidth / base.imagelength
    levels = [base]
    for page in pages[1:]:
      # Label and macro images have another aspect ratio; thumbnails in the
      # chain have the same aspect and serve as a (coarse) level.
      if page.imagelength == 0:
        continue
      if abs(page.imagewidth / page.imagelength - aspect) / aspect > 0.02:
        continue
      if page.imagewidth >= levels[-1].imagewidth:
        continue
      levels.append(page)
    for page in levels:
      if page.planarconfig != 1 and page.samplesperpixel > 1:
        raise SlideError(self.path, "planar-separate TIFF is not supported")
      if page.dtype != np.uint8:
        raise SlideError(self.path, f"pixel type {page.dtype} is not 8-bit")
    return levels

  def _level0_mpp(self, page) -> float:
    """Microns per level-0 pixel from the TIFF resolution tags, 0 if unknown."""
    tag = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if tag is None or unit is None:
      return 0.0
    numerator, denominator = tag.value
    if not numerator or not denominator:
      return 0.0
    pixels_per_unit = numerator / denominator
    microns_per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    if microns_per_unit is None:
      return 0.0
    mpp = microns_per_unit / pixels_per_unit
    return mpp if _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1] else 0.0

  def close(self) -> None:
    self._tiff.close()

  def __enter__(self) -> "TiffSlide":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def read_level(self, level: int) -> np.ndarray:
    """A whole level as RGB uint8; meant for the small thumbnail level only."""
    page = self._pages[level]
    return self.read_region(level, 0, 0, page.imagewidth, page.imagelength)

  def read_region(self, level: int, x: int, y: int, width: int,
                  height: int) -> np.ndarray:
    """RGB uint8 [height, width, 3] at `level` pixel coords; outside is white."""
    page = self._pages[level]
    out = np.full((height, width, 3), 255, np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, page.imagewidth), min(y + height, page.imagelength)
    if x1 <= x0 or y1 <= y0:
      return out
    for index in self._segment_indices(page, x0, y0, x1, y1):
      segment, (seg_y, seg_x) = self._decode_segment(page, index)
      seg_h, seg_w = segment.shape[:2]
      # Intersection of the segment with the requested rectangle.
      ix0, iy0 = max(seg_x, x0), max(seg_y, y0)
      ix1, iy1 = min(seg_x + seg_w, x1), min(seg_y + seg_h, y1)
      if ix1 <= ix0 or iy1 <= iy0:
        continue
      out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = segment[
          iy0 - seg_y:iy1 - seg_y, ix0 - seg_x:ix1 - seg_x]
    return out

  @staticmethod
  def _segment_indices(page, x0: int, y0: int, x1: int, y1: int) -> List[int]:
    if page.is_tiled:
      across = -(-page.imagewidth // page.tilewidth)
      cols = range(x0 // page.tilewidth, (x1 - 1) // page.tilewidth + 1)
      rows = range(y0 // page.tilelength, (y1 - 1) // page.tilelength + 1)
      return [r * across + c for r in rows for c in cols]
    rows_per_strip = page.rowsperstrip or page.imagelength
    return list(range(y0 // rows_per_strip, (y1 - 1) // rows_per_strip + 1))

  def _decode_segment(self, page, index: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    offset = page.dataoffsets[index]
    bytecount = page.databytecounts[index]
    if bytecount == 0:
      raise SlideError(self.path, f"segment {index} of level is missing")
    fh = self._tiff.filehandle
    fh.seek(offset)
    data = fh.read(bytecount)
    if len(data) != bytecount:
      raise SlideError(self.path, "file is truncated")
    try:
      segment, indices, _ = page.decode(data, index, jpegtables=page.jpegtables)
    except Exception as e:  # codec errors come in many types
      raise SlideError(self.path, f"cannot decode TIFF segment {index} ({e})") from e
    if segment is None:
      raise SlideError(self.path, f"TIFF segment {index} is empty")
    segment = segment[0]  # drop the depth axis: [length, width, samples]
    return _to_rgb(segment), (indices[2], indices[3])


def _to_rgb(segment: np.ndarray) -> np.ndarray:
  samples = segment.shape[-1] if segment.ndim == 3 else 1
  if segment.ndim == 2:
    segment = segment[..., None]
  if samples == 1:
    return np.repeat(segment, 3, axis=-1)
  if samples == 2:  # grey + alpha
    return np.repeat(segment[..., :1], 3, axis=-1)
  return segment[..., :3]

