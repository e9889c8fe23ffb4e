"""JPEG tiles cut from the slide's own JPEG data (tiling.lossless_jpeg_crop).

What a user relies on: the tile shows the slide's pixels (checked against
OpenSlide and tifffile, readers that share no code with the cut), it is the
scanner's JPEG and not a second generation (its quantization tables are the
slide's, not quality 90's; a whole TIFF tile is the TIFF tile's own bytes), any
decoder reads it in the right colours (TensorFlow's, which the Trainer uses),
and a tile that cannot be cut so is decoded and encoded as before.
"""

import struct
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from histopipe.data import synthetic
from histopipe.slides import jpeg_crop
from histopipe.slides.tiff_reader import TiffSlide
from histopipe.slides.tiling import tile_slide
from histopipe.core.configs import TilingConfig

REAL_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-slides"
# Aperio: RGB JPEG TIFF tiles of 240 px with shared JPEGTables, no colour transform.
APERIO = REAL_SLIDES / "CMU-1-Small-Region.svs"
# A cut's pixels differ from the whole tile's decode only where the chroma
# upsampling at its border sees other neighbours (measured mean <= 0.3 here).
MAX_MEAN_DIFFERENCE = 1.0


def _rgb(encoded: bytes) -> np.ndarray:
  bgr = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
  assert bgr is not None, "tile does not decode"
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _quantization_tables(jpeg: bytes) -> list:
  """The DQT segments' tables (precision/id byte and values), read by walking
  the JPEG's markers: independent of libjpeg."""
  tables, position = [], 2
  while position + 4 <= len(jpeg) and jpeg[position] == 0xFF:
    marker = jpeg[position + 1]
    (length,) = struct.unpack(">H", jpeg[position + 2:position + 4])
    if marker == 0xDB:
      body = jpeg[position + 4:position + 2 + length]
      while body:
        size = 1 + (128 if body[0] >> 4 else 64)
        tables.append(body[:size])
        body = body[size:]
    if marker == 0xDA:  # start of scan: no tables after it
      break
    position += 2 + length
  return tables


def _aperio_config(lossless: bool) -> TilingConfig:
  # 80 px: three tiles a TIFF tile across, on its 16 px MCU grid.
  return TilingConfig(tiles_per_slide=0, tile_size=80, level=0, min_tissue_fraction=0.0,
                      tile_format="jpeg", jpeg_quality=90, lossless_jpeg_crop=lossless)


def test_aperio_tiles_are_the_scanners_jpeg_showing_openslides_pixels():
  bag = tile_slide(str(APERIO), _aperio_config(True)).bag
  with tifffile.TiffFile(str(APERIO)) as tiff:
    scanner_tables = _quantization_tables(tiff.pages[0].jpegtables)
  slide = openslide.OpenSlide(str(APERIO))
  level0_width, level0_height = slide.dimensions
  cut = 0
  for tile, x, y in zip(bag.tiles, bag.tile_x, bag.tile_y):
    inside_one_tiff_tile = x // 240 == (x + 79) // 240 and y // 240 == (y + 79) // 240
    inside_slide = x + 80 <= level0_width and y + 80 <= level0_height
    expected = np.asarray(slide.read_region((x, y), 0, (80, 80)).convert("RGB"))
    difference = np.abs(_rgb(tile).astype(np.int16) - expected.astype(np.int16)).mean()
    if inside_one_tiff_tile and inside_slide:
      cut += 1
      assert _quantization_tables(tile) == scanner_tables, (x, y)
      assert difference <= MAX_MEAN_DIFFERENCE, (x, y, difference)
  assert cut > 100  # the test saw the cut, not only the fallback


def test_without_lossless_crop_tiles_are_encoded_at_the_configured_quality():
  bag = tile_slide(str(APERIO), _aperio_config(False)).bag
  with tifffile.TiffFile(str(APERIO)) as tiff:
    scanner_tables = _quantization_tables(tiff.pages[0].jpegtables)
  assert all(_quantization_tables(tile) != scanner_tables for tile in bag.tiles)


