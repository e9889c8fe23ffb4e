"""Every real slide file in ../shared/fixtures/real-slides/ (files from public
test suites, provenance in its SOURCES.md) is either tiled or rejected with a
precise reason, and the tiles equal what an independent reader returns:
OpenSlide's `read_region` where OpenSlide reads the file (exact where the
source is lossless, PSNR >= 33 dB where it is JPEG), tifffile's whole-image
read where OpenSlide refuses it.

The files are named here, not globbed: a missing or changed fixture fails
(first and loudly in the presence check, which needs no slide library),
it is never skipped. OpenSlide is an install requirement (setup.py), so a
missing OpenSlide fails the tests that compare with it, too.
"""

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from histopipe.slides.base import SlideError
from histopipe.slides.slide_reader import choose_backend
from histopipe.slides.tiling import tile_slide
from histopipe.core.configs import TilingConfig

REAL_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-slides"
SOURCES = "SOURCES.md"

# Small files: level 0, 64 px PNG tiles (lossless, so the comparison is of the
# readers, not of our encoder).
TILING = TilingConfig(level=0, tile_size=64, tiles_per_slide=4, min_tissue_fraction=0.05,
                      tile_format="png")

# file -> (backend, what must happen: "written", or the words the reason must hold)
EXPECTED = {
    "CMU-1-Small-Region.svs": ("tifffile", "written"),
    "test3-DAPI-2.ndpi": ("openslide", "written"),
    "kidney-48-5.tif": ("tifffile", "written"),
    "boxes.tiff": ("tifffile", "written"),
    "small.svs": ("tifffile", "smaller than one 64 px tile"),
    "unreadable.svs": ("tifffile", "smaller than one 64 px tile"),
    "unopenable.tiff": ("tifffile", "smaller than one 64 px tile"),
    "boxes_0.dcm": ("wsidicom", "smaller than one 64 px tile"),
    "boxes_1.dcm": ("wsidicom", "smaller than one 64 px tile"),
    "broken.svs": ("tifffile", "not a readable TIFF"),
}
# OpenSlide's `detect_format` of each file (None: OpenSlide does not open it),
# which decides the reference reader: OpenSlide where it opens the file, tifffile where not.
OPENSLIDE_FORMAT = {
    "CMU-1-Small-Region.svs": "aperio",
    "test3-DAPI-2.ndpi": "hamamatsu",
    "kidney-48-5.tif": None,
    "boxes.tiff": "generic-tiff",
    "small.svs": "aperio",
    "unreadable.svs": "aperio",
    "unopenable.tiff": "generic-tiff",
    "boxes_0.dcm": "dicom",
    "boxes_1.dcm": "dicom",
    "broken.svs": None,
}
# The files tiled whose levels OpenSlide also reads.
WRITTEN_AND_OPENSLIDE = ("CMU-1-Small-Region.svs", "boxes.tiff", "test3-DAPI-2.ndpi")
# Where the source pixels are JPEG, two decoders may round differently.
JPEG_SOURCES = {"CMU-1-Small-Region.svs", "test3-DAPI-2.ndpi"}


def _fixture(name: str) -> str:
  """The fixture's path; a missing one fails the test that needs it, naming it."""
  path = REAL_SLIDES / name
  if not path.is_file():
    pytest.fail(f"{path}: real-slide fixture missing (see {REAL_SLIDES / SOURCES})")
  return str(path)


def _openslide():
  """OpenSlide, imported only by the tests that compare with it."""
  import openslide  # pylint: disable=import-outside-toplevel
  return openslide


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _decoded(tile: bytes) -> np.ndarray:
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(tile, np.uint8), cv2.IMREAD_COLOR),
                      cv2.COLOR_BGR2RGB)


def _on_white(rgba: np.ndarray) -> np.ndarray:
  """OpenSlide's RGBA (transparent outside the scan) on a white background."""
  alpha = rgba[..., 3:4] / 255.0
  return np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)


def _reference_tile(name: str, x: int, y: int, size: int) -> np.ndarray:
  """The tile at level-0 (x, y) from a reader that shares no code with ours."""
  path = _fixture(name)
  if OPENSLIDE_FORMAT[name]:
    with _openslide().OpenSlide(path) as slide:
      return _on_white(np.asarray(slide.read_region((x, y), 0, (size, size))))
  image = tifffile.imread(path, key=0)
  out = np.full((size, size, 3), 255, np.uint8)
  part = image[y:y + size, x:x + size, :3]
  out[:part.shape[0], :part.shape[1]] = part
  return out


