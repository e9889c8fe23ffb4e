"""Slide thumbnails with the chosen tiles outlined and numbered.

A person checks a tile selection at a glance: one PNG per slide.
"""

from __future__ import annotations

import cv2
import numpy as np

from histopipe.bags.bag_features import SlideBag
from histopipe.core import storage

_OUTLINE_RGB = (0, 160, 60)
_TEXT_RGB = (20, 20, 20)


def draw_preview(thumbnail_rgb: np.ndarray, bag: SlideBag,
                 thumbnail_downsample: float, min_width: int = 512) -> np.ndarray:
  """RGB preview: tile k (1-based, best first) outlined and labelled k.

  `thumbnail_downsample` is level-0 pixels per thumbnail pixel. Small
  thumbnails are enlarged to `min_width` so the numbers stay readable.
  """
  scale = max(1.0, min_width / thumbnail_rgb.shape[1])
  preview = cv2.resize(thumbnail_rgb, None, fx=scale, fy=scale,
                       interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA)
  preview = np.ascontiguousarray(preview)
  to_preview = scale / thumbnail_downsample
  size = bag.tile_size * bag.level_downsample * to_preview
  thickness = max(1, int(round(size / 24)))
  for number, (x, y, valid) in enumerate(zip(bag.tile_x, bag.tile_y, bag.tile_valid), 1):
    if not valid:
      continue
    x0, y0 = int(round(x * to_preview)), int(round(y * to_preview))
    x1, y1 = int(round(x0 + size)) - 1, int(round(y0 + size)) - 1
    cv2.rectangle(preview, (x0, y0), (x1, y1), _OUTLINE_RGB, thickness)
    # The number on a white label, readable over dark tissue.
    text, font_scale = str(number), max(0.3, size / 80)
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    label_x, label_y = x0 + thickness, y0 + thickness
    cv2.rectangle(preview, (label_x, label_y),
                  (label_x + text_w + 2, label_y + text_h + baseline + 2), (255, 255, 255), -1)
    cv2.putText(preview, text, (label_x + 1, label_y + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX,
                font_scale, _TEXT_RGB, 1, cv2.LINE_AA)
  return preview


def write_png(path: str, image_rgb: np.ndarray) -> None:
  ok, buffer = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise RuntimeError(f"cannot encode preview {path}")
  storage.write_bytes(path, buffer.tobytes())
