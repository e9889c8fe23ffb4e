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

from histopipe.components import bag_features, synthetic
from histopipe.components.previews import draw_preview
from histopipe.components.slide_reader import TiffSlide
from histopipe.components.tile_job import bag_files
from histopipe.components.tiling import choose_level, tile_slide
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


def test_level_chosen_by_index_downsample_or_mpp(tmp_path):
  level0 = synthetic.render_tissue(np.random.default_rng(0), 512, 768,
                                   synthetic.morphology_for_grade(2))
  path = tmp_path / "generic.tiff"
  _generic_pyramid(path, level0)
  base = TilingConfig(tile_size=16, tiles_per_slide=2)
  with TiffSlide(str(path)) as slide:
    assert [l.downsample for l in slide.levels] == [1.0, 2.0, 4.0, 8.0]
    assert choose_level(slide, dataclasses.replace(base, level=3)).index == 3
    assert choose_level(slide, dataclasses.replace(base, level_downsample=4)).index == 2
    # 0.25 um/px at level 0: 1 um/px is downsample 4.
    assert choose_level(slide, dataclasses.replace(base, target_mpp=1.0)).index == 2
    assert choose_level(slide, dataclasses.replace(base, target_mpp=0.6)).index == 1


def test_absurd_mpp_is_unknown_and_falls_back(tmp_path):
  path = tmp_path / "absurd.tiff"
  level0 = np.full((256, 256, 3), 200, np.uint8)
  synthetic.write_pyramidal_tiff(str(path), synthetic.pyramid(level0, (1, 4)), level0_mpp=300)
  with TiffSlide(str(path)) as slide:
    assert slide.mpp == 0.0
    config = TilingConfig(tile_size=16, target_mpp=2.0, level_downsample=4.0)
    assert choose_level(slide, config).index == 1


def test_level_index_beyond_the_pyramid_is_a_reject_reason(tiny_dataset):
  _, slides = tiny_dataset
  with TiffSlide(slides[0].path) as slide:
    with pytest.raises(Exception, match="slide has 3 level"):
      choose_level(slide, TilingConfig(level=5))


def test_records_carry_the_checksums_tensorflow_verifies():
  """The bags' CRC32C from google_crc32c (components/beam_tfrecord.py) equal
  crcmod's, Beam's own fallback, and TensorFlow's reader accepts the records."""
  import crcmod.predefined
  from apache_beam.io import tfrecordio
  from histopipe.components import beam_tfrecord
  saved = tfrecordio._default_crc32c_fn.fn
  try:
    assert beam_tfrecord.use_fast_checksum()
    reference = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
    for data in (b"", b"bag", np.random.default_rng(3).bytes(100_003)):
      assert (tfrecordio._TFRecordUtil._masked_crc32c(data)
              == tfrecordio._TFRecordUtil._masked_crc32c(data, crc32c_fn=reference))
  finally:
    tfrecordio._default_crc32c_fn.fn = saved