def _sources_table() -> dict:
  """SOURCES.md's table: file -> (bytes, sha256[:16]); a row may list several
  files, comma-separated, with their sizes and digests in the same order."""
  listed = {}
  for line in (REAL_SLIDES / SOURCES).read_text(encoding="utf-8").splitlines():
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if len(cells) < 3 or cells[0] in ("file", "") or set(cells[0]) <= set("-: "):
      continue
    names, sizes, digests = (cell.split(", ") for cell in cells[:3])
    assert len(names) == len(sizes) == len(digests), line
    for name, size, digest in zip(names, sizes, digests):
      listed[name] = (int(size), digest)
  return listed


def test_the_fixture_folder_holds_every_file_the_tests_expect():
  """Fails (never skips) when the folder, SOURCES.md or any file is missing, a
  file is there that no test covers, or a file is not the one SOURCES.md lists."""
  assert REAL_SLIDES.is_dir(), f"{REAL_SLIDES}: the real-slide fixtures are missing"
  assert (REAL_SLIDES / SOURCES).is_file(), f"{REAL_SLIDES}: {SOURCES} (provenance) is missing"
  present = {p.name for p in REAL_SLIDES.iterdir()} - {SOURCES}
  missing = sorted(set(EXPECTED) - present)
  assert not missing, f"{REAL_SLIDES}: missing fixture(s) {missing}"
  assert present == set(EXPECTED), f"not covered here: {sorted(present - set(EXPECTED))}"
  assert set(OPENSLIDE_FORMAT) == set(EXPECTED)
  listed = _sources_table()
  assert set(listed) == set(EXPECTED), f"{SOURCES} lists {sorted(listed)}"
  for name, (size, digest) in listed.items():
    content = (REAL_SLIDES / name).read_bytes()
    assert (len(content), hashlib.sha256(content).hexdigest()[:16]) == (size, digest), (
        f"{name} is not the file {SOURCES} lists")


