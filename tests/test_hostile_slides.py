"""Files built to hurt the reader: each is rejected with its reason (or read
correctly), in bounded memory and time, and never takes the job down.

Each file is made here from a small valid TIFF whose bytes are then edited
(tag values, IFD offsets) or written by hand, so the test knows exactly what
is wrong with it. Memory is checked as a child process's peak RSS.
"""

import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import tifffile

from histopipe.slides.base import SlideError
from histopipe.slides.tiff_reader import TiffSlide
from histopipe.slides.tiling import tile_slide
from histopipe.core.configs import TilingConfig

TILING = TilingConfig(level=0, tile_size=64, tiles_per_slide=2, min_tissue_fraction=0.0,
                      tile_format="png")


def _tiled_tiff(path, pages=1) -> None:
  rng = np.random.default_rng(0)
  with tifffile.TiffWriter(path) as tif:
    for i in range(pages):
      size = 256 >> i
      tif.write(rng.integers(0, 200, (size, size, 3), dtype=np.uint8), tile=(64, 64),
                compression="deflate", photometric="rgb")


def _ifd_entries(data: bytes, offset: int):
  """(tag, type, count, value_offset_position) of a classic little-endian IFD."""
  (count,) = struct.unpack_from("<H", data, offset)
  for i in range(count):
    position = offset + 2 + 12 * i
    tag, kind, n = struct.unpack_from("<HHI", data, position)
    yield tag, kind, n, position + 8
  return


def _set_tag(path, tag_code: int, value: int) -> None:
  data = bytearray(open(path, "rb").read())
  (first,) = struct.unpack_from("<I", data, 4)
  for tag, kind, _, value_at in _ifd_entries(bytes(data), first):
    if tag == tag_code:
      struct.pack_into("<H" if kind == 3 else "<I", data, value_at, value)
  open(path, "wb").write(bytes(data))


def _single_strip_bomb(path, side: int) -> None:
  """An RGB TIFF of side x side px in ONE deflate strip of zeros: a few MB on
  disk, side*side*3 bytes once decoded (written by hand, streamed)."""
  compressor, chunks, row = zlib.compressobj(9), [], bytes(side * 3)
  for _ in range(side):
    chunks.append(compressor.compress(row))
  chunks.append(compressor.flush())
  strip = b"".join(chunks)
  entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 8),
             (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, side),
             (279, 4, 1, len(strip)), (284, 3, 1, 1)]
  ifd_at = 8
  strip_at = ifd_at + 2 + 12 * len(entries) + 4
  entries = [(t, k, n, strip_at if t == 273 else v) for t, k, n, v in entries]
  ifd = struct.pack("<H", len(entries)) + b"".join(
      struct.pack("<HHI", t, k, n) + (struct.pack("<HH", v, 0) if k == 3 else
                                      struct.pack("<I", v)) for t, k, n, v in entries)
  with open(path, "wb") as f:
    f.write(b"II*\x00" + struct.pack("<I", ifd_at) + ifd + struct.pack("<I", 0) + strip)


def _looping_ifd_chain(path) -> None:
  """A two-page tiled TIFF whose last IFD points back at the first."""
  _tiled_tiff(path, pages=2)
  data = bytearray(path.read_bytes())
  with tifffile.TiffFile(path) as tif:
    first, last = tif.pages[0].offset, tif.pages[1].offset
  (count,) = struct.unpack_from("<H", data, last)
  struct.pack_into("<I", data, last + 2 + 12 * count, first)
  path.write_bytes(bytes(data))


def _many_tiles_tiff(path, side: int, tile: int = 16) -> None:
  """An RGB TIFF of side x side px in tile x tile px deflate tiles, every tile
  offset pointing at the same few bytes: small on disk, but (side / tile)^2
  segments to decode for a thumbnail, a file that decodes for minutes."""
  data = zlib.compress(bytes(tile * tile * 3))
  count = (side // tile) ** 2
  entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 8),
             (262, 3, 1, 2), (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile),
             (323, 3, 1, tile), (324, 4, count, 0), (325, 4, count, 0)]
  ifd_at = 8
  offsets_at = ifd_at + 2 + 12 * len(entries) + 4
  counts_at = offsets_at + 4 * count
  data_at = counts_at + 4 * count
  entries = [(t, k, n, offsets_at if t == 324 else counts_at if t == 325 else v)
             for t, k, n, v in entries]
  ifd = struct.pack("<H", len(entries)) + b"".join(
      struct.pack("<HHI", t, k, n) + (struct.pack("<HH", v, 0) if k == 3 else
                                      struct.pack("<I", v)) for t, k, n, v in entries)
  with open(path, "wb") as f:
    f.write(b"II*\x00" + struct.pack("<I", ifd_at) + ifd + struct.pack("<I", 0))
    f.write(struct.pack("<I", data_at) * count + struct.pack("<I", len(data)) * count + data)


