"""Image statistics of a bag's real tiles, written into the bag as scalars.

A bag's tiles are encoded bytes, so TFX's StatisticsGen learns nothing from
them. These numbers are what a new scanner or stain protocol changes: colour
(mean and spread of R, G, B) and stain (mean haematoxylin and eosin optical
density, by the colour deconvolution the augmentation uses, core/stain.py),
both over the stained pixels only (optical density above Macenko's 0.15),
tissue (the tiles' tissue fraction), focus (variance of the Laplacian of the
grey image) and compression (encoded bytes per tile). Computed on the pixels
the model sees (after any resize), real tiles only: padding is white glass.

Hand-written with NumPy and OpenCV, not a library: each is one line over
pixels the tiling already holds, and Beam workers must not import
TensorFlow (see example_proto.py).
"""

from __future__ import annotations

from typing import Dict, Sequence

import cv2
import numpy as np

from histopipe.components import bag_features as bf
from histopipe.core.stain import HED_FROM_RGB, OPTICAL_DENSITY


# Pixels whose summed optical density is below this are background (glass,
# white): Macenko et al.'s beta = 0.15, used by most stain normalizers.
MIN_TISSUE_DENSITY = 0.15


def focus_score(tile_rgb: np.ndarray) -> float:
  """Variance of the Laplacian of the grey image: high when sharp, ~0 when blurred."""
  grey = cv2.cvtColor(tile_rgb, cv2.COLOR_RGB2GRAY)
  return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def image_statistics(tiles_rgb: Sequence[np.ndarray], encoded: Sequence[bytes],
                     tissue_fractions: Sequence[float]) -> Dict[str, float]:
  """bag_features.IMAGE_STATISTICS of the real tiles: RGB uint8 [h, w, 3]
  each, their encoded bytes and tissue fractions (same order)."""
  if not tiles_rgb:
    raise ValueError("a bag has at least one real tile")
  pixels = np.concatenate([t.reshape(-1, 3) for t in tiles_rgb])
  # Colour and stain of the tissue, not of the glass between it: how much
  # glass a tile holds varies from slide to slide far more than a scanner
  # shifts colours, and would hide that shift.
  stained = OPTICAL_DENSITY[pixels].sum(axis=1) > MIN_TISSUE_DENSITY
  if stained.any():
    pixels = pixels[stained]
  mean = pixels.mean(axis=0, dtype=np.float64)
  std = pixels.std(axis=0, dtype=np.float64)
  # Deconvolution is linear in optical density: the mean stain density is
  # the mean density (per RGB channel, by table) times the stain matrix.
  density = np.array([OPTICAL_DENSITY[pixels[:, c]].mean() for c in range(3)])
  haematoxylin, eosin, _ = density @ HED_FROM_RGB.astype(np.float64)
  values = dict(zip(bf.MEAN_RGB, mean.tolist()))
  values.update(zip(bf.STD_RGB, std.tolist()))
  values.update({
      bf.OD_HAEMATOXYLIN: float(haematoxylin),
      bf.OD_EOSIN: float(eosin),
      bf.TISSUE_FRACTION: float(np.mean(tissue_fractions)),
      bf.FOCUS: float(np.mean([focus_score(t) for t in tiles_rgb])),
      bf.BYTES_PER_TILE: float(np.mean([len(e) for e in encoded])),
  })
  return values
