"""DICOM WSI slides through wsidicom.

A DICOM whole slide is several files: one instance per pyramid level (and
thumbnail, label and overview instances), all of one series. A slide is named
either by its folder (the layout DICOM exports and `wsidicom.save` write: one
folder per slide) or by any one of its instance files, in which case its
sibling `.dcm` files of the same series are the slide. A slide folder holds
DICOM instances only (`is_dicom_folder`). The class has the
interface of `tiff_reader.TiffSlide` (levels, mpp, read_region, read_level,
thumbnail), so tiling does not know which backend ran.
"""

from __future__ import annotations

import collections
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from histopipe.slides.base import PLAUSIBLE_MPP, Level, SlideError
from histopipe.slides.limits import ReadLimits
from histopipe.slides.resample import banded_thumbnail

DICOM_SUFFIX = ".dcm"

# DICOM Part 10 files carry "DICM" after a 128-byte preamble.
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"


def is_dicom_file(path: str) -> bool:
  """Whether the local file at `path` is a DICOM Part 10 file (by content)."""
  try:
    with open(path, "rb") as f:
      f.seek(_MAGIC_OFFSET)
      return f.read(len(_MAGIC)) == _MAGIC
  except OSError:
    return False


def _dcm_files_in(folder: str) -> List[str]:
  try:
    names = sorted(os.listdir(folder))
  except OSError:
    return []
  return [os.path.join(folder, name) for name in names
          if name.lower().endswith(DICOM_SUFFIX) and os.path.isfile(os.path.join(folder, name))]


def is_dicom_folder(path: str) -> bool:
  """A local folder of DICOM instances only (`.dcm` files, perhaps a
  DICOMDIR; no other files or folders): one DICOM slide. A folder that also
  holds other things (a data folder with loose instances) is not."""
  try:
    entries = os.listdir(path) if os.path.isdir(path) else []
  except OSError:
    return False
  entries = [name for name in entries if not name.startswith(".")]
  return bool(entries) and any(name.lower().endswith(DICOM_SUFFIX) for name in entries) and all(
      (name.lower().endswith(DICOM_SUFFIX) or name.upper() == "DICOMDIR") and
      os.path.isfile(os.path.join(path, name)) for name in entries)


def series_uid(path: str) -> str:
  """The Series Instance UID of a DICOM file, "" if it has none or is not DICOM."""
  import pydicom  # pylint: disable=import-outside-toplevel (only DICOM slides need it)
  try:
    header = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["SeriesInstanceUID"])
  except Exception:  # pylint: disable=broad-except (not DICOM, or damaged: read as its own slide)
    return ""
  return str(header.get("SeriesInstanceUID", ""))


def instance_files(path: str) -> List[str]:
  """The files of the slide `path` names: a folder's `.dcm` files, or a
  `.dcm` file and its siblings of the same series."""
  if os.path.isdir(path):
    return _dcm_files_in(path)
  series = series_uid(path)
  if not series:
    return [path]
  return [sibling for sibling in _dcm_files_in(os.path.dirname(path) or ".")
          if sibling == path or series_uid(sibling) == series]


def one_file_per_slide(paths: List[str], root: str = "") -> List[str]:
  """`paths` with the loose `.dcm` instances of one series reduced to the
  first of them: each slide is listed once, whatever its number of files.
  With `root` (a folder searched recursively), a series alone in a folder
  below `root` is named by that folder instead, as a slide folder is."""
  first_of_series: Dict[Tuple[str, str], str] = {}
  kept = []
  for path in paths:
    if path.lower().endswith(DICOM_SUFFIX) and os.path.isfile(path):
      key = (os.path.dirname(path), series_uid(path) or path)
      if key in first_of_series:
        continue
      first_of_series[key] = path
    kept.append(path)
  if not root:
    return kept
  series_per_folder = collections.Counter(folder for folder, _ in first_of_series)
  named_by_folder = {path: folder for (folder, _), path in first_of_series.items()
                     if series_per_folder[folder] == 1 and
                     os.path.abspath(folder) != os.path.abspath(root)}
  return [named_by_folder.get(path, path) for path in kept]


