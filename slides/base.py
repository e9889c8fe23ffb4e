"""What every slide backend shares: a level, the error that rejects a slide
with its reason, and which files are slides. Below the backends and the
backend chooser alike, so neither imports the other to get them."""

from __future__ import annotations

import dataclasses



class SlideError(Exception):
  """A slide that cannot be used; the message names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Level:
  index: int
  width: int
  height: int
  downsample: float  # level-0 pixels per pixel of this level

# Microns per pixel outside this range are treated as unknown: scanners write
# placeholder resolutions (72 dpi is 352 um/px) that would mislead a reader.
PLAUSIBLE_MPP = (0.05, 20.0)


# File name endings of whole slides the backends read (tifffile: TIFF family,
# Akoya/PerkinElmer QPTIFF among them; OpenSlide: Aperio, Hamamatsu, 3DHistech,
# Leica, Ventana, Philips; wsidicom: DICOM, whose slides can also be folders of
# `.dcm` files).
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".vms", ".mrxs", ".scn", ".bif",
                  ".svslide", ".dcm", ".qptiff")