def test_tensorflow_reads_a_cut_rgb_tile_in_its_colours():
  """Aperio's tiles are RGB without a marker saying so; the cut carries one,
  or TF (and any libjpeg) would take R, G, B for Y, Cb, Cr."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with TiffSlide(str(APERIO)) as slide:
    (cut,) = slide.read_regions_jpeg(0, [(480, 720, 80, 80)])
    pixels = slide.read_region(0, 480, 720, 80, 80)
  assert cut is not None
  decoded = tf.io.decode_jpeg(cut, channels=3).numpy()
  assert np.abs(decoded.astype(np.int16) - pixels.astype(np.int16)).mean() <= MAX_MEAN_DIFFERENCE
  slide = openslide.OpenSlide(str(APERIO))
  reference = np.asarray(slide.read_region((480, 720), 0, (80, 80)).convert("RGB"))
  assert np.abs(decoded.astype(np.int16) - reference.astype(np.int16)).mean() <= MAX_MEAN_DIFFERENCE


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
  """A PANDA-layout slide: tiled JPEG (YCbCr 4:2:0, 256 px TIFF tiles, no shared tables)."""
  path = tmp_path_factory.mktemp("jpeg_crop") / "slide.tiff"
  rng = np.random.default_rng(3)
  level0 = synthetic.render_tissue(rng, 1536, 2048, synthetic.morphology_for_grade(3),
                                   tumour_fraction=0.5)
  levels = [level0] + [cv2.resize(level0, (2048 // d, 1536 // d), interpolation=cv2.INTER_AREA)
                       for d in (4, 16)]
  synthetic.write_pyramidal_tiff(str(path), levels)
  return str(path)


def test_a_tile_that_is_a_whole_tiff_tile_is_its_bytes(synthetic_slide):
  config = TilingConfig(tiles_per_slide=0, tile_size=256, level=0, min_tissue_fraction=0.0,
                        tile_format="jpeg")
  bag = tile_slide(synthetic_slide, config).bag
  with tifffile.TiffFile(synthetic_slide) as tiff:
    page = tiff.pages[0]
    across = -(-page.imagewidth // page.tilewidth)
    for tile, x, y in zip(bag.tiles, bag.tile_x, bag.tile_y):
      index = (y // 256) * across + x // 256
      tiff.filehandle.seek(page.dataoffsets[index])
      assert tile == tiff.filehandle.read(page.databytecounts[index])


def test_cuts_off_the_mcu_grid_across_tiff_tiles_or_past_the_edge_are_refused(synthetic_slide):
  with TiffSlide(synthetic_slide) as slide:
    width, height = slide.levels[0].width, slide.levels[0].height
    on_grid, off_grid, across, past_right, past_bottom, whole, beside = slide.read_regions_jpeg(0, [
        (272, 16, 64, 64),
        (264, 16, 64, 64),  # 4:2:0 MCUs are 16 px
        (224, 0, 64, 64),  # across two TIFF tiles
        (width - 32, 0, 64, 64), (0, height, 64, 64),  # past the edge
        (256, 0, 256, 256),  # the TIFF tile on_grid lies in, whole
        (256, 64, 64, 64)])  # another cut of that tile, in the same call
    assert (off_grid, across, past_right, past_bottom) == (None, None, None, None)
    for cut, (x, y, size) in ((on_grid, (272, 16, 64)), (whole, (256, 0, 256)),
                              (beside, (256, 64, 64))):
      assert cut is not None
      difference = np.abs(_rgb(cut).astype(np.int16)
                          - slide.read_region(0, x, y, size, size).astype(np.int16)).mean()
      assert difference <= MAX_MEAN_DIFFERENCE, (x, y, difference)


def test_tiles_that_cannot_be_cut_are_encoded_and_show_the_same_slide(synthetic_slide):
  """Tiles of 72 px fall off the 16 px grid but at multiples of 144: the bag
  mixes cuts and encoded tiles, each showing tifffile's pixels."""
  config = TilingConfig(tiles_per_slide=0, tile_size=72, level=0, min_tissue_fraction=0.0,
                        tile_format="jpeg", jpeg_quality=95)
  bag = tile_slide(synthetic_slide, config).bag
  with TiffSlide(synthetic_slide) as slide:
    for tile, x, y in zip(bag.tiles, bag.tile_x, bag.tile_y):
      expected = slide.read_region(0, x, y, 72, 72)
      difference = np.abs(_rgb(tile).astype(np.int16) - expected.astype(np.int16)).mean()
      assert difference <= 4.0, (x, y, difference)
  with tifffile.TiffFile(synthetic_slide) as tiff:
    tiff.filehandle.seek(tiff.pages[0].dataoffsets[0])
    page_tables = _quantization_tables(tiff.filehandle.read(tiff.pages[0].databytecounts[0]))
  cut = [t for t in bag.tiles if _quantization_tables(t) == page_tables]
  assert 0 < len(cut) < len(bag.tiles)


def test_crop_refuses_a_rectangle_outside_the_jpeg():
  ok, encoded = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
  assert ok
  jpeg = encoded.tobytes()
  inside, outside, whole = jpeg_crop.crop(jpeg, [(16, 16, 32, 32), (48, 0, 32, 16),
                                                 (0, 0, 64, 64)])
  assert outside is None and whole == jpeg
  assert jpeg_crop.read_header(inside) == jpeg_crop.JpegHeader(32, 32, 16, 16)
  assert jpeg_crop.crop(b"not a jpeg", [(0, 0, 16, 16)]) == [None]
  assert jpeg_crop.read_header(jpeg) == jpeg_crop.JpegHeader(64, 64, 16, 16)
  ok, wide = cv2.imencode(".jpg", np.zeros((24, 40, 3), np.uint8))
  assert jpeg_crop.declared_size(jpeg) == (64, 64) and jpeg_crop.declared_size(wide.tobytes()) == (40, 24)
  assert jpeg_crop.declared_size(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan, no frame
