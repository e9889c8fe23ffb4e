"""The synthetic generator writes real PANDA-format files with grade-dependent morphology."""

import csv
import os

import numpy as np
import tifffile

from histopipe.data import synthetic
from histopipe.data.labels import isup_from_gleason
from histopipe.slides.tissue import tissue_mask


def test_writes_three_level_jpeg_tiled_rgb_pyramid(tiny_dataset):
  _, slides = tiny_dataset
  with tifffile.TiffFile(slides[0].path) as tif:
    pages = list(tif.pages)
    assert len(pages) == 3
    widths = [p.imagewidth for p in pages]
    assert [widths[0] / w for w in widths] == [1.0, 4.0, 16.0]
    for page in pages:
      assert page.is_tiled
      assert page.compression == tifffile.COMPRESSION.JPEG
      # JPEG tiles store colour as YCbCr, as scanners do.
      assert page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
      assert page.samplesperpixel == 3 and page.dtype == np.uint8
    numerator, denominator = pages[0].tags["XResolution"].value
    assert abs(1e4 / (numerator / denominator) - synthetic.LEVEL0_MPP) < 1e-6


def test_label_file_matches_panda_columns_and_is_consistent(tiny_dataset):
  out, slides = tiny_dataset
  with open(os.path.join(out, "train.csv")) as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == ["image_id", "data_provider", "isup_grade", "gleason_score"]
    rows = list(reader)
  assert len(rows) == len(slides) == 12
  assert sorted(int(r["isup_grade"]) for r in rows) == sorted(list(range(6)) * 2)
  for row in rows:
    assert row["data_provider"] in ("radboud", "karolinska")
    assert isup_from_gleason(row["gleason_score"]) == int(row["isup_grade"])
    assert len(row["image_id"]) == 32
    assert os.path.exists(os.path.join(out, "train_images", row["image_id"] + ".tiff"))


def test_same_seed_gives_identical_files(tmp_path):
  first = synthetic.write_dataset(str(tmp_path / "a"), 2, seed=5, level0_size=(512, 512))
  second = synthetic.write_dataset(str(tmp_path / "b"), 2, seed=5, level0_size=(512, 512))
  for a, b in zip(first, second):
    assert a.image_id == b.image_id
    assert open(a.path, "rb").read() == open(b.path, "rb").read()


def _dark_fraction(image: np.ndarray) -> float:
  """Share of tissue pixels that are dark (nuclei): what a model can see."""
  mask = tissue_mask(image)
  dark = image.astype(int).sum(-1) < 400
  return float((dark & mask).sum() / max(mask.sum(), 1))


def test_morphology_depends_on_grade():
  rng_seed = 11
  fractions = []
  for grade in range(6):
    image = synthetic.render_tissue(np.random.default_rng(rng_seed), 768, 1024,
                                    synthetic.morphology_for_grade(grade))
    fractions.append(_dark_fraction(image))
  # Nuclear density rises with grade: each grade darker than the one below.
  assert all(a < b for a, b in zip(fractions, fractions[1:])), fractions