def _peak_rss_mb_of(code: str, timeout: float = 120) -> float:
  """Runs `code` in a fresh interpreter; its peak RSS in MB (it prints it).

  VmHWM of /proc/self/status, not getrusage's ru_maxrss: Linux carries
  ru_maxrss across fork and exec, so a child of a large pytest process would
  report the parent's size."""
  script = textwrap.dedent(code) + (
      "\nimport re\nstatus = open('/proc/self/status').read()\n"
      "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) / 1024)\n")
  done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True,
                        text=True, timeout=timeout, check=True)
  return float(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb_refusing(path) -> float:
  """Peak RSS in MB of a fresh interpreter that tiles `path` and has it rejected."""
  return _peak_rss_mb_of(f"""
      from histopipe.slides.tiling import tile_slide
      from histopipe.slides.base import SlideError
      from histopipe.core.configs import TilingConfig
      try:
        tile_slide({str(path)!r}, TilingConfig(level=0, tile_size=64, min_tissue_fraction=0.0))
        raise SystemExit("tiled it")
      except SlideError:
        pass""")


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
  """16,384 x 16,384 px in one strip: 768 MiB decoded from ~0.8 MB on disk."""
  path = tmp_path / "bomb.tif"
  _single_strip_bomb(path, 16384)
  assert path.stat().st_size < 2e6
  with pytest.raises(SlideError, match=r"would decode to 768 MiB, over the budget of 256 MiB"):
    tile_slide(str(path), TILING)
  peak = _peak_rss_mb_refusing(path)
  assert peak < 400, f"peak RSS {peak:.0f} MB while refusing the bomb"


def test_a_jpeg_tile_declaring_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
  """A 256 px JPEG TIFF tile whose own header (SOF) says 65535 x 65535 px:
  the decoder would allocate 12 GB for it."""
  path = tmp_path / "huge-jpeg-tile.tif"
  tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8),
                   tile=(256, 256), compression="jpeg", photometric="rgb")
  with tifffile.TiffFile(path) as tiff:
    offset, count = tiff.pages[0].dataoffsets[1], tiff.pages[0].databytecounts[1]
  data = bytearray(path.read_bytes())
  frame = data.find(b"\xff\xc0", offset, offset + count)  # baseline SOF: P, height, width
  assert frame > 0
  data[frame + 5:frame + 9] = b"\xff\xff\xff\xff"
  path.write_bytes(bytes(data))
  jpeg_tiles = TilingConfig(level=0, tile_size=64, tiles_per_slide=0, min_tissue_fraction=0.0,
                            tile_format="jpeg")
  with pytest.raises(SlideError, match=r"segment 1 is a JPEG of 65535x65535 px in a 256x256"):
    tile_slide(str(path), jpeg_tiles)
  peak = _peak_rss_mb_refusing(path)
  assert peak < 400, f"peak RSS {peak:.0f} MB while refusing the tile"


def test_the_segment_budget_is_a_setting(tmp_path):
  path = tmp_path / "small.tif"
  _tiled_tiff(path)
  import dataclasses
  with pytest.raises(SlideError, match="tiling.max_segment_bytes"):
    tile_slide(str(path), dataclasses.replace(TILING, max_segment_bytes=1000))
  assert sum(tile_slide(str(path), TILING).bag.tile_valid) == 2


def test_an_ifd_chain_that_loops_back_ends(tmp_path):
  """The last IFD points back at the first: the reader must stop (tifffile
  walks such a chain forever if its pages are iterated before counted)."""
  path = tmp_path / "loop.tif"
  _looping_ifd_chain(path)
  script = f"""
      from histopipe.slides.tiling import tile_slide
      from histopipe.slides.base import SlideError
      from histopipe.core.configs import TilingConfig
      try:
        tile_slide({str(path)!r}, TilingConfig(level=0, tile_size=64, min_tissue_fraction=0.0))
      except SlideError as e:
        print(e.reason)"""
  _peak_rss_mb_of(script, timeout=120)  # a hang fails here, as a timeout


