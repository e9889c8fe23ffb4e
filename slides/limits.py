"""What reading one slide may cost (decoded segment bytes, pixels of a level
read whole, seconds), checked by every backend before the work is done."""

from __future__ import annotations

import dataclasses
import time


from histopipe.slides.base import Level, SlideError

# Pages of a TIFF chain beyond which the file is refused: real slides have
# tens; tifffile walks a looping IFD chain forever when its pages are
# iterated before their number is taken.
MAX_TIFF_PAGES = 4096

# Default budget for one decoded TIFF tile or strip (TilingConfig has the
# configured one): a PANDA tile is 0.75 MB, a single-strip bomb gigabytes.
DEFAULT_MAX_SEGMENT_BYTES = 256 * 2**20

# Default budget for a level read whole (the thumbnail's level): 4 Gpx, a
# single-level 65k x 65k scan, about a minute of decoding.
DEFAULT_MAX_LEVEL_PIXELS = 2**32


@dataclasses.dataclass(frozen=True)
class ReadLimits:
  """What reading one slide may cost; a slide over any limit is rejected
  with the setting's name (TilingConfig holds the configured values).

  The time limit is checked before each TIFF segment is decoded and each
  region is read, so a file that decodes slowly forever stops itself; a read
  that blocks inside one call (a stalled mount) is the job watchdog's case
  (slide_stages.TileSlideFn).
  """
  max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES
  max_level_pixels: int = DEFAULT_MAX_LEVEL_PIXELS
  max_seconds: float = 0.0  # 0: no limit
  started: float = dataclasses.field(default_factory=time.monotonic)

  def check_time(self, path: str) -> None:
    if self.max_seconds and time.monotonic() - self.started > self.max_seconds:
      raise SlideError(path, f"reading took longer than {self.max_seconds:g} s "
                       "(tiling.max_seconds_per_slide)")

  def check_level(self, path: str, level: "Level") -> None:
    """Before a level is read whole."""
    if level.width * level.height > self.max_level_pixels:
      raise SlideError(path, f"level {level.index} is {level.width}x{level.height} px, over "
                       f"the budget of {self.max_level_pixels:,} px for a level read whole "
                       "(tiling.max_level_pixels)")
