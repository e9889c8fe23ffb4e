"""DICOM WSI through wsidicom: a DICOM slide built from a real Aperio scan
(CMU-1-Small-Region, ../shared/fixtures/real-slides/) by `tests/dicom_wsi.py`
gives the SVS's own pixels where its frames are the SVS's JPEG tiles, and
OpenSlide's reading of the same DICOM (an independent reader) at the coarser
levels wsidicom made. A slide is a folder of `.dcm` instances or any one of
them; the data folder lists it once.
"""

import dataclasses
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from histopipe.data import datasets
from histopipe.slides.base import SlideError
from histopipe.slides.slide_reader import choose_backend, open_slide
from histopipe.slides.tiling import tile_slide
from histopipe.core.configs import TilingConfig
from histopipe.serving.slide_predictions import find_slides

from tests.dicom_wsi import write_dicom_wsi

import openslide  # noqa: E402  (a required dependency: missing, these tests fail)

REAL_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-slides"
SVS = REAL_SLIDES / "CMU-1-Small-Region.svs"
SVS_MPP = 0.499

# Level 0, lossless tiles: the comparison is of the readers, not our encoder.
AT_LEVEL_0 = TilingConfig(level=0, tile_size=128, tiles_per_slide=6, min_tissue_fraction=0.05,
                          tile_format="png")


def _decoded(tile: bytes) -> np.ndarray:
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(tile, np.uint8), cv2.IMREAD_COLOR),
                      cv2.COLOR_BGR2RGB)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _padded(image: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
  out = np.full((size, size, 3), 255, np.uint8)
  part = image[y:y + size, x:x + size, :3]
  out[:part.shape[0], :part.shape[1]] = part
  return out


def _valid(bag):
  return [i for i, v in enumerate(bag.tile_valid) if v]


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory) -> Path:
  """CMU-1-Small-Region as a DICOM WSI folder: level 0 from the SVS's JPEG
  tiles as they are, levels 1-4 (2x each) made by wsidicom."""
  folder = tmp_path_factory.mktemp("dicom") / "CMU-1-Small-Region"
  files = write_dicom_wsi(str(SVS), str(folder), SVS_MPP, add_missing_levels=True)
  assert len(files) == 5
  return folder


def test_the_dicom_folder_is_read_by_wsidicom_with_openslides_levels(dicom_slide):
  assert choose_backend(str(dicom_slide)) == "wsidicom"
  with open_slide(str(dicom_slide)) as ours, \
       openslide.OpenSlide(sorted(dicom_slide.iterdir())[0]) as reference:
    assert [(l.width, l.height) for l in ours.levels] == list(reference.level_dimensions)
    np.testing.assert_allclose([l.downsample for l in ours.levels],
                               reference.level_downsamples, rtol=0.01)
    assert ours.mpp == pytest.approx(float(reference.properties["openslide.mpp-x"]))
    assert ours.mpp == pytest.approx(SVS_MPP)


def test_dicom_tiles_are_the_svs_pixels(dicom_slide):
  """Level 0's frames are the SVS's JPEG tiles: each DICOM tile equals the
  SVS's pixels at the same place, decoded by tifffile, exactly."""
  bag = tile_slide(str(dicom_slide), AT_LEVEL_0).bag
  assert bag.level == 0 and bag.mpp == pytest.approx(SVS_MPP)
  valid = _valid(bag)
  assert len(valid) == AT_LEVEL_0.tiles_per_slide
  svs = tifffile.imread(str(SVS), key=0)
  for i in valid:
    np.testing.assert_array_equal(_decoded(bag.tiles[i]),
                                  _padded(svs, bag.tile_x[i], bag.tile_y[i], bag.tile_size),
                                  err_msg=f"tile {i}")


