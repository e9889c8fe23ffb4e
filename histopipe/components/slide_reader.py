"""Reads regions of slides: `open_slide` picks the backend by the file's content.

The default backend, `TiffSlide`, reads pyramidal TIFFs (PANDA, Aperio SVS,
OME-TIFF, libvips/CAMELYON pyramids, plain TIFFs) one TIFF tile (or strip) at
a time: a whole level is never decoded to cut a few tiles, `read_region`
decodes only the TIFF segments that intersect the requested rectangle, so
memory follows the region size, not the slide size, and a segment that would
decode to more than the budget is refused before it is decoded. Formats
tifffile cannot read or decodes wrongly go to OpenSlide
(`components/openslide_reader.py`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import List, Optional, Tuple

import cv2
import numpy as np
import tifffile

from histopipe.core import storage


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


# Decoded TIFF segments kept per open slide (a 512 px RGB tile is 0.75 MB).
_SEGMENT_CACHE_SIZE = 16

# A level up to this many pixels (48 MB as RGB) is decoded whole for its
# thumbnail: one vectorised average instead of one per TIFF segment, 2x faster
# on a PANDA lowest level. Larger levels are shrunk a segment at a time.
WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS = 16 * 2**20

# Microns per pixel outside this range are treated as unknown: scanners write
# placeholder resolutions (72 dpi is 352 um/px) that would mislead a reader.
PLAUSIBLE_MPP = (0.05, 20.0)


# File name endings of whole slides the backends read (tifffile: TIFF family;
# OpenSlide: Aperio, Hamamatsu, 3DHistech, Leica, Ventana, Philips; wsidicom:
# DICOM, whose slides can also be folders of `.dcm` files).
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".vms", ".mrxs", ".scn", ".bif",
                  ".svslide", ".dcm")


# OpenSlide's names of the formats the TIFF reader handles itself; anything
# else OpenSlide recognises (hamamatsu, mirax, leica, ventana, philips, dicom,
# ...) goes to OpenSlide.
TIFF_READER_FORMATS = ("aperio", "generic-tiff")

# Pages of a TIFF chain beyond which the file is refused: real slides have
# tens; tifffile walks a looping IFD chain forever when its pages are
# iterated before their number is taken.
MAX_TIFF_PAGES = 4096

# Default budget for one decoded TIFF tile or strip (TilingConfig has the
# configured one): a PANDA tile is 0.75 MB, a single-strip bomb gigabytes.
DEFAULT_MAX_SEGMENT_BYTES = 256 * 2**20

# Default budget for a level read whole (the thumbnail's level): 4 Gpx, a
# single-level 65k x 65k scan, about a minute of decoding.
DEFAULT_MAX_LEVEL_PIXELS = 2**32


@dataclasses.dataclass(frozen=True)
class ReadLimits:
  """What reading one slide may cost; a slide over any limit is rejected
  with the setting's name (TilingConfig holds the configured values).

  The time limit is checked before each TIFF segment is decoded and each
  region is read, so a file that decodes slowly forever stops itself; a read
  that blocks inside one call (a stalled mount) is the job watchdog's case
  (slide_stages.TileSlideFn).
  """
  max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES
  max_level_pixels: int = DEFAULT_MAX_LEVEL_PIXELS
  max_seconds: float = 0.0  # 0: no limit
  started: float = dataclasses.field(default_factory=time.monotonic)

  def check_time(self, path: str) -> None:
    if self.max_seconds and time.monotonic() - self.started > self.max_seconds:
      raise SlideError(path, f"reading took longer than {self.max_seconds:g} s "
                       "(tiling.max_seconds_per_slide)")

  def check_level(self, path: str, level: "Level") -> None:
    """Before a level is read whole."""
    if level.width * level.height > self.max_level_pixels:
      raise SlideError(path, f"level {level.index} is {level.width}x{level.height} px, over "
                       f"the budget of {self.max_level_pixels:,} px for a level read whole "
                       "(tiling.max_level_pixels)")


def choose_backend(path: str, backend: str = "auto") -> str:
  """"tifffile", "openslide" or "wsidicom" for `path`: by content (a folder of
  `.dcm` files or a DICOM file: wsidicom; else OpenSlide's format detection)
  unless `backend` names one. Objects in a bucket go to tifffile, which reads
  byte ranges; OpenSlide and the DICOM reader read local files only."""
  if backend != "auto":
    return backend
  if storage.is_url(path):
    return "tifffile"
  from histopipe.components import dicom_reader  # pylint: disable=import-outside-toplevel (it imports this module)
  if dicom_reader.is_dicom_folder(path) or dicom_reader.is_dicom_file(path):
    return "wsidicom"
  if not os.path.isfile(path):
    return "tifffile"
  try:
    import openslide  # pylint: disable=import-outside-toplevel (loads a C library)
  except ImportError:  # the wheel missing: the TIFF reader is the only one
    return "tifffile"
  try:
    vendor = openslide.OpenSlide.detect_format(path)
  except Exception:  # pylint: disable=broad-except (a hostile file: the TIFF reader says why)
    return "tifffile"
  return "tifffile" if vendor is None or vendor in TIFF_READER_FORMATS else "openslide"


def open_slide(path: str, backend: str = "auto", limits: Optional[ReadLimits] = None):
  """The slide at `path` through the backend `choose_backend` picks; the
  backends have the same interface (levels, mpp, read_region, read_level,
  thumbnail, close) and keep to `limits`."""
  chosen = choose_backend(path, backend)
  if chosen == "wsidicom":
    from histopipe.components.dicom_reader import DicomSlide  # pylint: disable=import-outside-toplevel (it imports this module)
    return DicomSlide(path, limits)
  if chosen == "openslide":
    from histopipe.components.openslide_reader import OpenSlideSlide  # pylint: disable=import-outside-toplevel (it imports this module)
    if os.path.isdir(path):  # a DICOM folder: OpenSlide opens a slide from any one instance
      from histopipe.components.dicom_reader import instance_files  # pylint: disable=import-outside-toplevel
      path = (instance_files(path) or [path])[0]
    return OpenSlideSlide(path, limits)
  return TiffSlide(path, limits)


class TiffSlide:
  """A pyramidal RGB TIFF: `levels` from largest to smallest."""

  def __init__(self, path: str, limits: Optional[ReadLimits] = None):
    self.path = path
    self.limits = limits or ReadLimits()
    self._segment_cache: "collections.OrderedDict" = collections.OrderedDict()
    # In a bucket: a file object that fetches the byte ranges tifffile asks for.
    self._remote = None
    if storage.is_url(path):
      try:
        self._remote = storage.open_file(path, "rb")
      except FileNotFoundError:
        raise SlideError(path, "file not found") from None
      except OSError as e:
        raise SlideError(path, f"cannot open ({e})") from None
    try:
      self._open()
    except SlideError:
      if self._remote is not None:
        self._remote.close()
      raise

  def _open(self) -> None:
    path = self.path
    if self._remote is None and not os.path.exists(path):
      raise SlideError(path, "file not found")
    size = self._remote.size if self._remote is not None else os.path.getsize(path)
    if size == 0:
      raise SlideError(path, "empty file")
    try:
      self._tiff = tifffile.TiffFile(self._remote if self._remote is not None else path)
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
    """Pages of the pyramid, largest first, whatever the file's layout.

    tifffile knows PANDA, Aperio SVS, NDPI and SubIFD (OME, libvips)
    pyramids; for other files every page of the main chain is a candidate.
    Label and macro images have another aspect ratio and are left out; an
    SVS thumbnail has the same aspect and serves as the coarsest level.
    """
    try:
      # The number of pages first: tifffile then stops at a looping IFD chain.
      if len(self._tiff.pages) > MAX_TIFF_PAGES:
        raise SlideError(self.path, f"more than {MAX_TIFF_PAGES} TIFF pages")
      pages = list(self._tiff.pages)
      if not any(getattr(p, "imagewidth", 0) and getattr(p, "imagelength", 0) for p in pages):
        raise SlideError(self.path, "TIFF has no readable image (zero-size pages)")
      series = self._tiff.series
      # SubIFD levels are only reachable through the series; main-chain pages
      # the series leaves out (an SVS thumbnail) are candidates too.
      candidates = [level.keyframe for level in series[0].levels] if series else []
      candidates += pages
    except SlideError:
      raise
    except Exception as e:  # malformed IFDs surface here
      raise SlideError(self.path, f"cannot read TIFF structure ({e})") from e
    candidates = [p for p in candidates
                  if getattr(p, "imagewidth", 0) and getattr(p, "imagelength", 0)]
    if not candidates:
      raise SlideError(self.path, "TIFF has no readable image (corrupt or truncated)")
    base = max(candidates, key=lambda p: p.imagewidth * p.imagelength)
    aspect = base.imagewidth / base.imagelength
    levels = []
    for page in sorted(candidates, key=lambda p: -p.imagewidth):
      if abs(page.imagewidth / page.imagelength - aspect) / aspect > 0.02:
        continue
      if levels and page.imagewidth >= levels[-1].imagewidth:
        continue  # same size twice (a duplicate IFD): keep the first
      levels.append(page)
    for page in levels:
      if page.planarconfig != 1 and page.samplesperpixel > 1:
        raise SlideError(self.path, "planar-separate TIFF is not supported")
      if page.dtype != np.uint8:
        raise SlideError(self.path, f"pixel type {page.dtype} is not 8-bit")
      declared = _segment_count(page)
      if declared != len(page.dataoffsets):
        # A size that does not match the file's own tile offsets (an absurd
        # declared size, a damaged IFD): reading it would chase segments that
        # are not there, or loop over billions of them.
        raise SlideError(self.path, f"a level declares {page.imagewidth}x{page.imagelength} px "
                         f"({declared:,} TIFF segments) but the file holds "
                         f"{len(page.dataoffsets):,}")
    return levels

  def _level0_mpp(self, page) -> float:
    """Microns per level-0 pixel, 0 if unknown: Aperio's `MPP` in the image
    description, else the TIFF resolution tags."""
    if self._tiff.is_svs:
      try:
        mpp = float(tifffile.tifffile.svs_description_metadata(page.description).get("MPP", 0))
      except (ValueError, TypeError, AttributeError):  # a malformed description
        mpp = 0.0
      if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return mpp
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
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else 0.0

  def close(self) -> None:
    self._tiff.close()
    if self._remote is not None:
      self._remote.close()

  def __enter__(self) -> "TiffSlide":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def read_level(self, level: int) -> np.ndarray:
    """A whole level as RGB uint8; meant for small levels only."""
    self.limits.check_level(self.path, self.levels[level])
    page = self._pages[level]
    return self.read_region(level, 0, 0, page.imagewidth, page.imagelength)

  def thumbnail(self, max_side: int = 2048,
                max_downsample: float = float("inf")) -> Tuple[np.ndarray, float]:
    """The slide at most `max_side` px on its long side, and its downsample.

    From the smallest level at most `max_downsample` (see `thumbnail_level`);
    when that is larger than `max_side` (a single-level slide), it is shrunk
    one TIFF segment at a time, so memory stays at one segment plus the
    thumbnail whatever the slide's size.
    """
    level = thumbnail_level(self.levels, max_downsample)
    self.limits.check_level(self.path, level)
    factor = max(1, -(-max(level.width, level.height) // max_side))
    if factor == 1:
      return self.read_level(level.index), level.downsample
    if level.width * level.height <= WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS and factor < 256:
      return area_average(self.read_level(level.index), factor), level.downsample * factor
    page = self._pages[level.index]
    out_w, out_h = -(-level.width // factor), -(-level.height // factor)
    # Exact area average: output pixel k is the mean of level pixels
    # [k*factor, (k+1)*factor), summed block by block across segment edges.
    sums = np.zeros((out_h, out_w, 3), np.float64)
    counts = np.zeros((out_h, out_w, 1), np.float64)
    for index in self._segment_indices(page, 0, 0, level.width, level.height):
      segment, (seg_y, seg_x) = self._decode_segment(page, index)
      seg_h = min(segment.shape[0], level.height - seg_y)
      seg_w = min(segment.shape[1], level.width - seg_x)
      rows = _block_starts(seg_y, seg_h, factor)
      cols = _block_starts(seg_x, seg_w, factor)
      block = np.add.reduceat(np.add.reduceat(
          segment[:seg_h, :seg_w].astype(np.float64), rows, axis=0), cols, axis=1)
      y0, x0 = seg_y // factor, seg_x // factor
      sums[y0:y0 + len(rows), x0:x0 + len(cols)] += block
      counts[y0:y0 + len(rows), x0:x0 + len(cols), 0] += np.outer(
          np.diff(np.append(rows, seg_h)), np.diff(np.append(cols, seg_w)))
    out = np.where(counts > 0, np.floor(sums / np.maximum(counts, 1) + 0.5),
                   255).astype(np.uint8)
    return out, level.downsample * factor

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
    """A decoded TIFF tile or strip and its (y, x); recent ones are cached
    because neighbouring bag tiles often share a TIFF tile."""
    key = (id(page), index)
    cached = self._segment_cache.get(key)
    if cached is not None:
      self._segment_cache.move_to_end(key)
      return cached
    decoded = self._read_and_decode(page, index)
    self._segment_cache[key] = decoded
    if len(self._segment_cache) > _SEGMENT_CACHE_SIZE:
      self._segment_cache.popitem(last=False)
    return decoded

  def _read_and_decode(self, page, index: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    self.limits.check_time(self.path)
    decoded_bytes = _segment_bytes(page)
    budget = self.limits.max_segment_bytes
    if decoded_bytes > budget:
      raise SlideError(self.path, f"a TIFF segment would decode to {decoded_bytes / 2**20:,.0f} "
                       f"MiB, over the budget of {budget / 2**20:,.0f} MiB "
                       "(tiling.max_segment_bytes)")
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


def _segment_count(page) -> int:
  """TIFF tiles or strips a page of this size must have (chunky pixels)."""
  if page.is_tiled:
    return (-(-page.imagewidth // page.tilewidth)) * (-(-page.imagelength // page.tilelength))
  rows = page.rowsperstrip or page.imagelength
  return -(-page.imagelength // min(rows, page.imagelength))


def _segment_bytes(page) -> int:
  """Bytes one decoded tile or strip of `page` takes, from its tags alone."""
  if page.is_tiled:
    width, rows = page.tilewidth, page.tilelength
  else:
    width, rows = page.imagewidth, min(page.rowsperstrip or page.imagelength, page.imagelength)
  return int(width) * int(rows) * int(page.samplesperpixel) * np.dtype(page.dtype).itemsize


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


def _block_starts(start: int, length: int, factor: int) -> np.ndarray:
  """Offsets in a segment at [start, start+length) where a new output pixel begins."""
  first = (-start) % factor
  return np.unique(np.concatenate([[0], np.arange(first, length, factor)])).astype(np.intp)


def _to_rgb(segment: np.ndarray) -> np.ndarray:
  samples = segment.shape[-1] if segment.ndim == 3 else 1
  if segment.ndim == 2:
    segment = segment[..., None]
  if samples == 1:
    return np.repeat(segment, 3, axis=-1)
  if samples == 2:  # grey + alpha
    return np.repeat(segment[..., :1], 3, axis=-1)
  return segment[..., :3]

