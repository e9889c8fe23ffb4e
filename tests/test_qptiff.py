"""Akoya (PerkinElmer) QPTIFF: a TIFF whose pages carry `Software: PerkinElmer-QPI` and a
`<PerkinElmer-QPI-ImageDescription>` XML, laid out as tifffile's `_series_qpi` reads it:
the full-resolution pages (one per channel; one RGB page for a brightfield scan), an RGB
thumbnail, the reduced levels (again one page per channel, each half the size), then the
overview (macro) and label images. Brightfield (RGB) and single-channel 8-bit scans are
read as TIFF slides; a multiplex fluorescence scan (a page per channel, 16-bit on Vectra
and Polaris) is rejected naming what it holds.
"""

import numpy as np
import pytest
import tifffile

from histopipe.core.configs import TilingConfig
from histopipe.slides.base import SlideError
from histopipe.slides.slide_reader import choose_backend, open_slide
from histopipe.slides.tiling import tile_slide

QPI_SOFTWARE = "PerkinElmer-QPI"


def _qpi_description(image_type: str, name: str = "") -> str:
  return ('<?xml version="1.0" encoding="utf-8"?>\r\n<PerkinElmer-QPI-ImageDescription>'
          "<DescriptionVersion>2</DescriptionVersion>"
          "<AcquisitionSoftware>Vectra Polaris</AcquisitionSoftware>"
          f"<ImageType>{image_type}</ImageType>"
          + (f"<Name>{name}</Name>" if name else "")
          + "</PerkinElmer-QPI-ImageDescription>")


def _write_qptiff(path, channels, levels: int = 3) -> None:
  """`channels`: (name, image) pairs, 2-D images for fluorescence or one RGB image for
  brightfield; each level halves the previous one."""
  rng = np.random.default_rng(9)
  # The thumbnail is RGB whatever the scan: the first channel, at 1/8, in 8 bits.
  first = channels[0][1][::8, ::8]
  first = (first // (np.iinfo(first.dtype).max // 255)).astype(np.uint8)
  thumbnail = first if first.ndim == 3 else np.repeat(first[..., None], 3, -1)
  qpi = dict(software=QPI_SOFTWARE, metadata=None)
  with tifffile.TiffWriter(path) as tif:
    for level in range(levels):
      step = 2 ** level
      for name, image in channels:
        tif.write(image[::step, ::step], tile=(64, 64), compression="zlib",
                  photometric="rgb" if image.ndim == 3 else "minisblack",
                  description=_qpi_description(
                      "FullResolution" if level == 0 else "ReducedResolution", name),
                  subfiletype=0 if level == 0 else 1, **qpi)
      if level == 0:
        tif.write(thumbnail, photometric="rgb", description=_qpi_description("Thumbnail"),
                  subfiletype=1, **qpi)
    for image_type, shape in (("Overview", (100, 300, 3)), ("Label", (80, 80, 3))):
      tif.write(rng.integers(0, 256, shape, dtype=np.uint8), photometric="rgb",
                description=_qpi_description(image_type), subfiletype=1, **qpi)


def _tissue(shape, dtype=np.uint8, seed=0):
  """Pink-ish noise on white: tissue in the middle, glass around it."""
  rng = np.random.default_rng(seed)
  image = np.full(shape, np.iinfo(dtype).max, dtype)
  middle = tuple(slice(s // 4, 3 * s // 4) for s in shape[:2])
  image[middle] = rng.integers(0, np.iinfo(dtype).max // 2, image[middle].shape, dtype=dtype)
  return image


def test_the_helper_writes_what_tifffile_calls_a_qptiff(tmp_path):
  path = tmp_path / "bright.qptiff"
  _write_qptiff(path, [("", _tissue((384, 512, 3)))])
  with tifffile.TiffFile(path) as tif:
    assert tif.is_qpi
    assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Macro", "Label"]
    assert len(tif.series[0].levels) == 3


def test_a_brightfield_qptiff_is_read_as_a_tiff_pyramid(tmp_path):
  image = _tissue((384, 512, 3))
  path = str(tmp_path / "bright.qptiff")
  _write_qptiff(path, [("", image)])
  assert choose_backend(path) == "tifffile"
  with open_slide(path) as slide:
    # The three levels and the thumbnail (1/8, an RGB copy of the scan); not the
    # overview or label.
    assert [(l.width, l.height) for l in slide.levels] == [(512, 384), (256, 192), (128, 96),
                                                           (64, 48)]
    for index, step in enumerate((1, 2, 4)):
      np.testing.assert_array_equal(slide.read_level(index), image[::step, ::step])
  bag = tile_slide(path, TilingConfig(level=0, tile_size=64, tiles_per_slide=4,
                                      tile_format="png")).bag
  assert sum(bag.tile_valid) == 4


def test_a_single_channel_8_bit_qptiff_is_read_as_grey(tmp_path):
  """One channel: its own levels, never the RGB thumbnail (a rendering of the scan in
  other pixels) as its coarsest level."""
  image = _tissue((384, 512))
  path = str(tmp_path / "dapi.qptiff")
  _write_qptiff(path, [("DAPI", image)])
  with open_slide(path) as slide:
    assert [(l.width, l.height) for l in slide.levels] == [(512, 384), (256, 192), (128, 96)]
    np.testing.assert_array_equal(slide.read_level(1), np.repeat(image[::2, ::2, None], 3, -1))


@pytest.mark.parametrize("dtype,pixels", [(np.uint16, "unsigned 16-bit"),
                                          (np.uint8, "unsigned 8-bit")])
def test_a_multiplex_fluorescence_qptiff_is_rejected_naming_its_channels(tmp_path, dtype,
                                                                         pixels):
  names = ["DAPI", "Opal 520", "Opal 690"]
  path = str(tmp_path / "multiplex.qptiff")
  _write_qptiff(path, [(name, _tissue((384, 512), dtype, seed)) for seed, name in
                       enumerate(names)])
  with pytest.raises(SlideError) as rejected:
    open_slide(path)
  assert rejected.value.reason == (
      f"a QPTIFF of 3 channels ({', '.join(names)}) of {pixels} pixels, a multiplex "
      "fluorescence scan: only RGB or single-channel 8-bit QPTIFF are read")
