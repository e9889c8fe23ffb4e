"""`TiffSlide`, the default backend of `slide_reader.open_slide`: reads
pyramidal TIFFs (PANDA, Aperio SVS, OME-TIFF, libvips/CAMELYON pyramids,
brightfield or single-channel Akoya QPTIFF, plain TIFFs) one TIFF tile (or
strip) at a time: a whole level is never decoded to cut a few tiles,
`read_region` decodes only the TIFF segments that intersect the requested
rectangle, so memory follows the region size, not the slide size, and a segment
that would decode to more than the budget is refused before it is decoded.
Formats tifffile cannot read or decodes wrongly go to OpenSlide
(`openslide_reader.py`).
"""

from __future__ import annotations

import collections
import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tifffile

from histopipe.core import storage
from histopipe.slides.base import Level, PLAUSIBLE_MPP, SlideError
from histopipe.slides.limits import MAX_TIFF_PAGES, ReadLimits
from histopipe.slides import jpeg_crop, resample

# Decoded TIFF segments kept per open slide (a 512 px RGB tile is 0.75 MB).
_SEGMENT_CACHE_SIZE = 16


class TiffSlide:
  """A pyramidal RGB TIFF: `levels` from largest to smallest."""

  def __init__(self, path: str, limits: Optional[ReadLimits] = None):
    self.path = path
    self.limits = limits or ReadLimits()
    self._segment_cache: "collections.OrderedDict" = collections.OrderedDict()
    # Per level: whether its lossless cuts decode as this reader decodes it
    # (unknown until the first cut).
    self._jpeg_crop_verified: Dict[int, bool] = {}
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
    if self._tiff.is_qpi and series and len(series[0].pages) > 1:
      # tifffile's QPTIFF baseline holds one page per channel; read as a
      # pyramid, the first channel alone would pass for the slide.
      raise SlideError(self.path, _qpi_channels_reason(series[0].pages))
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
      if page.samplesperpixel != base.samplesperpixel:
        continue  # another rendering (a QPTIFF's RGB thumbnail of a grey scan), not a level
      if levels and page.imagewidth >= levels[-1].imagewidth:
        continue  # same size twice (a duplicate IFD): keep the first
      levels.append(page)
    for page in levels:
      if page.planarconfig != 1 and page.samplesperpixel > 1:
        raise SlideError(self.path, "planar-separate TIFF is not supported")
      if page.dtype != np.uint8:
        raise SlideError(self.path, f"{_pixel_type(page.dtype)} pixels ({page.dtype}): only "
                         "unsigned 8-bit pixels are read")
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
    level = resample.thumbnail_level(self.levels, max_downsample)
    self.limits.check_level(self.path, level)
    factor = max(1, -(-max(level.width, level.height) // max_side))
    if factor == 1:
      return self.read_level(level.index), level.downsample
    if level.width * level.height <= resample.WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS and factor < 256:
      return resample.area_average(self.read_level(level.index), factor), level.downsample * factor
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
      rows = resample.block_starts(seg_y, seg_h, factor)
      cols = resample.block_starts(seg_x, seg_w, factor)
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

  def read_regions_jpeg(self, level: int, rectangles: Sequence[jpeg_crop.Rectangle]
                        ) -> List[Optional[bytes]]:
    """Each (x, y, width, height) at `level` as a JPEG cut from the file's own
    JPEG data without decoding (`jpeg_crop`), or None where it cannot be: a
    level not JPEG-compressed in tiles, a region across TIFF tiles, off the
    JPEG's MCU grid or past the image's edge (`read_region` pads with white
    there), or a level whose cuts would not decode to the pixels
    `read_region` gives (checked on the level's first cut, against this
    reader's own decode). Regions in one TIFF tile are cut in one call."""
    cuts: List[Optional[bytes]] = [None] * len(rectangles)
    page = self._pages[level]
    if not _croppable(page) or self._jpeg_crop_verified.get(level) is False:
      return cuts
    across = -(-page.imagewidth // page.tilewidth)
    by_segment: Dict[int, List[int]] = collections.defaultdict(list)
    for position, (x, y, width, height) in enumerate(rectangles):
      if x < 0 or y < 0 or x + width > page.imagewidth or y + height > page.imagelength:
        continue
      column, row = x // page.tilewidth, y // page.tilelength
      if ((x + width - 1) // page.tilewidth == column
          and (y + height - 1) // page.tilelength == row):
        by_segment[row * across + column].append(position)
    for index, positions in by_segment.items():
      segment = jpeg_crop.standalone_jpeg(self._read_segment(page, index), page.jpegtables,
                                          rgb=page.photometric == tifffile.PHOTOMETRIC.RGB)
      header = jpeg_crop.read_header(segment)
      if header is None or (header.width, header.height) != (page.tilewidth, page.tilelength):
        continue  # a tile that is not what its tags say: decoding says why
      seg_x, seg_y = (index % across) * page.tilewidth, (index // across) * page.tilelength
      within = [(x - seg_x, y - seg_y, width, height)
                for x, y, width, height in (rectangles[p] for p in positions)]
      for position, cut in zip(positions, jpeg_crop.crop(segment, within)):
        cuts[position] = cut
        if cut is not None and level not in self._jpeg_crop_verified:
          self._jpeg_crop_verified[level] = _decodes_alike(
              cut, self.read_region(level, *rectangles[position]))
      if self._jpeg_crop_verified.get(level) is False:
        return [None] * len(rectangles)
    return cuts

  def _check_jpeg_size(self, page, index: int, data: bytes) -> None:
    """Refuses a JPEG segment whose own header declares more pixels than the
    TIFF says the segment holds: the decoder allocates what the JPEG declares
    (a 256 px tile whose header says 65535 x 65535 took 12 GB before failing),
    so the TIFF tags' budget alone does not bound it."""
    declared = jpeg_crop.declared_size(data)
    if declared is None:
      return  # the decoder names what is wrong with it
    if page.is_tiled:
      width, rows = page.tilewidth, page.tilelength
    else:
      width, rows = page.imagewidth, min(page.rowsperstrip or page.imagelength, page.imagelength)
    if declared[0] * declared[1] > width * rows:
      raise SlideError(self.path, f"TIFF segment {index} is a JPEG of {declared[0]}x"
                       f"{declared[1]} px in a {width}x{rows} px segment")

  def _read_segment(self, page, index: int) -> bytes:
    """The compressed bytes of one TIFF tile or strip, within the budgets."""
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
    return data

  def _read_and_decode(self, page, index: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    data = self._read_segment(page, index)
    if page.compression == tifffile.COMPRESSION.JPEG:
      self._check_jpeg_size(page, index, data)
    try:
      segment, indices, _ = page.decode(data, index, jpegtables=page.jpegtables)
    except Exception as e:  # codec errors come in many types
      raise SlideError(self.path, f"cannot decode TIFF segment {index} ({e})") from e
    if segment is None:
      raise SlideError(self.path, f"TIFF segment {index} is empty")
    segment = segment[0]  # drop the depth axis: [length, width, samples]
    return _to_rgb(segment), (indices[2], indices[3])


# Words for numpy's kinds of number, as a reason names a pixel type.
_NUMBER_KINDS = {"u": "unsigned", "i": "signed", "f": "floating-point", "c": "complex"}
# Channel names a reason lists at most (a PhenoCycler scan has dozens).
_NAMED_CHANNELS = 8


def _pixel_type(dtype) -> str:
  """"signed 8-bit", "unsigned 16-bit", "32-bit floating-point": what a pixel type is."""
  dtype = np.dtype(dtype)
  if dtype.kind == "b":
    return "1-bit (bilevel)"
  bits = f"{dtype.itemsize * 8}-bit"
  kind = _NUMBER_KINDS.get(dtype.kind, dtype.kind)
  return f"{kind} {bits}" if dtype.kind in "ui" else f"{bits} {kind}"


def _qpi_channels_reason(channel_pages) -> str:
  """Why a multi-channel QPTIFF is refused, with its channels' names (each page's
  `<PerkinElmer-QPI-ImageDescription>` `Name`) where it states them."""
  names = []
  for page in channel_pages:
    try:
      described = tifffile.xml2dict(page.description)["PerkinElmer-QPI-ImageDescription"]
      names.append(str(described["Name"]))
    except Exception:  # pylint: disable=broad-except (no name, or XML tifffile cannot parse)
      names = []
      break
  shown = ", ".join(names[:_NAMED_CHANNELS]) + (", …" if len(names) > _NAMED_CHANNELS else "")
  return (f"a QPTIFF of {len(channel_pages)} channels{f' ({shown})' if names else ''} of "
          f"{_pixel_type(channel_pages[0].dtype)} pixels, a multiplex fluorescence scan: only "
          "RGB or single-channel 8-bit QPTIFF are read")


# A lossless cut's pixels may differ from the level's decode only where the
# chroma upsampling at the cut's border sees other neighbours: a few levels at
# the edge, a mean far below this. A colour space read wrongly (RGB taken for
# YCbCr) is tens of levels everywhere.
_CROP_MEAN_DIFFERENCE = 2.0


def _croppable(page) -> bool:
  """Whether the level's tiles are baseline JPEGs a bag tile can be cut from:
  JPEG-compressed tiles of 8-bit RGB, YCbCr or grey, nothing else in them."""
  return (page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
          and not page.extrasamples and page.bitspersample == 8
          and (page.photometric, page.samplesperpixel) in (
              (tifffile.PHOTOMETRIC.RGB, 3), (tifffile.PHOTOMETRIC.YCBCR, 3),
              (tifffile.PHOTOMETRIC.MINISBLACK, 1)))


def _decodes_alike(jpeg: bytes, pixels: np.ndarray) -> bool:
  """Whether `jpeg`, decoded as any decoder would (libjpeg's own colour
  rules), shows `pixels`."""
  decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
  if decoded is None or decoded.shape != pixels.shape:
    return False
  difference = np.abs(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.int16)
                      - pixels.astype(np.int16))
  return float(difference.mean()) <= _CROP_MEAN_DIFFERENCE


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


def _to_rgb(segment: np.ndarray) -> np.ndarray:
  samples = segment.shape[-1] if segment.ndim == 3 else 1
  if segment.ndim == 2:
    segment = segment[..., None]
  if samples == 1:
    return np.repeat(segment, 3, axis=-1)
  if samples == 2:  # grey + alpha
    return np.repeat(segment[..., :1], 3, axis=-1)
  return segment[..., :3]
