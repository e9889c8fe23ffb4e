"""Image statistics of a bag's real tiles, written into the bag as scalars.

A bag's tiles are encoded bytes, so TFX's StatisticsGen learns nothing from
them. These numbers are what a new scanner or stain protocol changes: colour
(mean and spread of R, G, B) and stain (mean haematoxylin and eosin optical
density, by the colour deconvolution the augmentation uses, core/stain.py),
both over the stained pixels only (optical density above Macenko's 0.15 in
every channel),
tissue (the tiles' tissue fraction), focus (variance of the Laplacian of the
grey image, on each tile's centre) and compression (encoded bytes per tile). Computed on the pixels
the model sees (after any resize), real tiles only: padding is white glass.

Hand-written with OpenCV, not a library: each is one line over
pixels the tiling already holds, and Beam workers must not import
TensorFlow (see example_proto.py).
"""

from __future__ import annotations

from typing import Dict, Sequence

import cv2
import numpy as np

from histopipe.bags import bag_features as bf
from histopipe.core.stain import HED_FROM_RGB, OPTICAL_DENSITY


# Pixels with an optical density below this in any channel are background
# (glass, white, the palest stroma): Macenko et al.'s beta = 0.15, as stain
# normalizers apply it. (A scanner's glass at 235 has 0.08 in each channel.)
MIN_TISSUE_DENSITY = 0.15


# Colour statistics are means over pixels: 130k of them estimate a bag's to
# about 0.1 grey level (measured on a full-preset bag: mean R 145.03 sampled
# vs 144.92 from every pixel), so larger bags are sampled on a grid.
COLOUR_SAMPLE_PIXELS = 1 << 17


# Focus is measured on each tile's central square of this side: 16k
# Laplacian values estimate a tile's variance well, at a quarter of the work
# of a 256 px tile.
FOCUS_SIDE = 128


def focus_score(tile_rgb: np.ndarray) -> float:
  """Variance of the Laplacian of the grey image (its central FOCUS_SIDE
  square): high when sharp, ~0 when blurred. (The Laplacian of 8-bit grey
  fits int16 exactly.)"""
  height, width = tile_rgb.shape[:2]
  top, left = max(0, (height - FOCUS_SIDE) // 2), max(0, (width - FOCUS_SIDE) // 2)
  centre = tile_rgb[top:top + FOCUS_SIDE, left:left + FOCUS_SIDE]
  grey = cv2.cvtColor(np.ascontiguousarray(centre), cv2.COLOR_RGB2GRAY)
  _, std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))
  return float(std[0, 0]) ** 2


# The 8-bit values whose optical density is above MIN_TISSUE_DENSITY: 0..219.
_STAINED_BELOW = int(np.argmax(OPTICAL_DENSITY <= MIN_TISSUE_DENSITY))
# Optical density of each 8-bit value, as a table OpenCV applies per channel.
_DENSITY_TABLE = OPTICAL_DENSITY.astype(np.float32).reshape(1, 256, 1).repeat(3, axis=2)


def image_statistics(tiles_rgb: Sequence[np.ndarray], encoded: Sequence[bytes],
                     tissue_fractions: Sequence[float]) -> Dict[str, float]:
  """bag_features.IMAGE_STATISTICS of the real tiles: RGB uint8 [h, w, 3]
  each (all of one size), their encoded bytes and tissue fractions (same
  order). OpenCV's masked mean and spread over the tiles stacked into one
  image (sampled on a grid beyond COLOUR_SAMPLE_PIXELS): a NumPy version
  (fancy-indexed tables, boolean selection) took as long as cutting the bag."""
  if not tiles_rgb:
    raise ValueError("a bag has at least one real tile")
  stack = np.ascontiguousarray(np.concatenate(tiles_rgb, axis=0))
  step = max(1, int(np.sqrt(stack.shape[0] * stack.shape[1] / COLOUR_SAMPLE_PIXELS)))
  if step > 1:  # every step-th pixel of every step-th row
    stack = cv2.resize(stack, (stack.shape[1] // step, stack.shape[0] // step),
                       interpolation=cv2.INTER_NEAREST)
  density = cv2.LUT(stack, _DENSITY_TABLE)
  # Colour and stain of the tissue, not of the glass between it: how much
  # glass a tile holds varies from slide to slide far more than a scanner
  # shifts colours, and would hide that shift.
  # Macenko's rule, dense enough in every channel: density falls as the value
  # rises, so it is the brightest channel below _STAINED_BELOW (on 8-bit
  # values, with OpenCV: NumPy's reduction over the channel axis cost 10 ms
  # a full bag).
  red, green, blue = cv2.split(stack)
  stained = (cv2.max(cv2.max(red, green), blue) < _STAINED_BELOW).astype(np.uint8)
  mask = stained if stained.any() else None
  mean, std = cv2.meanStdDev(stack, mask=mask)
  mean_density = np.array(cv2.mean(density, mask=mask)[:3], np.float64)
  # Deconvolution is linear in optical density: the mean stain density is
  # the mean density times the stain matrix.
  haematoxylin, eosin, _ = mean_density @ HED_FROM_RGB.astype(np.float64)
  values = dict(zip(bf.MEAN_RGB, mean.reshape(-1).tolist()))
  values.update(zip(bf.STD_RGB, std.reshape(-1).tolist()))
  values.update({
      bf.OD_HAEMATOXYLIN: float(haematoxylin),
      bf.OD_EOSIN: float(eosin),
      bf.TISSUE_FRACTION: float(np.mean(tissue_fractions)),
      bf.FOCUS: float(np.mean([focus_score(t) for t in tiles_rgb])),
      bf.BYTES_PER_TILE: float(np.mean([len(e) for e in encoded])),
  })
  return values
