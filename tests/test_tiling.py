"""One slide -> one bag: best tiles, padding, coordinates, determinism, rejects."""

import dataclasses

import cv2
import numpy as np
import pytest
import tifffile

from histopipe.data import synthetic
from histopipe.slides.base import SlideError
from histopipe.slides.tiff_reader import TiffSlide
from histopipe.slides.tiling import tile_slide
from histopipe.core.configs import TilingConfig

TINY = TilingConfig(tiles_per_slide=6, tile_size=32, level=1, min_tissue_fraction=0.5)


def _decode(png: bytes) -> np.ndarray:
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                      cv2.COLOR_BGR2RGB)


def test_bag_holds_best_tiles_with_level0_coordinates(tiny_dataset):
  _, slides = tiny_dataset
  bag = tile_slide(slides[0].path, TINY).bag
  assert len(bag.tiles) == len(bag.tile_valid) == len(bag.tile_x) == 6
  assert bag.level == 1 and bag.level_downsample == 4.0 and bag.tile_size == 32
  assert (bag.slide_width, bag.slide_height) == (1024, 768)
  real = [i for i, v in enumerate(bag.tile_valid) if v]
  assert real, "a synthetic biopsy always has tissue"
  assert bag.tile_tissue[:len(real)] == sorted(bag.tile_tissue[:len(real)], reverse=True)
  with TiffSlide(slides[0].path) as slide:
    for i in real:
      x, y = bag.tile_x[i] // 4, bag.tile_y[i] // 4  # level 1 pixels
      expected = slide.read_region(1, x, y, 32, 32)
      np.testing.assert_array_equal(_decode(bag.tiles[i]), expected)  # PNG is lossless


def test_bag_is_padded_with_marked_white_tiles(tiny_dataset):
  _, slides = tiny_dataset
  bag = tile_slide(slides[0].path, dataclasses.replace(TINY, tiles_per_slide=40)).bag
  padding = [i for i, v in enumerate(bag.tile_valid) if not v]
  assert len(bag.tiles) == 40 and padding
  for i in padding:
    assert (_decode(bag.tiles[i]) == 255).all()
    assert bag.tile_x[i] == bag.tile_y[i] == -1 and bag.tile_tissue[i] == 0.0


def test_same_slide_and_config_give_the_same_bag_byte_for_byte(tiny_dataset):
  _, slides = tiny_dataset
  assert tile_slide(slides[5].path, TINY).bag == tile_slide(slides[5].path, TINY).bag


def test_every_tile_bag_takes_each_tissue_tile_once_unpadded_up_to_its_cap(tiny_dataset):
  """tiles_per_slide 0: the real tiles of a bag padded far beyond the slide's
  tissue, in the same order, without padding; max_tiles keeps the first ones
  and says how many it left out."""
  _, slides = tiny_dataset
  fine = dataclasses.replace(TINY, level=0, min_tissue_fraction=0.25)  # a 32 x 24 grid
  every = tile_slide(slides[2].path, dataclasses.replace(fine, tiles_per_slide=0))
  padded = tile_slide(slides[2].path, dataclasses.replace(fine, tiles_per_slide=800)).bag
  real = sum(padded.tile_valid)
  assert 20 < real < 800 and every.tiles_over_cap == 0
  assert every.bag.tile_valid == [1] * real
  assert every.bag.tiles == padded.tiles[:real]
  assert (every.bag.tile_x, every.bag.tile_y) == (padded.tile_x[:real], padded.tile_y[:real])
  capped = tile_slide(slides[2].path, dataclasses.replace(fine, tiles_per_slide=0, max_tiles=5))
  assert capped.bag.tiles == padded.tiles[:5] and capped.tiles_over_cap == real - 5


def test_every_tile_bags_take_their_image_statistics_from_their_most_tissued_tiles(
    tiny_dataset, monkeypatch):
  from histopipe.slides import tiling
  _, slides = tiny_dataset
  monkeypatch.setattr(tiling, "STATISTICS_TILES", 4)
  fine = dataclasses.replace(TINY, level=0, min_tissue_fraction=0.25)
  every = tile_slide(slides[2].path, dataclasses.replace(fine, tiles_per_slide=0)).bag
  first_four = tile_slide(slides[2].path, dataclasses.replace(fine, tiles_per_slide=4)).bag
  assert len(every.tiles) > 4 and every.image_stats == first_four.image_stats


def test_jpeg_tiles_and_resizing(tiny_dataset):
  _, slides = tiny_dataset
  config = dataclasses.replace(TINY, tile_format="jpeg", resize_to=16)
  bag = tile_slide(slides[1].path, config).bag
  assert bag.tiles[0][:2] == b"\xff\xd8"  # JPEG magic
  assert _decode(bag.tiles[0]).shape == (16, 16, 3)
  assert bag.tile_size == 32  # the size cut at the level, before resizing


def test_blank_slide_is_rejected_for_no_tissue(tmp_path):
  blank = np.full((512, 512, 3), 245, np.uint8)
  path = str(tmp_path / "blank.tiff")
  synthetic.write_pyramidal_tiff(path, synthetic.pyramid(blank))
  with pytest.raises(SlideError, match="no tissue"):
    tile_slide(path, TINY)


def test_slide_smaller_than_one_tile_is_rejected(tmp_path):
  path = str(tmp_path / "small.tiff")
  tifffile.imwrite(path, np.full((20, 20, 3), 200, np.uint8), photometric="rgb")
  with pytest.raises(SlideError, match="smaller than one 32 px tile"):
    tile_slide(path, dataclasses.replace(TINY, level=0))
