"""Files built to hurt the reader: each is rejected with its reason (or read
correctly), in bounded memory and time, and never takes the job down.

Each file is made here from a small valid TIFF whose bytes are then edited
(tag values, IFD offsets) or written by hand, so the test knows exactly what
is wrong with it. Memory is checked as a child process's peak RSS.
"""

import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import tifffile

from histopipe.components.slide_reader import SlideError, TiffSlide
from histopipe.components.tiling import tile_slide
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


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
  """16,384 x 16,384 px in one strip: 768 MiB decoded from ~0.8 MB on disk."""
  path = tmp_path / "bomb.tif"
  _single_strip_bomb(path, 16384)
  assert path.stat().st_size < 2e6
  with pytest.raises(SlideError, match=r"would decode to 768 MiB, over the budget of 256 MiB"):
    tile_slide(str(path), TILING)
  peak = _peak_rss_mb_of(f"""
      from histopipe.components.tiling import tile_slide
      from histopipe.components.slide_reader import SlideError
      from histopipe.core.configs import TilingConfig
      try:
        tile_slide({str(path)!r}, TilingConfig(level=0, tile_size=64, min_tissue_fraction=0.0))
        raise SystemExit("tiled a bomb")
      except SlideError:
        pass""")
  assert peak < 400, f"peak RSS {peak:.0f} MB while refusing the bomb"


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
  _tiled_tiff(path, pages=2)
  data = bytearray(path.read_bytes())
  with tifffile.TiffFile(path) as tif:
    first, last = tif.pages[0].offset, tif.pages[1].offset
  (count,) = struct.unpack_from("<H", data, last)
  struct.pack_into("<I", data, last + 2 + 12 * count, first)
  path.write_bytes(bytes(data))
  script = f"""
      from histopipe.components.tiling import tile_slide
      from histopipe.components.slide_reader import SlideError
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