class DicomSlide:
  """A DICOM WSI opened with wsidicom: `levels` from largest to smallest."""

  def __init__(self, path: str, limits: Optional[ReadLimits] = None):
    from wsidicom import WsiDicom  # pylint: disable=import-outside-toplevel (heavy; DICOM only)
    self.path = path
    self.limits = limits or ReadLimits()
    files = instance_files(path)
    if not files:
      raise SlideError(path, "folder holds no .dcm files")
    try:
      self._slide = WsiDicom.open(files)
    except Exception as e:  # pylint: disable=broad-except (wsidicom raises many types)
      raise SlideError(path, f"not a DICOM WSI wsidicom opens ({e})") from None
    try:
      self._read_structure()
    except SlideError:
      self.close()
      raise

  def _read_structure(self) -> None:
    pyramid = list(self._slide.levels)
    if not pyramid:
      raise SlideError(self.path, "DICOM WSI has no volume (pyramid) instance")
    pyramid.sort(key=lambda level: -level.size.width)
    base = pyramid[0]
    if base.size.width <= 0 or base.size.height <= 0:
      raise SlideError(self.path, "slide has no image")
    for level in pyramid:
      frame_bytes = level.tile_size.width * level.tile_size.height * 3
      if frame_bytes > self.limits.max_segment_bytes:
        raise SlideError(self.path, f"a DICOM frame would decode to {frame_bytes / 2**20:,.0f} "
                         f"MiB, over the budget of {self.limits.max_segment_bytes / 2**20:,.0f} "
                         "MiB (tiling.max_segment_bytes)")
    # wsidicom numbers levels by scale (log2 of the downsample: 0, 2, 4 for
    # 1/4/16); the interface numbers them 0, 1, 2 from the largest.
    self._scale_levels = [level.level for level in pyramid]
    self.levels: List[Level] = [
        Level(i, level.size.width, level.size.height, base.size.width / level.size.width)
        for i, level in enumerate(pyramid)]
    mpp = base.mpp.width if base.mpp is not None else 0.0
    self.mpp = float(mpp) if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else 0.0

  def close(self) -> None:
    self._slide.close()

  def __enter__(self) -> "DicomSlide":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def read_regions_jpeg(self, level: int, rectangles) -> List[Optional[bytes]]:
    """None for each: no region is cut from the file's JPEG data here (see
    `TiffSlide.read_regions_jpeg`). Not done yet: DICOM WSI frames are JPEGs too, but
    wsidicom hands out decoded pixels; every region is decoded and encoded."""
    del level
    return [None] * len(rectangles)

  def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 [height, width, 3] at `level` pixel coords; outside is white."""
    self.limits.check_time(self.path)
    size = self.levels[level]
    out = np.full((height, width, 3), 255, np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, size.width), min(y + height, size.height)
    if x1 <= x0 or y1 <= y0:
      return out
    try:
      region = self._slide.read_region((x0, y0), self._scale_levels[level], (x1 - x0, y1 - y0))
    except Exception as e:  # pylint: disable=broad-except (codec and file errors)
      raise SlideError(self.path, f"wsidicom cannot read a region ({e})") from None
    out[y0 - y:y1 - y, x0 - x:x1 - x] = np.asarray(region.convert("RGB"))
    return out

  def read_level(self, level: int) -> np.ndarray:
    """A whole level as RGB uint8; meant for small levels only."""
    self.limits.check_level(self.path, self.levels[level])
    return self.read_region(level, 0, 0, self.levels[level].width, self.levels[level].height)

  def thumbnail(self, max_side: int = 2048,
                max_downsample: float = float("inf")) -> Tuple[np.ndarray, float]:
    """The slide at most `max_side` px on its long side, and its downsample
    (`resample.banded_thumbnail`)."""
    return banded_thumbnail(self, max_side, max_downsample)