@pytest.mark.parametrize("damage,reason", [
    ("zero width", "no readable image (zero-size pages)"),
    ("absurd size", "declares 1000000x1000000 px (244,140,625 TIFF segments) but the file holds 16"),
    ("offsets past the end", "truncated"),
])
def test_damaged_files_are_rejected_with_their_reason(tmp_path, damage, reason):
  path = tmp_path / "damaged.tif"
  _tiled_tiff(path)
  if damage == "zero width":
    _set_tag(path, 256, 0)
  elif damage == "absurd size":
    _set_tag(path, 256, 1_000_000)
    _set_tag(path, 257, 1_000_000)
  else:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
  with pytest.raises(SlideError) as rejected:
    with TiffSlide(str(path)) as slide:
      slide.thumbnail(1024)
      tile_slide(str(path), TILING)
  assert reason in str(rejected.value), str(rejected.value)


def test_a_file_that_decodes_for_minutes_stops_at_the_time_budget(tmp_path):
  """4096^2 px in 65,536 tiles of 16 px: the thumbnail would decode all of
  them; with a budget of 0.5 s the slide is rejected with the setting's name."""
  import dataclasses
  path = tmp_path / "slow.tif"
  _many_tiles_tiff(path, 4096)
  assert path.stat().st_size < 1e6
  with TiffSlide(str(path)) as slide:
    assert slide.levels[0].width == 4096
  slow = dataclasses.replace(TILING, max_seconds_per_slide=0.5)
  with pytest.raises(SlideError, match=r"took longer than 0.5 s \(tiling.max_seconds_per_slide\)"):
    tile_slide(str(path), slow)


def test_a_level_over_the_pixel_budget_is_not_read_whole(tmp_path):
  import dataclasses
  path = tmp_path / "single.tif"
  _tiled_tiff(path)
  with pytest.raises(SlideError, match=r"256x256 px, over the budget of 10,000 px .*"
                                       r"\(tiling.max_level_pixels\)"):
    tile_slide(str(path), dataclasses.replace(TILING, max_level_pixels=10_000))


def test_a_read_that_blocks_is_abandoned_and_the_job_goes_on(tiny_dataset, tmp_path,
                                                            monkeypatch):
  """A read that never returns (a stalled mount; here one slide's cut waits
  forever) is abandoned by the worker's watchdog at twice the time budget:
  that slide is rejected with the reason, every other slide is written."""
  import dataclasses
  import threading
  from histopipe.beam import slide_stages
  from histopipe.beam.tile_job import run_tile_job
  from histopipe.core.configs import load_config
  source, slides = tiny_dataset
  stalled = slides[1].path
  cut_bag = slide_stages.cut_bag
  never = threading.Event()

  def cut_or_stall(path, *args, **kwargs):
    if path == stalled:
      never.wait()
    return cut_bag(path, *args, **kwargs)

  monkeypatch.setattr(slide_stages, "cut_bag", cut_or_stall)
  config = load_config(None, preset="demo")
  config = dataclasses.replace(config, tiling=dataclasses.replace(
      config.tiling, tiles_per_slide=4, tile_size=32, max_seconds_per_slide=1.0))
  summary = run_tile_job(str(source), str(tmp_path / "out"), config, previews=False,
                         progress=False, beam_pipeline_args=[
                             "--direct_running_mode=in_memory", "--direct_num_workers=1"])
  never.set()
  assert summary["slides_written"] == len(slides) - 1
  rejects = (tmp_path / "out" / "rejects.csv").read_text()
  assert "no answer after 2 s: reading is blocked (tiling.max_seconds_per_slide)" in rejects
  assert slides[1].image_id in rejects


