"""Region reads equal a full decode; bad files fail with a reason."""

import numpy as np
import pytest
import tifffile

from histopipe.slides import resample
from histopipe.slides.base import SlideError
from histopipe.slides.tiff_reader import TiffSlide


def test_levels_downsamples_and_mpp(tiny_dataset):
  _, slides = tiny_dataset
  with TiffSlide(slides[0].path) as slide:
    assert [l.downsample for l in slide.levels] == [1.0, 4.0, 16.0]
    assert (slide.levels[0].width, slide.levels[0].height) == (1024, 768)
    assert slide.mpp == pytest.approx(0.5)


@pytest.mark.parametrize("level,x,y,w,h", [
    (0, 250, 250, 40, 300),  # crosses TIFF tile borders
    (1, 0, 0, 256, 192),  # the whole level
    (1, 37, 11, 64, 64),
    (2, 10, 5, 30, 20),
])
def test_region_equals_full_level_decode(tiny_dataset, level, x, y, w, h):
  _, slides = tiny_dataset
  full = tifffile.imread(slides[3].path, key=level)
  with TiffSlide(slides[3].path) as slide:
    region = slide.read_region(level, x, y, w, h)
  np.testing.assert_array_equal(region, full[y:y + h, x:x + w])


def test_region_outside_the_slide_is_white(tiny_dataset):
  _, slides = tiny_dataset
  with TiffSlide(slides[0].path) as slide:
    region = slide.read_region(1, 240, 180, 32, 32)  # level 1 is 256 x 192
  assert region.shape == (32, 32, 3)
  assert (region[12:, :] == 255).all() and (region[:, 16:] == 255).all()


def test_grayscale_stripped_tiff_reads_as_rgb(tmp_path):
  gray = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
  path = str(tmp_path / "gray.tif")
  tifffile.imwrite(path, gray, rowsperstrip=16)
  with TiffSlide(path) as slide:
    region = slide.read_region(0, 5, 10, 20, 30)
  assert region.shape == (30, 20, 3)
  np.testing.assert_array_equal(region[..., 0], gray[10:40, 5:25])
  np.testing.assert_array_equal(region[..., 2], gray[10:40, 5:25])


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is not a tiff at all", "not a readable TIFF"),
])
def test_bad_files_raise_slide_error_with_reason(tmp_path, content, reason):
  path = tmp_path / "bad.tiff"
  path.write_bytes(content)
  with pytest.raises(SlideError, match=reason):
    TiffSlide(str(path))


