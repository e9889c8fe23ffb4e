"""`open_slide`: the slide at a path through the backend its content calls for.

The TIFF reader (`tiff_reader.TiffSlide`) takes Aperio SVS, PANDA, OME-TIFF and
generic pyramidal TIFFs; OpenSlide (`openslide_reader`) what tifffile cannot
read or decodes wrongly (NDPI, MRXS, SCN, BIF, Philips); wsidicom
(`dicom_reader`) DICOM WSI. All three share the types of `base` and keep to
the `limits` of one slide, so this module imports them and none imports it.
"""

from __future__ import annotations

import os
from typing import Optional


from histopipe.core import storage
from histopipe.slides import dicom_reader
from histopipe.slides.limits import ReadLimits
from histopipe.slides.openslide_reader import OpenSlideSlide
from histopipe.slides.tiff_reader import TiffSlide

# OpenSlide's names of the formats the TIFF reader handles itself; anything
# else OpenSlide recognises (hamamatsu, mirax, leica, ventana, philips, dicom,
# ...) goes to OpenSlide.
TIFF_READER_FORMATS = ("aperio", "generic-tiff")


def choose_backend(path: str, backend: str = "auto") -> str:
  """"tifffile", "openslide" or "wsidicom" for `path`: by content (a folder of
  `.dcm` files or a DICOM file: wsidicom; else OpenSlide's format detection)
  unless `backend` names one. Objects in a bucket go to tifffile, which reads
  byte ranges; OpenSlide and the DICOM reader read local files only."""
  if backend != "auto":
    return backend
  if storage.is_url(path):
    return "tifffile"
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
    return dicom_reader.DicomSlide(path, limits)
  if chosen == "openslide":
    if os.path.isdir(path):  # a DICOM folder: OpenSlide opens a slide from any one instance
      path = (dicom_reader.instance_files(path) or [path])[0]
    return OpenSlideSlide(path, limits)
  return TiffSlide(path, limits)
