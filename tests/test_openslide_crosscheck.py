"""Tiles in a bag against OpenSlide, a reader that shares no code with ours.

With resizing off, every valid tile of a bag must show the pixels that
OpenSlide's `read_region((tile_x, tile_y), level, (tile_size, tile_size))`
returns: exactly for PNG tiles, within JPEG error for JPEG tiles. This checks
the TIFF segment decoding and stitching of slides/slide_reader.py, the
level-0 coordinates written by slides/tiling.py and the RGB channel order
of the encoded tiles in one go.

Both readers decode the same JPEG-compressed TIFF tiles (the project through
tifffile/imagecodecs, OpenSlide through its bundled libjpeg-turbo). Measured
with openslide-python 1.4.7 / openslide-bin 4.0.1.2 and imagecodecs 2025.3.30,
the two decoders agree bit for bit on every level of every synthetic slide, so
the PNG comparison is exact (max abs difference 0), not "+-1".

Exactness needs integer level downsamples. When a level's size is not the
level-0 size divided exactly (a 1000 x 750 slide has a 250 x 188 level 1),
OpenSlide takes the downsample as the mean of the width and height ratios
(3.9947 there, where the bag says 4.0, the width ratio), so
`tile_x / downsample` is fractional at that level and OpenSlide resamples the
region at a sub-pixel offset (measured on a 1000 x 750 synthetic slide, PNG
tiles of 48 px at level 1: max abs diff 22, mean 0.14). Level 0 is always
exact; the last test checks it on such a slide.
"""

import math

import cv2
import numpy as np
import pytest

import openslide  # noqa: E402  (a required dependency: missing, these tests fail)

from PIL import Image  # noqa: E402

from histopipe.data import synthetic  # noqa: E402
from histopipe.slides.tiling import tile_slide  # noqa: E402
from histopipe.core.configs import TilingConfig  # noqa: E402

# (level, tile_size). min_tissue_fraction=0 and enough tiles_per_slide make the
# bag hold every tile of the grid, so partial last rows/columns (outside the
# level: white in the bag, transparent in OpenSlide) and background are checked
# too. The sizes are not multiples of 8: tiles aligned with the TIFF's 8x8 (and
# 16x16 chroma) JPEG blocks re-encode almost losslessly (PSNR >= 42 dB
# measured for 64/64/16 px tiles) and would understate the JPEG error. Level-0
# tiles of 100 px cross the TIFF's 256 px tile borders.
GEOMETRIES = [(0, 100), (1, 50), (2, 20)]

# JPEG tiles (the config's default quality 90) against OpenSlide, per tile,
# measured on all 12 slides of `tiny_dataset` for the GEOMETRIES above:
#   level 0 / 100 px: mean abs diff <= 2.72, PSNR >= 37.0 dB, max abs diff 34
#   level 1 /  50 px: mean abs diff <= 4.02, PSNR >= 33.7 dB, max abs diff 29
#   level 2 /  20 px: mean abs diff <= 4.06, PSNR >= 33.5 dB, max abs diff 31
# (the worst tiles are tissue edges with dense nuclei; JPEG's 4:2:0 chroma
# subsampling costs most there). The bounds leave ~1.5x / 3.5 dB of margin.
# A per-pixel max bound is not used: single pixels at sharp colour edges
# legitimately move by ~30. Mean and PSNR alone would not see a one-pixel
# shift or swapped R/B on pale tiles (measured: a 1 px shift gives a mean abs
# diff of only 1.1 on some level-0 tissue tiles, swapped channels 1.9), so
# tissue tiles must also match the right region better than those wrong ones.
JPEG_MAX_MEAN_ABS_DIFF = 6.0
JPEG_MIN_PSNR_DB = 30.0
TISSUE = 0.25  # tiles with at least this tissue fraction get the shift check


def _config(level: int, tile_size: int, tile_format: str, tiles: int) -> TilingConfig:
  return TilingConfig(tiles_per_slide=tiles, tile_size=tile_size, level=level,
                      min_tissue_fraction=0.0, tile_format=tile_format,
                      jpeg_quality=90, resize_to=0)


def _decode(encoded: bytes) -> np.ndarray:
  bgr = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
  assert bgr is not None, "tile does not decode"
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _openslide_tile(slide, x: int, y: int, level: int, size: int) -> np.ndarray:
  """OpenSlide's region, with its transparent outside-the-level part on white
  (the bag pads that part with white)."""
  region = slide.read_region((x, y), level, (size, size))
  white = Image.new("RGBA", region.size, (255, 255, 255, 255))
  return np.asarray(Image.alpha_composite(white, region).convert("RGB"))


