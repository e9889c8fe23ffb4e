"""Writes a DICOM WSI from a JPEG-tiled TIFF slide with wsidicom, for tests.

Why hand-written: `wsidicomizer`, wsidicom's own converter, pins
imagecodecs < 2025 in every release and does not install beside the stack;
wsidicom itself writes DICOM from any `Source` of `ImageData`, so this module
gives it one over tifffile. The TIFF's JPEG tiles become the DICOM frames
byte for byte (with the TIFF's shared JPEG tables put back in each), so a
reader of the DICOM decodes exactly the pixels of the TIFF: the tests compare
the two paths tile for tile. Coarser levels can be added by wsidicom itself
(`add_missing_levels`), which decodes, shrinks and re-encodes them.
"""

from __future__ import annotations

import os
import threading
from typing import List, Optional

import numpy as np
import tifffile
from PIL import Image as PILImage
from pydicom.uid import JPEGBaseline8Bit, UID
from wsidicom import WsiDicom
from wsidicom.codec import Encoder, JpegSettings
from wsidicom.geometry import Point, PointMm, Size, SizeMm
from wsidicom.instance import ImageData, ImageType, WsiDataset, WsiInstance
from wsidicom.metadata import (Equipment, Image, ImageCoordinateSystem, Label, OpticalPath,
                               Patient, Pyramid, Series, Slide, Study, WsiMetadata)
from wsidicom.metadata.schema.dicom.wsi import WsiMetadataDicomSchema
from wsidicom.source import Source

# An Adobe APP14 segment with transform 0: the frame's samples are RGB, not
# YCbCr. Aperio writes RGB-coded JPEG tiles without it (the TIFF's
# photometric tag says RGB); in a DICOM frame the JPEG must say so itself.
_ADOBE_RGB = bytes.fromhex("ffee000e") + b"Adobe" + bytes([0, 100, 0, 0, 0, 0, 0])


def _frame(tile: bytes, jpegtables: Optional[bytes], rgb: bool) -> bytes:
  """A self-contained JPEG: the shared tables inserted after SOI, and the
  Adobe marker when the samples are RGB."""
  head = b""
  if jpegtables:
    head += jpegtables[2:-2]  # without their own SOI and EOI
  if rgb and b"Adobe" not in tile[:2048]:
    head += _ADOBE_RGB
  frame = tile[:2] + head + tile[2:]
  return frame + b"\x00" if len(frame) % 2 else frame  # DICOM values have even length