@pytest.mark.parametrize("name", sorted(OPENSLIDE_FORMAT))
def test_openslide_detects_each_file_as_the_choice_of_reference_assumes(name):
  """OpenSlide is the reference where it opens the file, tifffile where it does not."""
  assert _openslide().OpenSlide.detect_format(_fixture(name)) == OPENSLIDE_FORMAT[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_real_slide_is_tiled_like_the_reference_or_rejected_with_its_reason(name):
  path = _fixture(name)
  backend, expected = EXPECTED[name]
  assert choose_backend(path) == backend
  if expected != "written":
    with pytest.raises(SlideError) as rejected:
      tile_slide(path, TILING)
    assert expected in rejected.value.reason
    return
  bag = tile_slide(path, TILING).bag
  valid = [i for i, v in enumerate(bag.tile_valid) if v]
  assert valid, "no tile kept"
  for i in valid:
    ours = _decoded(bag.tiles[i])
    reference = _reference_tile(name, bag.tile_x[i], bag.tile_y[i], bag.tile_size)
    if name in JPEG_SOURCES:
      assert _psnr(ours, reference) >= 33, (name, i)
    else:
      np.testing.assert_array_equal(ours, reference, err_msg=f"{name} tile {i}")


def test_mpp_is_read_from_the_vendors_metadata():
  """Aperio keeps it in the image description, Hamamatsu in resolution tags;
  SOURCES.md states both, and OpenSlide reads both as `openslide.mpp-x`."""
  for name, stated in (("CMU-1-Small-Region.svs", 0.499), ("test3-DAPI-2.ndpi", 0.228)):
    path = _fixture(name)
    mpp = tile_slide(path, TILING).bag.mpp
    assert mpp == pytest.approx(stated, abs=1e-3), name
    with _openslide().OpenSlide(path) as reference:
      assert mpp == pytest.approx(float(reference.properties["openslide.mpp-x"]), rel=1e-4), name


def test_a_reader_can_be_forced_in_the_config():
  """tifffile decodes NDPI's restart-marker JPEG strips wrongly; forcing it
  gives a rejection with tifffile's reason, never wrong pixels silently."""
  import dataclasses
  forced = dataclasses.replace(TILING, reader="tifffile")
  name = "test3-DAPI-2.ndpi"
  try:
    bag = tile_slide(_fixture(name), forced).bag
  except SlideError as e:
    assert "TIFF" in e.reason
    return
  # If tifffile does read it, its pixels must be OpenSlide's.
  i = bag.tile_valid.index(1)
  ours = _decoded(bag.tiles[i])
  assert _psnr(ours, _reference_tile(name, bag.tile_x[i], bag.tile_y[i], bag.tile_size)) >= 33


def test_the_tiny_slides_at_their_own_size():
  """With 16 px tiles the 16 x 16 files get past the size check: the crop of
  CMU-1 is tiled as OpenSlide reads it, its corrupt twin and the minimal DICOM
  are judged on their pixels."""
  import dataclasses
  tiny = dataclasses.replace(TILING, tile_size=16, tiles_per_slide=1, min_tissue_fraction=0.0)
  bag = tile_slide(_fixture("small.svs"), tiny).bag
  ours = _decoded(bag.tiles[0])
  assert _psnr(ours, _reference_tile("small.svs", 0, 0, 16)) >= 33
  with pytest.raises(SlideError, match="cannot decode TIFF segment"):
    tile_slide(_fixture("unreadable.svs"), tiny)


@pytest.mark.parametrize("name", WRITTEN_AND_OPENSLIDE)
def test_levels_and_regions_with_signal_equal_openslides(name):
  """Besides the bag tiles: each level's size and a region around the slide's
  centre, where there is signal, are compared with OpenSlide's (the region's
  level-0 position by OpenSlide's own downsample of the level)."""
  from histopipe.slides.slide_reader import open_slide
  assert EXPECTED[name][1] == "written" and OPENSLIDE_FORMAT[name]
  path = _fixture(name)
  with open_slide(path) as ours, _openslide().OpenSlide(path) as reference:
    # Ours may add the SVS thumbnail as a coarsest level, which OpenSlide does not list.
    shared = len(reference.level_dimensions)
    assert [(l.width, l.height) for l in ours.levels][:shared] == list(reference.level_dimensions)
    for level in ours.levels[:shared]:
      size = min(128, level.width, level.height)
      x, y = (level.width - size) // 2, (level.height - size) // 2
      mine = ours.read_region(level.index, x, y, size, size)
      downsample = reference.level_downsamples[level.index]
      theirs = _on_white(np.asarray(reference.read_region(
          (round(x * downsample), round(y * downsample)), level.index, (size, size))))
      assert mine.std() > 2, f"{name} level {level.index}: no signal to compare"
      assert _psnr(mine, theirs) >= 33, (name, level.index)


def test_a_scan_without_the_level_asked_for_is_read_finer_and_shrunk():
  """CMU-1-Small-Region has one level at 0.499 um/px (and Aperio's thumbnail,
  2220 x 2967 -> 574 x 768, downsample 3.87). At 1 um/px no level is close:
  level 0 is read and shrunk by 1 / 0.499 = 2.004, and each tile equals
  OpenSlide's level-0 region of that footprint (128 * 2.004 -> 257 px),
  shrunk by OpenCV. The default 2 um/px takes the thumbnail level
  (0.499 * 2220 / 574 = 1.93 um/px, within the tolerance) as it is."""
  import dataclasses
  path = _fixture("CMU-1-Small-Region.svs")
  with tifffile.TiffFile(path) as tiff:
    level0_width, thumbnail_width = tiff.pages[0].imagewidth, tiff.pages[1].imagewidth
  assert (level0_width, thumbnail_width) == (2220, 574)
  at_1um = TilingConfig(target_mpp=1.0, tile_size=128, tiles_per_slide=6)
  bag = tile_slide(path, at_1um).bag
  assert bag.level == 0
  assert bag.level_downsample == pytest.approx(1 / 0.499, rel=1e-4)
  valid = [i for i, v in enumerate(bag.tile_valid) if v]
  assert len(valid) == 6
  side = 257
  with _openslide().OpenSlide(path) as slide:
    for i in valid:
      region = _on_white(np.asarray(slide.read_region((bag.tile_x[i], bag.tile_y[i]), 0,
                                                      (side, side))))
      reference = cv2.resize(region, (at_1um.tile_size,) * 2, interpolation=cv2.INTER_AREA)
      assert _psnr(_decoded(bag.tiles[i]), reference) >= 33, i
  default = tile_slide(path, dataclasses.replace(at_1um, target_mpp=2.0)).bag
  assert default.level == 1
  assert default.level_downsample == pytest.approx(level0_width / thumbnail_width, rel=1e-3)
  assert default.mpp * default.level_downsample == pytest.approx(1.93, abs=0.01)


def test_fluorescence_tiles_are_where_the_light_is():
  """The DAPI scan's background is black: its chosen tiles must hold the
  stained nuclei (bright), not the dark glass."""
  path = _fixture("test3-DAPI-2.ndpi")
  bag = tile_slide(path, TILING).bag
  with _openslide().OpenSlide(path) as slide:
    background = float(np.median(np.asarray(slide.get_thumbnail((256, 256)))[..., :3].max(-1)))
  valid = [i for i, v in enumerate(bag.tile_valid) if v]
  assert valid, "no tile kept"
  for i in valid:
    brightest = _decoded(bag.tiles[i]).max(axis=-1)
    assert float(brightest.mean()) > background + 15, (i, brightest.mean(), background)