def _grid(slide, level: int, tile_size: int) -> set:
  """Level-0 top-left corners of every tile of the grid over `level`."""
  width, height = slide.level_dimensions[level]
  downsample = int(slide.level_downsamples[level])
  return {(col * tile_size * downsample, row * tile_size * downsample)
          for row in range(-(-height // tile_size))
          for col in range(-(-width // tile_size))}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
  return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def _valid_tiles(bag):
  return [i for i, valid in enumerate(bag.tile_valid) if valid]


def test_openslide_sees_the_synthetic_pyramid_as_histopipe_does(tiny_dataset):
  """The premise of the exact comparisons: same levels, integer downsamples."""
  _, slides = tiny_dataset
  for info in slides:
    assert openslide.OpenSlide.detect_format(info.path) == "generic-tiff"
    with openslide.OpenSlide(info.path) as slide:
      assert slide.level_count == len(synthetic.PANDA_DOWNSAMPLES)
      assert slide.level_downsamples == tuple(map(float, synthetic.PANDA_DOWNSAMPLES))
      assert slide.dimensions == (1024, 768)
      assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(
          synthetic.LEVEL0_MPP)


@pytest.mark.parametrize("level,tile_size", GEOMETRIES)
def test_png_tiles_equal_openslide_read_region(tiny_dataset, level, tile_size):
  _, slides = tiny_dataset
  for info in slides:
    with openslide.OpenSlide(info.path) as slide:
      grid = _grid(slide, level, tile_size)
      bag = tile_slide(info.path, _config(level, tile_size, "png", len(grid))).bag
      assert bag.level == level and bag.tile_size == tile_size
      assert bag.level_downsample == slide.level_downsamples[level]
      valid = _valid_tiles(bag)
      # Every grid tile, each once, at the corners OpenSlide's level sizes give.
      assert {(bag.tile_x[i], bag.tile_y[i]) for i in valid} == grid
      assert len(valid) == len(grid)
      for i in valid:
        expected = _openslide_tile(slide, bag.tile_x[i], bag.tile_y[i], level, tile_size)
        np.testing.assert_array_equal(
            _decode(bag.tiles[i]), expected,
            err_msg=f"{info.image_id} level {level} tile at level-0 "
                    f"({bag.tile_x[i]}, {bag.tile_y[i]})")


@pytest.mark.parametrize("level,tile_size", GEOMETRIES)
def test_jpeg_tiles_match_openslide_within_jpeg_error(tiny_dataset, level, tile_size):
  _, slides = tiny_dataset
  worst_mad, worst_psnr, shift_checked = 0.0, math.inf, 0
  for info in slides:
    with openslide.OpenSlide(info.path) as slide:
      downsample = int(slide.level_downsamples[level])
      grid = _grid(slide, level, tile_size)
      bag = tile_slide(info.path, _config(level, tile_size, "jpeg", len(grid))).bag
      valid = _valid_tiles(bag)
      assert {(bag.tile_x[i], bag.tile_y[i]) for i in valid} == grid
      for i in valid:
        x, y = bag.tile_x[i], bag.tile_y[i]
        where = f"{info.image_id} level {level} tile at level-0 ({x}, {y})"
        tile = _decode(bag.tiles[i])
        assert bag.tiles[i][:2] == b"\xff\xd8", where  # JPEG, not PNG
        expected = _openslide_tile(slide, x, y, level, tile_size)
        mad, psnr = _mean_abs_diff(tile, expected), _psnr(tile, expected)
        worst_mad, worst_psnr = max(worst_mad, mad), min(worst_psnr, psnr)
        assert mad <= JPEG_MAX_MEAN_ABS_DIFF, f"{where}: mean abs diff {mad:.2f}"
        assert psnr >= JPEG_MIN_PSNR_DB, f"{where}: PSNR {psnr:.1f} dB"
        if bag.tile_tissue[i] < TISSUE:
          continue  # near-flat glass: shifts look alike, JPEG noise decides
        shift_checked += 1
        wrong = {"R and B swapped": expected[..., ::-1]}
        for dy in (-1, 0, 1):
          for dx in (-1, 0, 1):
            if dx or dy:
              wrong[f"shifted by ({dx}, {dy}) level px"] = _openslide_tile(
                  slide, x + dx * downsample, y + dy * downsample, level, tile_size)
        for name, other in wrong.items():
          assert mad < _mean_abs_diff(tile, other), (
              f"{where}: matches OpenSlide's region {name} as well as the "
              f"right one ({mad:.2f})")
  assert shift_checked, "no tissue tile was checked against shifted regions"
  print(f"level {level} / {tile_size} px JPEG vs OpenSlide: worst mean abs diff "
        f"{worst_mad:.2f}, worst PSNR {worst_psnr:.1f} dB")


@pytest.fixture(scope="module")
def unaligned_slide(tmp_path_factory):
  """A slide whose size is a multiple of neither the 256 px TIFF tile nor 16."""
  out = tmp_path_factory.mktemp("unaligned")
  return synthetic.write_dataset(str(out), slides=1, seed=3, level0_size=(1000, 750))[0]


@pytest.mark.parametrize("tile_size", [100, 256])
def test_level0_png_tiles_equal_openslide_on_unaligned_slide(unaligned_slide, tile_size):
  """Partial TIFF tiles on the right and bottom edges of level 0 (see the
  module docstring for why levels > 0 of such a slide are not compared)."""
  with openslide.OpenSlide(unaligned_slide.path) as slide:
    assert slide.dimensions == (1000, 750)
    grid = _grid(slide, 0, tile_size)
    bag = tile_slide(unaligned_slide.path, _config(0, tile_size, "png", len(grid))).bag
    valid = _valid_tiles(bag)
    assert {(bag.tile_x[i], bag.tile_y[i]) for i in valid} == grid
    for i in valid:
      np.testing.assert_array_equal(
          _decode(bag.tiles[i]),
          _openslide_tile(slide, bag.tile_x[i], bag.tile_y[i], 0, tile_size),
          err_msg=f"level-0 tile at ({bag.tile_x[i]}, {bag.tile_y[i]})")
