"""Colour deconvolution of H&E: the stain vectors, written once.

The Trainer's HED stain jitter (trainer/augmentation.py) and the per-bag
stain statistics the tiling writes (slides/bag_statistics.py) must
deconvolve with the same vectors, or drift in "eosin" would mean one thing
in training and another in monitoring. NumPy only: Beam workers that tile
slides never import TensorFlow.
"""

from __future__ import annotations

import numpy as np

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in
# scikit-image's rgb_from_hed.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
# Optical density of each 8-bit value, OD = ln 256 - ln(p + 1): 0 for white,
# ln 256 for black (the +1 keeps black finite, as in the augmentation).
OPTICAL_DENSITY = (np.log(256.0) - np.log(np.arange(256) + 1.0)).astype(np.float64)