def test_dicom_at_2um_takes_wsidicoms_level_and_matches_openslide(dicom_slide):
  """At 2 um/px the pipeline cuts level 2 (1.996 um/px) as it is: each tile is
  OpenSlide's reading of that DICOM level, and shows the SVS's level 0 at
  the same place shrunk 4x. wsidicom made level 2 from level 1, each by its
  own resampling and a JPEG q80 re-encode, so that match is ~26 dB, not
  more; the same tile 16 px (level 0) to the side scores ~12-13 dB."""
  at_2um = TilingConfig(target_mpp=2.0, tile_size=128, tiles_per_slide=4,
                        min_tissue_fraction=0.05, tile_format="png")
  bag = tile_slide(str(dicom_slide), at_2um).bag
  assert bag.level == 2 and bag.level_downsample == pytest.approx(4.0)
  svs = tifffile.imread(str(SVS), key=0)
  with openslide.OpenSlide(sorted(dicom_slide.iterdir())[0]) as reference:
    for i in _valid(bag):
      ours = _decoded(bag.tiles[i])
      x, y = bag.tile_x[i], bag.tile_y[i]
      theirs = np.asarray(reference.read_region((x, y), 2, (128, 128)))
      assert _psnr(ours, theirs[..., :3]) >= 33, i
      shrunk = cv2.resize(_padded(svs, x, y, 512), (128, 128), interpolation=cv2.INTER_AREA)
      assert _psnr(ours, shrunk) >= 22, i


def test_one_instance_file_names_the_whole_slide_and_openslide_can_be_forced(dicom_slide):
  """Any one `.dcm` of the slide opens all its levels; `tiling.reader:
  openslide` reads the same folder through OpenSlide, with the same pixels."""
  one_file = sorted(dicom_slide.iterdir())[-1]
  with open_slide(str(one_file)) as slide:
    assert len(slide.levels) == 5
  ours = tile_slide(str(dicom_slide), AT_LEVEL_0).bag
  forced = tile_slide(str(dicom_slide), dataclasses.replace(AT_LEVEL_0, reader="openslide")).bag
  assert (forced.tile_x, forced.tile_y) == (ours.tile_x, ours.tile_y)
  for i in _valid(ours):
    assert _psnr(_decoded(forced.tiles[i]), _decoded(ours.tiles[i])) >= 33, i


def test_a_damaged_dicom_slide_is_rejected_with_its_reason(tmp_path, dicom_slide):
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "level.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 8)
  with pytest.raises(SlideError, match="DICOM"):
    tile_slide(str(broken), AT_LEVEL_0)
  # A frame larger than the decode budget is refused before it is read.
  with pytest.raises(SlideError, match="tiling.max_segment_bytes"):
    tile_slide(str(dicom_slide), dataclasses.replace(AT_LEVEL_0, max_segment_bytes=100_000))


def test_a_data_folder_lists_each_dicom_slide_once(tmp_path, dicom_slide):
  """A folder of instances is one slide named by the folder; loose instances
  of one series (the fixture's VOLUME and THUMBNAIL files) are one slide; the
  run's input fingerprint covers every instance file."""
  data = tmp_path / "data"
  shutil.copytree(dicom_slide, data / "CMU-1-Small-Region")
  for name in ("boxes_0.dcm", "boxes_1.dcm"):
    shutil.copyfile(REAL_SLIDES / name, data / name)
  (data / "grades.csv").write_text("image_id,data_provider,isup_grade,gleason_score\n"
                                   "CMU-1-Small-Region,radboud,1,3+3\nboxes_0,radboud,0,0+0\n")
  slides = datasets.slide_files(str(data), "")
  assert [Path(p).name for p in slides] == ["CMU-1-Small-Region", "boxes_0.dcm"]
  tasks = datasets.plan(str(data), "panda", "", "grades.csv")
  assert {t.image_id: bool(t.path) for t in tasks} == {"CMU-1-Small-Region": True,
                                                       "boxes_0": True}
  # predict/score given the folder, or the DICOM folder itself.
  assert find_slides([str(data)]) == [str(data / "CMU-1-Small-Region"), str(data / "boxes_0.dcm")]
  assert find_slides([str(data / "CMU-1-Small-Region")]) == [str(data / "CMU-1-Small-Region")]
  files = datasets.input_files(str(data), "panda", "", "grades.csv")
  assert len(files) == 1 + 5 + 2
  before = datasets.input_fingerprint(str(data), "panda", "", "grades.csv")
  instance = sorted((data / "CMU-1-Small-Region").iterdir())[0]
  with open(instance, "ab") as f:
    f.write(b"\0\0")
  os.utime(instance, (1, 1))
  assert datasets.input_fingerprint(str(data), "panda", "", "grades.csv") != before
