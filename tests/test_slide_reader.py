"""Region reads equal a full decode; bad files fail with a reason."""

import numpy as np
import pytest
import tifffile

from components.slide_reader import SlideError, TiffSlide


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
