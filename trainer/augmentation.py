"""Training-only augmentation of bags, applied in the Trainer's input pipeline.

Never part of the transform graph, so eval and serving never see it:
* per-tile flips and 90-degree rotations (tissue has no orientation);
* per-tile brightness, contrast, saturation and hue jitter, each a linear map
  of RGB (saturation towards luma grey, hue as a rotation in YIQ), so the
  four fold into one 3x3 matrix and an offset per tile;
* per-tile HED stain jitter (Tellez et al. 2018): colour deconvolution into
  haematoxylin, eosin and DAB optical densities, a random scale and shift of
  each, and recomposition, imitating staining differences between labs;
* a random tile order per bag (MIL pooling must not depend on it).

Tiles arrive normalized; the colour steps undo the normalization with the
per-channel mean/std the Transform outputs next to them, work on 0..255
pixels, and normalize again.

Why hand-written rather than Keras preprocessing layers or `tf.image`: those
apply one op per effect to the whole image, and offer no HED stain jitter.
Here every colour effect is a 3x3 map plus offset per tile (HED as an affine
map of optical density), composed into one matrix and applied in one
XLA-compiled function: 3.4x the input throughput of the op-by-op version
(bench/train_input.py), which is what keeps a GPU fed from a few CPU cores.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from histopipe.core.configs import AugmentationConfig
from histopipe.core.stain import HED_FROM_RGB, RGB_FROM_HED
from histopipe.trainer import features

_LOG_256 = float(np.log(256.0))
# Rec. 601 luma, and RGB <-> YIQ (rows: R, G, B in; columns: Y, I, Q out).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.596, 0.211],
                        [0.587, -0.274, -0.523],
                        [0.114, -0.322, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def hed_matrices(scale: tf.Tensor, shift: tf.Tensor):
  """Per-tile stain jitter as an affine map of optical density: OD @ M + b.

  Deconvolving into H, E, D, scaling and shifting each and recomposing is
  linear in optical density, so the three steps fold into one 3x3 matrix a
  tile ([M, 3, 3]) and an offset ([M, 3])."""
  matrix = tf.einsum("cs,ms,sd->mcd", HED_FROM_RGB, scale, RGB_FROM_HED)
  offset = tf.einsum("ms,sd->md", shift, RGB_FROM_HED)
  return matrix, offset


def hed_jitter(pixels: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
  """[M, h, w, 3] pixels in 0..255; per-tile [M, 3] stain scale and shift."""
  matrix, offset = hed_matrices(scale, shift)
  # OD = log 256 - log(p + 1); p' = 256 exp(-(OD @ M + b)) - 1, rewritten so
  # that each pixel needs one log, one 3x3 product and one exp.
  log_offset = _LOG_256 * (1.0 - tf.reduce_sum(matrix, axis=1)) - offset
  log_pixels = tf.math.log(pixels + 1.0)
  jittered = tf.exp(tf.einsum("mhwc,mcd->mhwd", log_pixels, matrix) +
                    log_offset[:, None, None, :]) - 1.0
  return tf.clip_by_value(jittered, 0.0, 255.0)


def colour_matrices(contrast: tf.Tensor, saturation: tf.Tensor, hue: tf.Tensor) -> tf.Tensor:
  """[M, 3, 3]: contrast, then saturation (towards luma grey), then a hue
  rotation (in YIQ), as one linear map of RGB rows. Each keeps grey grey."""
  count = tf.shape(saturation)[0]
  eye = tf.eye(3, batch_shape=[count])
  towards_grey = tf.broadcast_to(tf.constant(_LUMA[:, None] * np.ones((1, 3), np.float32)),
                                 [count, 3, 3])
  s = saturation[:, None, None]
  saturate = s * eye + (1.0 - s) * towards_grey
  angle = 2.0 * np.pi * hue
  cos, sin, zero, one = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle), tf.ones_like(angle)
  rotate_iq = tf.stack([tf.stack([one, zero, zero], -1),
                        tf.stack([zero, cos, sin], -1),
                        tf.stack([zero, -sin, cos], -1)], 1)
  hue_turn = tf.einsum("cy,myz,zd->mcd", _RGB_TO_YIQ, rotate_iq, _YIQ_TO_RGB)
  return contrast[:, None, None] * tf.matmul(saturate, hue_turn)


def colour_jitter(pixels: tf.Tensor, brightness: tf.Tensor, contrast: tf.Tensor,
                  saturation: tf.Tensor, hue: tf.Tensor) -> tf.Tensor:
  """Per-tile jitter of [M, h, w, 3] pixels in 0..255; factors are [M]
  tensors (brightness additive on 0..1, hue additive in turns)."""
  matrix = colour_matrices(contrast, saturation, hue)
  # Contrast scales around the tile's mean grey; brightness shifts it. Grey
  # stays grey under the matrix, so both are one offset after it.
  mean = tf.reduce_mean(pixels, axis=[1, 2, 3])
  offset = (1.0 - contrast) * mean + 255.0 * brightness
  jittered = tf.einsum("mhwc,mcd->mhwd", pixels, matrix) + offset[:, None, None, None]
  return tf.clip_by_value(jittered, 0.0, 255.0)


def dihedral(tiles: tf.Tensor, transpose: tf.Tensor, flip_rows: tf.Tensor,
             flip_cols: tf.Tensor) -> tf.Tensor:
  """Per-tile [M] booleans: transpose, then flip rows, then flip columns. With
  fair coins, each of the 8 flips and 90-degree rotations is equally likely."""
  def where(condition, changed, unchanged):
    return tf.where(condition[:, None, None, None], changed, unchanged)
  tiles = where(transpose, tf.transpose(tiles, [0, 2, 1, 3]), tiles)
  tiles = where(flip_rows, tf.reverse(tiles, axis=[1]), tiles)
  return where(flip_cols, tf.reverse(tiles, axis=[2]), tiles)


class BagAugmenter:
  """Callable on a transformed batch; draws from its own generator, so every
  epoch sees new augmentations while a run stays reproducible from its seed.

  The pixel work runs as one XLA-compiled function: fused, it is ~2.5x
  faster than op by op on CPU (bench/train_input.py)."""

  def __init__(self, config: AugmentationConfig, seed: int):
    self._config = config
    self._generator = tf.random.Generator.from_seed(seed)
    self._augment_tiles = tf.function(self._augment_tiles_eagerly, jit_compile=True)

  def _uniform(self, shape, spread: float, centre: float = 0.0) -> tf.Tensor:
    return self._generator.uniform(shape, centre - spread, centre + spread)

  def _coins(self, count) -> tf.Tensor:
    return self._generator.uniform([count]) < 0.5

  def __call__(self, transformed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    config = self._config
    tiles = transformed[features.TILES_XF]
    valid = transformed[features.TILE_VALID_XF]
    shape = tf.shape(tiles)
    flat = tf.reshape(tiles, tf.concat([[-1], shape[2:]], axis=0))
    count = tf.shape(flat)[0]
    tiles_per_bag = shape[1]
    # Random draws here, pixel work in the compiled function.
    draws = {
        "transpose": self._coins(count), "flip_rows": self._coins(count),
        "flip_cols": self._coins(count),
        "hed_scale": self._uniform([count, 3], config.hed_sigma, 1.0),
        "hed_shift": self._uniform([count, 3], config.hed_sigma),
        "brightness": self._uniform([count], config.brightness),
        "contrast": self._uniform([count], config.contrast, 1.0),
        "saturation": self._uniform([count], config.saturation, 1.0),
        "hue": self._uniform([count], config.hue),
        # The Transform's statistics, one row per tile, to work on pixels.
        "mean": tf.repeat(transformed[features.CHANNEL_MEAN_XF], tiles_per_bag, axis=0),
        "std": tf.repeat(transformed[features.CHANNEL_STD_XF], tiles_per_bag, axis=0),
    }
    tiles = tf.reshape(self._augment_tiles(flat, draws), shape)
    out = dict(transformed)
    if config.shuffle_tiles:
      # Valid tiles in a random order, padding after them (keys in [1, 2)),
      # so a model that looks at the first k tiles sees k real ones.
      keys = self._generator.uniform(tf.shape(valid)) + (1.0 - tf.cast(valid > 0, tf.float32))
      order = tf.argsort(keys, axis=1)
      tiles = tf.gather(tiles, order, batch_dims=1)
      valid = tf.gather(valid, order, batch_dims=1)
    out[features.TILES_XF] = tiles
    out[features.TILE_VALID_XF] = valid
    return out

  def _augment_tiles_eagerly(self, flat: tf.Tensor, draws: Dict[str, tf.Tensor]) -> tf.Tensor:
    config = self._config
    if config.flips_and_rotations:
      flat = dihedral(flat, draws["transpose"], draws["flip_rows"], draws["flip_cols"])
    if config.colour or config.hed_sigma:
      mean, std = draws["mean"][:, None, None, :], draws["std"][:, None, None, :]
      pixels = flat * std + mean
      if config.hed_sigma:
        pixels = hed_jitter(pixels, draws["hed_scale"], draws["hed_shift"])
      if config.colour:
        pixels = colour_jitter(pixels, draws["brightness"], draws["contrast"],
                               draws["saturation"], draws["hue"])
      flat = (pixels - mean) / std
    return flat
