"""`histopipe tile`: bags, rejects, summary and previews from the same Beam code."""

import csv
import dataclasses
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from histopipe.bags import bag_features
from histopipe.data import synthetic
from histopipe.slides.previews import draw_preview
from histopipe.slides.tiff_reader import TiffSlide
from histopipe.beam.tile_job import bag_files
from histopipe.slides.tiling import choose_scale, tile_slide
from histopipe import cli
from histopipe.core.configs import TilingConfig

TINY_CONFIG = {"tiling": {"tiles_per_slide": 4, "tile_size": 32}}


def test_tile_command_writes_bags_rejects_summary_and_previews(tiny_dataset, tmp_path,
                                                               capsys):
  source, slides = tiny_dataset
  data = tmp_path / "data"
  shutil.copytree(source, data)
  (data / "train_images" / "broken.tiff").write_bytes(b"not a tiff")
  config = tmp_path / "config.json"
  config.write_text(json.dumps(TINY_CONFIG))
  out = tmp_path / "out"
  assert cli.main(["tile", "--data", str(data), "--out", str(out),
                   "--config", str(config)]) == 0
  assert f"{len(slides)} of {len(slides) + 1} slides tiled" in capsys.readouterr().out

  summary = json.loads((out / "summary.json").read_text())
  assert summary["slides_total"] == len(slides) + 1
  assert summary["slides_written"] == len(slides) and summary["slides_rejected"] == 1
  assert summary["seconds"] > 0

  with open(out / "rejects.csv") as f:
    rejects = list(csv.DictReader(f))
  assert [r["image_id"] for r in rejects] == ["broken"]
  assert rejects[0]["reason"].startswith("slide file has no label")

  bags, compression = bag_files(str(out))
  assert bags and compression == ""  # tiles are PNG/JPEG already: no gzip by default
  records = list(tf.data.TFRecordDataset(bags, compression_type=compression))
  ids = sorted(tf.train.Example.FromString(r.numpy()).features.feature[
      bag_features.IMAGE_ID].bytes_list.value[0].decode() for r in records)
  assert ids == sorted(s.image_id for s in slides)
  assert summary["tiles_written"] == sum(
      sum(tf.train.Example.FromString(r.numpy()).features.feature[
          bag_features.TILE_VALID].int64_list.value) for r in records)
  previews = sorted(os.path.basename(p) for p in glob.glob(str(out / "previews" / "*.png")))
  assert previews == sorted(f"{s.image_id}.png" for s in slides)


def test_tile_command_without_previews_draws_none(tiny_dataset, tmp_path, capsys):
  source, slides = tiny_dataset
  config = tmp_path / "config.json"
  config.write_text(json.dumps(TINY_CONFIG))
  out = tmp_path / "out"
  assert cli.main(["tile", "--data", str(source), "--out", str(out), "--config", str(config),
                   "--no-previews"]) == 0
  printed = capsys.readouterr().out
  assert f"{len(slides)} of {len(slides)} slides tiled" in printed and "previews" not in printed
  assert not (out / "previews").exists()
  assert json.loads((out / "summary.json").read_text())["slides_written"] == len(slides)


def test_preview_outlines_each_chosen_tile(tiny_dataset):
  _, slides = tiny_dataset
  config = TilingConfig(tiles_per_slide=3, tile_size=32, level=1, min_tissue_fraction=0.5)
  bag = tile_slide(slides[2].path, config).bag
  with TiffSlide(slides[2].path) as slide:
    thumbnail = slide.read_level(2)
  preview = draw_preview(thumbnail, bag, thumbnail_downsample=16.0, min_width=512)
  scale = 512 / thumbnail.shape[1]
  assert preview.shape[1] == 512
  for x, y, valid in zip(bag.tile_x, bag.tile_y, bag.tile_valid):
    if valid:
      # The outline's top-left corner is drawn in the outline colour.
      px, py = int(round(x / 16 * scale)), int(round(y / 16 * scale))
      assert tuple(preview[py, px]) == (0, 160, 60)


def _generic_pyramid(path, level0):
  """libvips/OpenSlide-style: downsample 2 per level."""
  levels = synthetic.pyramid(level0, downsamples=(1, 2, 4, 8))
  synthetic.write_pyramidal_tiff(str(path), levels, level0_mpp=0.25)