def test_truncated_slide_raises_on_read(tiny_dataset, tmp_path):
  _, slides = tiny_dataset
  data = open(slides[0].path, "rb").read()
  path = tmp_path / "truncated.tiff"
  path.write_bytes(data[: len(data) // 3])
  with pytest.raises(SlideError):
    with TiffSlide(str(path)) as slide:
      slide.read_level(0)


def test_missing_file(tmp_path):
  with pytest.raises(SlideError, match="file not found"):
    TiffSlide(str(tmp_path / "nope.tiff"))


def _rgb(height, width, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_subifd_pyramid_levels_are_found(tmp_path):
  """OME-TIFF / recent libvips: reduced levels live in SubIFDs of page 0."""
  level0 = _rgb(256, 384)
  levels = [level0, level0[::2, ::2].copy(), level0[::4, ::4].copy()]
  path = str(tmp_path / "subifd.tif")
  with tifffile.TiffWriter(path) as tif:
    tif.write(levels[0], tile=(64, 64), photometric="rgb", subifds=2)
    for level in levels[1:]:
      tif.write(level, tile=(64, 64), photometric="rgb", subfiletype=1)
  with TiffSlide(path) as slide:
    assert [l.downsample for l in slide.levels] == [1.0, 2.0, 4.0]
    for index, expected in enumerate(levels):
      np.testing.assert_array_equal(slide.read_level(index), expected)


def test_svs_like_layout_keeps_levels_and_drops_label_and_macro(tmp_path):
  """Aperio order: base, stripped thumbnail, reduced levels, label, macro."""
  level0 = _rgb(512, 768, seed=1)
  level1 = level0[::4, ::4].copy()
  thumbnail = level0[::8, ::8].copy()
  path = str(tmp_path / "aperio.svs")
  with tifffile.TiffWriter(path) as tif:
    tif.write(level0, tile=(128, 128), photometric="rgb",
              description="Aperio Image Library v12.0.5 \n768x512 |MPP = 0.499")
    tif.write(thumbnail, photometric="rgb", rowsperstrip=16)
    tif.write(level1, tile=(64, 64), photometric="rgb")
    tif.write(_rgb(100, 300, seed=2), photometric="rgb", subfiletype=1)  # label
    tif.write(_rgb(200, 600, seed=3), photometric="rgb", subfiletype=9)  # macro
  with TiffSlide(path) as slide:
    assert [(l.width, l.height) for l in slide.levels] == [(768, 512), (192, 128), (96, 64)]
    np.testing.assert_array_equal(slide.read_level(1), level1)
    np.testing.assert_array_equal(slide.read_level(2), thumbnail)


# 0: every level is shrunk one TIFF segment at a time (the path for levels
# too large to decode whole); None: the default, whole small levels at once.
THUMBNAIL_PATHS = pytest.mark.parametrize("whole_level_max_pixels", [0, None],
                                          ids=["segment_by_segment", "whole_level"])


def _set_thumbnail_path(monkeypatch, whole_level_max_pixels):
  if whole_level_max_pixels is not None:
    monkeypatch.setattr(resample, "WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS",
                        whole_level_max_pixels)


@THUMBNAIL_PATHS
def test_thumbnail_of_a_large_single_level_slide(tmp_path, monkeypatch,
                                                  whole_level_max_pixels):
  _set_thumbnail_path(monkeypatch, whole_level_max_pixels)
  image = np.full((1200, 2000, 3), 240, np.uint8)
  image[300:900, 500:1500] = (200, 100, 160)
  path = str(tmp_path / "single.tif")
  tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb")
  with TiffSlide(path) as slide:
    thumbnail, downsample = slide.thumbnail(max_side=500)
  assert downsample == 4.0 and thumbnail.shape == (300, 500, 3)
  np.testing.assert_array_equal(thumbnail[80:220, 130:370],
                                np.broadcast_to((200, 100, 160), (140, 240, 3)))
  assert (thumbnail[:70] == 240).all()


@THUMBNAIL_PATHS
def test_thumbnail_with_a_factor_that_does_not_divide_the_tiff_tile(tmp_path, monkeypatch,
                                                                     whole_level_max_pixels):
  _set_thumbnail_path(monkeypatch, whole_level_max_pixels)
  image = np.full((900, 2600, 3), 240, np.uint8)
  image[:, 1000:1600] = (200, 100, 160)  # a band whose edges fall inside TIFF tiles
  path = str(tmp_path / "odd.tif")
  tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb")
  with TiffSlide(path) as slide:
    thumbnail, downsample = slide.thumbnail(max_side=520)  # factor 5
  assert downsample == 5.0 and thumbnail.shape == (180, 520, 3)
  # Output column k is level columns 5k..5k+4: the band is exactly columns 200..319.
  band = (thumbnail[:, :, 1] < 170).all(axis=0)
  assert np.flatnonzero(band).tolist() == list(range(200, 320))


def test_whole_level_and_segment_thumbnails_are_equal(tmp_path, monkeypatch):
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (701, 1303, 3), dtype=np.uint8)  # edges cut blocks
  path = str(tmp_path / "noise.tif")
  tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb")
  with TiffSlide(path) as slide:
    whole, whole_downsample = slide.thumbnail(max_side=300)  # factor 5
  monkeypatch.setattr(resample, "WHOLE_LEVEL_THUMBNAIL_MAX_PIXELS", 0)
  with TiffSlide(path) as slide:
    segments, segment_downsample = slide.thumbnail(max_side=300)
  assert whole_downsample == segment_downsample == 5.0
  np.testing.assert_array_equal(whole, segments)
  # And both are the plain mean of each block, the clipped edge blocks included.
  assert whole[-1, -1].tolist() == np.floor(
      image[700:, 1300:].reshape(-1, 3).mean(axis=0) + 0.5).astype(int).tolist()


def test_area_average_is_exact_past_the_int32_range_of_its_sums():
  white = np.full((3000, 3000, 3), 255, np.uint8)  # 9 Mpx: 255 * 9e6 > 2**31
  white[-1, -1] = 0
  small = resample.area_average(white, 7)
  assert small.shape == (429, 429, 3)
  assert (small[:-1] == 255).all() and (small[:, :-1] == 255).all()
  # The last block is 4 x 4 (3000 = 428 * 7 + 4) with one black pixel.
  assert small[-1, -1].tolist() == [round(255 * 15 / 16)] * 3


@pytest.mark.parametrize("factor", [2, 3, 4, 6, 8, 9, 16])
def test_area_average_is_the_block_mean_rounded_half_up(factor):
  """OpenCV's float area resize (factors up to 8) and the summed-area table
  (edges, larger factors) give the same exact block means: checked against
  integer arithmetic, on noise, on images full of ties and with clipped
  edge blocks."""
  rng = np.random.default_rng(factor)
  for image in (rng.integers(0, 256, (5 * factor + 3, 7 * factor + 1, 3), dtype=np.uint8),
                (rng.integers(0, 2, (4 * factor, 6 * factor, 3)) * 255).astype(np.uint8),
                (rng.integers(0, 4, (4 * factor + 1, 3 * factor, 3)) * 85).astype(np.uint8)):
    height, width = image.shape[:2]
    expected = np.empty((-(-height // factor), -(-width // factor), 3), np.int64)
    for row in range(expected.shape[0]):
      for col in range(expected.shape[1]):
        block = image[row * factor:(row + 1) * factor, col * factor:(col + 1) * factor]
        count = block.shape[0] * block.shape[1]
        expected[row, col] = (2 * block.reshape(-1, 3).astype(np.int64).sum(0) + count) // (
            2 * count)
    np.testing.assert_array_equal(resample.area_average(image, factor), expected)


@pytest.mark.parametrize("dtype,described", [
    (np.int8, "signed 8-bit pixels (int8)"),
    (np.uint16, "unsigned 16-bit pixels (uint16)"),
    (np.float32, "32-bit floating-point pixels (float32)"),
])
def test_pixels_other_than_unsigned_8_bit_are_named_as_what_they_are(tmp_path, dtype, described):
  """An int8 OME-TIFF is 8-bit, but signed: the reason says so rather than "not 8-bit"."""
  path = str(tmp_path / "pixels.ome.tif")
  tifffile.imwrite(path, np.zeros((64, 96), dtype), ome=True)
  with tifffile.TiffFile(path) as tif:
    assert tif.is_ome and tif.pages[0].dtype == dtype
  with pytest.raises(SlideError) as rejected:
    TiffSlide(path)
  assert rejected.value.reason == f"{described}: only unsigned 8-bit pixels are read"