def test_a_job_of_hostile_files_stays_under_1_gb(tiny_dataset, tmp_path):
  """`histopipe tile` over good slides and every hostile kind above, in a
  child process: the good slides are written, each hostile one rejected with
  its reason, and the job's peak RSS stays under 1 GB."""
  import csv
  import shutil
  data = tmp_path / "data"
  shutil.copytree(tiny_dataset[0], data)
  images = data / "train_images"
  _single_strip_bomb(images / "bomb.tiff", 16384)
  _many_tiles_tiff(images / "slow.tiff", 8192)
  _looping_ifd_chain(images / "loop.tiff")
  _tiled_tiff(images / "absurd.tiff")
  _set_tag(images / "absurd.tiff", 256, 1_000_000)
  _set_tag(images / "absurd.tiff", 257, 1_000_000)
  # image id -> words of its reject reason; None: it must end, either way
  # (the looping chain's two real pages can be tiled).
  hostile = {"bomb": "tiling.max_segment_bytes", "slow": "tiling.max_seconds_per_slide",
             "loop": None, "absurd": "declares 1000000x1000000 px"}
  with open(data / "train.csv", "a", encoding="utf-8") as labels:
    for image_id in hostile:
      labels.write(f"{image_id},radboud,1,3+3\n")
  out = tmp_path / "out"
  peak = _peak_rss_mb_of(f"""
      import dataclasses
      from histopipe.beam.tile_job import run_tile_job
      from histopipe.core.configs import load_config
      config = load_config(None, preset="demo")
      config = dataclasses.replace(config, tiling=dataclasses.replace(
          config.tiling, tiles_per_slide=4, tile_size=32, max_seconds_per_slide=2.0))
      run_tile_job({str(data)!r}, {str(out)!r}, config, previews=False, progress=False,
                   beam_pipeline_args=["--direct_running_mode=in_memory",
                                       "--direct_num_workers=1"])""", timeout=300)
  with open(out / "slides.csv", encoding="utf-8") as f:
    outcomes = {row["image_id"]: row for row in csv.DictReader(f)}
  assert len(outcomes) == len(tiny_dataset[1]) + len(hostile)
  for image_id, row in outcomes.items():
    if hostile.get(image_id):
      assert row["status"] == "rejected" and hostile[image_id] in row["reason"], row
    elif image_id in hostile:
      assert row["status"] in ("written", "rejected"), row
    else:
      assert row["status"] == "written", row
  assert peak < 1024, f"peak RSS {peak:.0f} MB for a job of {len(outcomes)} slides"


REAL_SLIDES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures",
                           "real-slides")


def _tifffile_error(path) -> str:
  """What tifffile's own whole-image read (not our segment reader) says is wrong."""
  with pytest.raises(Exception) as failed:
    tifffile.imread(path)
  return str(failed.value)


def _corrupt_tile_tiff(path) -> None:
  """48 x 32 px in deflate tiles of 16 px, one of whose compressed bytes are garbage."""
  rng = np.random.default_rng(4)
  tifffile.imwrite(path, rng.integers(0, 200, (32, 48, 3), dtype=np.uint8), tile=(16, 16),
                   compression="deflate", photometric="rgb")
  with tifffile.TiffFile(path) as tif:
    offset, count = tif.pages[0].dataoffsets[2], tif.pages[0].databytecounts[2]
  data = bytearray(open(path, "rb").read())
  data[offset:offset + count] = b"\xff" * count
  open(path, "wb").write(bytes(data))


def test_a_file_smaller_than_a_tile_that_is_also_broken_names_both(tmp_path):
  """The size gate keeps its reason, and a file that also cannot be decoded says why,
  in the words of an independent reader: OpenSlide for the corrupt JPEG of
  unreadable.svs, tifffile for unopenable.tiff's unknown compression (OpenSlide says
  "Unsupported TIFF compression: 52479") and for a hand-made file's garbage tile. An
  intact small file (small.svs, the same 16 x 16 crop uncorrupted) is only too small."""
  import openslide  # pylint: disable=import-outside-toplevel
  unreadable = os.path.join(REAL_SLIDES, "unreadable.svs")
  with openslide.OpenSlide(unreadable) as slide, pytest.raises(openslide.OpenSlideError) as bad:
    slide.read_region((0, 0), 0, (16, 16))
  hand_made = str(tmp_path / "corrupt.tif")
  _corrupt_tile_tiff(hand_made)
  broken = {unreadable: str(bad.value),  # "Bogus marker length"
            os.path.join(REAL_SLIDES, "unopenable.tiff"):
                _tifffile_error(os.path.join(REAL_SLIDES, "unopenable.tiff")),
            hand_made: _tifffile_error(hand_made)}
  for path, defect in broken.items():
    with pytest.raises(SlideError) as rejected:
      tile_slide(path, TILING)
    reason = rejected.value.reason
    assert "smaller than one 64 px tile, and " in reason and defect in reason, (path, reason)
  with pytest.raises(SlideError) as rejected:
    tile_slide(os.path.join(REAL_SLIDES, "small.svs"), TILING)
  assert rejected.value.reason == ("the slide is 16x16 px at downsample 1, smaller than one "
                                   "64 px tile")