def test_level_chosen_by_scale_mpp_first_then_downsample_or_index(tmp_path):
  level0 = synthetic.render_tissue(np.random.default_rng(0), 512, 768,
                                   synthetic.morphology_for_grade(2))
  path = tmp_path / "generic.tiff"
  _generic_pyramid(path, level0)
  base = TilingConfig(tile_size=16, tiles_per_slide=2)
  with TiffSlide(str(path)) as slide:
    assert [l.downsample for l in slide.levels] == [1.0, 2.0, 4.0, 8.0]
    assert choose_scale(slide, dataclasses.replace(base, level=3)) == (slide.levels[3], 8.0)
    # 0.25 um/px at level 0: 1 um/px is downsample 4, 2 um/px (the default) 8.
    assert choose_scale(slide, dataclasses.replace(base, target_mpp=1.0)) == (slide.levels[2], 4.0)
    assert choose_scale(slide, base) == (slide.levels[3], 8.0)
    # Within the tolerance the level is cut as it is; the MPP rule comes first.
    assert choose_scale(slide, dataclasses.replace(base, target_mpp=0.6)) == (slide.levels[1], 2.0)
    no_mpp = dataclasses.replace(base, target_mpp=0.0, level_downsample=4)
    assert choose_scale(slide, no_mpp) == (slide.levels[2], 4.0)
    # Between levels: the finer level, read larger and shrunk to the scale.
    between = choose_scale(slide, dataclasses.replace(base, target_mpp=1.5))
    assert between.level == slide.levels[2] and between.downsample == 6.0
    assert between.read_factor == 1.5
    # Finer than level 0: level 0 as it is.
    assert choose_scale(slide, dataclasses.replace(base, target_mpp=0.1)) == (slide.levels[0], 1.0)


def test_absurd_mpp_is_unknown_and_falls_back(tmp_path):
  path = tmp_path / "absurd.tiff"
  level0 = np.full((256, 256, 3), 200, np.uint8)
  synthetic.write_pyramidal_tiff(str(path), synthetic.pyramid(level0, (1, 4)), level0_mpp=300)
  with TiffSlide(str(path)) as slide:
    assert slide.mpp == 0.0
    config = TilingConfig(tile_size=16, target_mpp=2.0, level_downsample=4.0)
    assert choose_scale(slide, config).level.index == 1


def test_level_index_beyond_the_pyramid_is_a_reject_reason(tiny_dataset):
  _, slides = tiny_dataset
  with TiffSlide(slides[0].path) as slide:
    with pytest.raises(Exception, match="slide has 3 level"):
      choose_scale(slide, TilingConfig(level=5))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _decoded_tiles(bag):
  return [tf.io.decode_png(t).numpy() for t, v in zip(bag.tiles, bag.tile_valid) if v]


