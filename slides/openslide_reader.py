"""Slides tifffile cannot read or decodes wrongly, through OpenSlide.

Hamamatsu NDPI (JPEG strips with restart markers), 3DHistech MRXS, Leica SCN,
Ventana BIF and Philips TIFF (DICOM WSI too, when the config names it; by
default DICOM goes to `dicom_reader`): OpenSlide (`openslide-python` with
the `openslide-bin` wheel, no system library) reads them all. The class has
the interface of `slide_reader.TiffSlide` (levels, mpp, read_region,
read_level, thumbnail), so tiling does not know which backend ran.

OpenSlide reads local files only, and its `get_thumbnail` reads a whole level
into memory; `thumbnail` here reads the smallest level in bands instead.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from histopipe.slides.base import PLAUSIBLE_MPP, Level, SlideError
from histopipe.slides.limits import ReadLimits
from histopipe.slides.resample import banded_thumbnail


def _rgb(rgba: np.ndarray) -> np.ndarray:
  """OpenSlide's RGBA (straight alpha; transparent outside the scanned area)
  on a white background."""
  alpha = rgba[..., 3:4].astype(np.float32) / 255.0
  if float(alpha.min()) == 1.0:
    return np.ascontiguousarray(rgba[..., :3])
  return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


class OpenSlideSlide:
  """A slide opened with OpenSlide: `levels` from largest to smallest."""

  def __init__(self, path: str, limits: Optional[ReadLimits] = None):
    import openslide  # pylint: disable=import-outside-toplevel (loads a C library)
    self.path = path
    self.limits = limits or ReadLimits()
    try:
      self._slide = openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as e:
      raise SlideError(path, f"not a slide format OpenSlide reads ({e})") from None
    except (openslide.OpenSlideError, OSError) as e:
      raise SlideError(path, f"OpenSlide cannot open it ({e})") from None
    self.vendor = openslide.OpenSlide.detect_format(path) or "unknown"
    self.levels: List[Level] = [
        Level(i, w, h, float(d)) for i, ((w, h), d) in enumerate(
            zip(self._slide.level_dimensions, self._slide.level_downsamples))]
    if not self.levels or self.levels[0].width <= 0 or self.levels[0].height <= 0:
      self.close()
      raise SlideError(path, "slide has no image")
    self.mpp = self._level0_mpp(openslide.PROPERTY_NAME_MPP_X)

  def _level0_mpp(self, key: str) -> float:
    try:
      mpp = float(self._slide.properties.get(key, 0) or 0)
    except ValueError:
      return 0.0
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else 0.0

  def close(self) -> None:
    self._slide.close()

  def __enter__(self) -> "OpenSlideSlide":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def read_regions_jpeg(self, level: int, rectangles) -> List[Optional[bytes]]:
    """None for each: no region is cut from the file's JPEG data here (see
    `TiffSlide.read_regions_jpeg`). OpenSlide hands out decoded pixels only."""
    del level
    return [None] * len(rectangles)

  def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 [height, width, 3] at `level` pixel coords; outside is white."""
    import openslide  # pylint: disable=import-outside-toplevel
    self.limits.check_time(self.path)
    downsample = self.levels[level].downsample
    try:
      region = self._slide.read_region((int(round(x * downsample)), int(round(y * downsample))),
                                       level, (width, height))
    except openslide.OpenSlideError as e:
      raise SlideError(self.path, f"OpenSlide cannot read a region ({e})") from None
    return _rgb(np.asarray(region))

  def read_level(self, level: int) -> np.ndarray:
    """A whole level as RGB uint8; meant for small levels only."""
    self.limits.check_level(self.path, self.levels[level])
    return self.read_region(level, 0, 0, self.levels[level].width, self.levels[level].height)

  def thumbnail(self, max_side: int = 2048,
                max_downsample: float = float("inf")) -> Tuple[np.ndarray, float]:
    """The slide at most `max_side` px on its long side, and its downsample
    (`slide_reader.banded_thumbnail`)."""
    return banded_thumbnail(self, max_side, max_downsample)