class _TiffLevelData(ImageData):
  """One JPEG-tiled TIFF page as wsidicom image data."""

  def __init__(self, tiff: tifffile.TiffFile, page, mpp_um: float, lock: threading.Lock):
    # The encoder is used only where wsidicom makes new levels.
    super().__init__(Encoder.create_for_settings(JpegSettings(quality=90)))
    self._tiff = tiff
    self._page = page
    self._mpp_mm = mpp_um / 1000.0
    self._lock = lock
    self._tiles_across = -(-page.imagewidth // page.tilewidth)
    self._rgb = page.photometric == tifffile.PHOTOMETRIC.RGB

  @property
  def transfer_syntax(self) -> UID:
    return JPEGBaseline8Bit

  @property
  def image_size(self) -> Size:
    return Size(self._page.imagewidth, self._page.imagelength)

  @property
  def tile_size(self) -> Size:
    return Size(self._page.tilewidth, self._page.tilelength)

  @property
  def pixel_spacing(self) -> SizeMm:
    return SizeMm(self._mpp_mm, self._mpp_mm)

  @property
  def imaged_size(self) -> SizeMm:
    return SizeMm(self._page.imagewidth * self._mpp_mm, self._page.imagelength * self._mpp_mm)

  @property
  def samples_per_pixel(self) -> int:
    return 3

  @property
  def photometric_interpretation(self) -> str:
    return "RGB" if self._rgb else "YBR_FULL_422"

  @property
  def bits(self) -> int:
    return 8

  @property
  def image_coordinate_system(self) -> ImageCoordinateSystem:
    return ImageCoordinateSystem(PointMm(0, 0), 0)

  @property
  def thread_safe(self) -> bool:
    return True

  @property
  def lossy_compression(self):
    return []

  @property
  def transcoder(self):
    return None

  def _get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
    index = tile.y * self._tiles_across + tile.x
    with self._lock:
      fh = self._tiff.filehandle
      fh.seek(self._page.dataoffsets[index])
      data = fh.read(self._page.databytecounts[index])
    return _frame(data, self._page.jpegtables, self._rgb)

  def _get_decoded_tile(self, tile: Point, z: float, path: str) -> PILImage.Image:
    index = tile.y * self._tiles_across + tile.x
    with self._lock:
      fh = self._tiff.filehandle
      fh.seek(self._page.dataoffsets[index])
      data = fh.read(self._page.databytecounts[index])
    pixels, _, _ = self._page.decode(data, index, jpegtables=self._page.jpegtables)
    return PILImage.fromarray(np.asarray(pixels)[0])

  def close(self) -> None:
    pass


class _TiffSource(Source):
  """The tiled levels of a TIFF pyramid as a DICOM source of one slide."""

  def __init__(self, path: str, mpp_um: float, levels: Optional[List[int]] = None):
    super().__init__()
    self._tiff = tifffile.TiffFile(path)
    series = self._tiff.series[0]
    lock = threading.Lock()
    pages = [series.levels[i].keyframe for i in (levels or range(len(series.levels)))]
    pages = [p for p in pages if p.is_tiled and p.compression == tifffile.COMPRESSION.JPEG]
    if not pages:
      raise ValueError(f"{path}: no JPEG-tiled level to convert")
    base_width = series.levels[0].keyframe.imagewidth
    self._data = [_TiffLevelData(self._tiff, page, mpp_um * base_width / page.imagewidth, lock)
                  for page in pages]
    metadata = WsiMetadata(
        study=Study(), series=Series(), patient=Patient(),
        equipment=Equipment(manufacturer="histopipe tests", model_name="tests/dicom_wsi.py"),
        slide=Slide(), label=Label(),
        pyramid=Pyramid(image=Image(pixel_spacing=self._data[0].pixel_spacing,
                                    image_coordinate_system=ImageCoordinateSystem(
                                        PointMm(0, 0), 0)),
                        optical_paths=[OpticalPath(identifier="0")]))
    self._dataset = WsiDataset(WsiMetadataDicomSchema().dump(metadata, ImageType.VOLUME, True))
    self._instances = [WsiInstance.create_instance(data, self._dataset, ImageType.VOLUME, 0)
                       for data in self._data]

  @property
  def base_dataset(self) -> WsiDataset:
    return self._dataset

  @property
  def level_instances(self):
    return self._instances

  @property
  def label_instances(self):
    return []

  @property
  def overview_instances(self):
    return []

  @property
  def thumbnail_instances(self):
    return []

  @property
  def annotation_instances(self):
    return []

  def close(self) -> None:
    self._tiff.close()


def write_dicom_wsi(tiff_path: str, out_dir: str, mpp_um: float,
                    add_missing_levels: bool = False) -> List[str]:
  """`tiff_path`'s JPEG-tiled levels written as DICOM WSI instances into
  `out_dir` (one file per level); with `add_missing_levels`, wsidicom adds
  each missing power-of-two level down to one tile. Returns the files."""
  os.makedirs(out_dir, exist_ok=True)
  with WsiDicom(_TiffSource(tiff_path, mpp_um), True) as slide:
    written = slide.save(out_dir, add_missing_levels=add_missing_levels, include_labels=False,
                         include_overviews=False, include_thumbnails=False)
  return sorted(str(path) for path in written)