def test_a_single_level_slide_is_tiled_like_its_pyramid(tmp_path):
  """The same tissue as a PANDA pyramid (1, 4, 16) and as level 0 alone: by
  scale, the single-level file is read at level 0 and shrunk by 4, and its
  tiles are the pyramid's level 1 (before JPEG) at the same places.
  Which tiles are chosen may differ: the tissue masks come from thumbnails
  of different levels."""
  level0 = synthetic.render_tissue(np.random.default_rng(3), 1024, 1536,
                                   synthetic.morphology_for_grade(3))
  pyramid_path, single_path = str(tmp_path / "pyramid.tiff"), str(tmp_path / "single.tiff")
  synthetic.write_pyramidal_tiff(pyramid_path, synthetic.pyramid(level0), jpeg_quality=95)
  synthetic.write_pyramidal_tiff(single_path, [level0], jpeg_quality=95)
  tiling = TilingConfig(tile_size=32, tiles_per_slide=6)
  from_pyramid = tile_slide(pyramid_path, tiling).bag
  from_single = tile_slide(single_path, tiling).bag
  assert from_pyramid.level == 1 and from_single.level == 0
  assert from_pyramid.level_downsample == from_single.level_downsample == 4.0
  assert sum(from_single.tile_valid) == 6
  level1 = synthetic.pyramid(level0)[1]
  for tile, x, y in zip(_decoded_tiles(from_single), from_single.tile_x, from_single.tile_y):
    assert x % 128 == 0 and y % 128 == 0  # the grid of 32 px tiles at downsample 4
    assert _psnr(tile, level1[y // 4:y // 4 + 32, x // 4:x // 4 + 32]) >= 33.0


def test_slides_of_two_scanners_are_tiled_at_the_same_magnification(tmp_path):
  """The same tissue scanned at 0.25 um/px (pyramid 1, 2, 4, 8) and at
  0.5 um/px (PANDA's 1, 4, 16): both are cut at 2 um/px, with tiles covering
  the same microns of tissue."""
  fine = synthetic.render_tissue(np.random.default_rng(4), 2048, 3072,
                                 synthetic.morphology_for_grade(2))
  coarse = synthetic.pyramid(fine, (1, 2))[1]
  fine_path, coarse_path = str(tmp_path / "fine.tiff"), str(tmp_path / "coarse.tiff")
  synthetic.write_pyramidal_tiff(fine_path, synthetic.pyramid(fine, (1, 2, 4, 8)),
                                 level0_mpp=0.25, jpeg_quality=95)
  synthetic.write_pyramidal_tiff(coarse_path, synthetic.pyramid(coarse), level0_mpp=0.5,
                                 jpeg_quality=95)
  tiling = TilingConfig(tile_size=32, tiles_per_slide=6)
  fine_bag, coarse_bag = tile_slide(fine_path, tiling).bag, tile_slide(coarse_path, tiling).bag
  assert fine_bag.mpp * fine_bag.level_downsample == pytest.approx(2.0, rel=1e-3)
  assert coarse_bag.mpp * coarse_bag.level_downsample == pytest.approx(2.0, rel=1e-3)
  assert sum(fine_bag.tile_valid) == sum(coarse_bag.tile_valid) == 6
  assert (fine_bag.level, coarse_bag.level) == (3, 1)
  at_2um = synthetic.pyramid(fine, (1, 8))[1]  # the tissue at 2 um/px, before JPEG
  for bag in (fine_bag, coarse_bag):
    for tile, x, y in zip(_decoded_tiles(bag), bag.tile_x, bag.tile_y):
      column, row = round(x * bag.mpp / 2.0), round(y * bag.mpp / 2.0)
      assert column % 32 == 0 and row % 32 == 0
      assert _psnr(tile, at_2um[row:row + 32, column:column + 32]) >= 30.0


def test_records_carry_the_checksums_tensorflow_verifies():
  """The bags' CRC32C from google_crc32c (beam/tfrecord.py) equal
  crcmod's, Beam's own fallback, and TensorFlow's reader accepts the records."""
  import crcmod.predefined
  from apache_beam.io import tfrecordio
  from histopipe.beam import tfrecord as beam_tfrecord
  saved = tfrecordio._default_crc32c_fn.fn
  try:
    assert beam_tfrecord.use_fast_checksum()
    reference = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
    for data in (b"", b"bag", np.random.default_rng(3).bytes(100_003)):
      assert (tfrecordio._TFRecordUtil._masked_crc32c(data)
              == tfrecordio._TFRecordUtil._masked_crc32c(data, crc32c_fn=reference))
  finally:
    tfrecordio._default_crc32c_fn.fn = saved


def test_every_tile_bags_count_the_tissue_tiles_their_cap_left_out(tiny_dataset, tmp_path,
                                                                   capsys):
  """tiles_per_slide 0 with max_tiles: each slide's row of slides.csv says how
  many tissue tiles its bag left out, the counts add up to the bags' tiles
  and the uncapped bags', and the command says so."""
  source, slides = tiny_dataset
  tiling = {"tiles_per_slide": 0, "tile_size": 32, "level": 0, "max_tiles": 40}
  config = tmp_path / "config.json"
  config.write_text(json.dumps({"tiling": tiling}))
  out = tmp_path / "out"
  assert cli.main(["tile", "--data", str(source), "--out", str(out),
                   "--config", str(config)]) == 0
  with open(out / "slides.csv") as f:
    rows = {r["image_id"]: r for r in csv.DictReader(f)}
  uncapped = dataclasses.replace(TilingConfig(), **{**tiling, "max_tiles": 10 ** 6})
  over = 0
  for slide in slides:
    tissue_tiles = len(tile_slide(slide.path, uncapped).bag.tiles)
    assert int(rows[slide.image_id]["tiles"]) == min(tissue_tiles, 40)
    assert int(rows[slide.image_id]["tiles_over_cap"]) == max(0, tissue_tiles - 40)
    over += max(0, tissue_tiles - 40)
  assert over > 0
  assert f"tiling.max_tiles left out {over} tissue tiles" in capsys.readouterr().out
  summary = json.loads((out / "summary.json").read_text())
  assert summary["tiles_over_cap"] == over
