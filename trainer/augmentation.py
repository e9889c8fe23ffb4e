"""Training-only augmentation of bags, applied in the Trainer's input pipeline.

Never part of the transform graph, so eval and serving never see it:
* per-tile flips and 90-degree rotations (tissue has no orientation);
* per-tile brightness, contrast, saturation and hue jitter;
* per-tile HED stain jitter (Tellez et al. 2018): colour deconvolution into
  haematoxylin, eosin and DAB optical densities, a random scale and shift of
  each, and recomposition, imitating staining differences between labs;
* a random tile order per bag (MIL pooling must not depend on it).

Tiles arrive normalized; the colour steps undo the normalization with the
per-channel mean/std the Transform outputs next to them, work on 0..255
pixels, and normalize again.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from pipeline.configs import AugmentationConfig
from trainer import features

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in
# scikit-image's rgb_from_hed.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def hed_jitter(pixels: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
  """[M, h, w, 3] pixels in 0..255; per-tile [M, 3] stain scale and shift."""
  optical_density = -tf.math.log((pixels + 1.0) / 256.0)
  stains = tf.einsum("mhwc,cs->mhws", optical_density, HED_FROM_RGB)
  stains = stains * scale[:, None, None, :] + shift[:, None, None, :]
  optical_density = tf.einsum("mhws,sc->mhwc", stains, RGB_FROM_HED)
  return tf.clip_by_value(256.0 * tf.exp(-optical_density) - 1.0, 0.0, 255.0)


def colour_jitter(pixels: tf.Tensor, brightness: tf.Tensor, contrast: tf.Tensor,
                  saturation: tf.Tensor, hue: tf.Tensor) -> tf.Tensor:
  """Per-tile jitter; factors are [M] tensors (brightness and hue additive)."""
  unit = pixels / 255.0
  mean = tf.reduce_mean(unit, axis=[1, 2, 3], keepdims=True)
  unit = (unit - mean) * contrast[:, None, None, None] + mean
  unit = tf.clip_by_value(unit + brightness[:, None, None, None], 0.0, 1.0)
  hsv = tf.image.rgb_to_hsv(unit)
  hsv = tf.stack([tf.math.floormod(hsv[..., 0] + hue[:, None, None], 1.0),
                  tf.clip_by_value(hsv[..., 1] * saturation[:, None, None], 0.0, 1.0),
                  hsv[..., 2]], axis=-1)
  return tf.image.hsv_to_rgb(hsv) * 255.0


class BagAugmenter:
  """Callable on a transformed batch; draws from its own generator, so every
  epoch sees new augmentations while a run stays reproducible from its seed."""

  def __init__(self, config: AugmentationConfig, seed: int):
    self._config = config
    self._generator = tf.random.Generator.from_seed(seed)

  def _uniform(self, shape, spread: float, centre: float = 0.0) -> tf.Tensor:
    return self._generator.uniform(shape, centre - spread, centre + spread)

  def __call__(self, transformed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    config = self._config
    tiles = transformed[features.TILES_XF]
    valid = transformed[features.TILE_VALID_XF]
    shape = tf.shape(tiles)
    flat = tf.reshape(tiles, tf.concat([[-1], shape[2:]], axis=0))
    count = tf.shape(flat)[0]

    if config.flips_and_rotations:
      flip = self._generator.uniform([count]) < 0.5
      flat = tf.where(flip[:, None, None, None], tf.reverse(flat, axis=[2]), flat)
      quarter_turns = self._generator.uniform([count], 0, 4, dtype=tf.int32)
      for k in (1, 2, 3):
        flat = tf.where((quarter_turns == k)[:, None, None, None],
                        tf.image.rot90(flat, k=k), flat)

    if config.colour or config.hed_sigma:
      # Back to pixels with the Transform's statistics, one row per tile.
      tiles_per_bag = shape[1]
      mean = tf.repeat(transformed[features.CHANNEL_MEAN_XF], tiles_per_bag, axis=0)
      std = tf.repeat(transformed[features.CHANNEL_STD_XF], tiles_per_bag, axis=0)
      pixels = flat * std[:, None, None, :] + mean[:, None, None, :]
      if config.hed_sigma:
        pixels = hed_jitter(pixels, self._uniform([count, 3], config.hed_sigma, 1.0),
                            self._uniform([count, 3], config.hed_sigma))
      if config.colour:
        pixels = colour_jitter(pixels,
                               brightness=self._uniform([count], config.brightness),
                               contrast=self._uniform([count], config.contrast, 1.0),
                               saturation=self._uniform([count], config.saturation, 1.0),
                               hue=self._uniform([count], config.hue))
      flat = (pixels - mean[:, None, None, :]) / std[:, None, None, :]

    tiles = tf.reshape(flat, shape)
    out = dict(transformed)
    if config.shuffle_tiles:
      order = tf.argsort(self._generator.uniform(tf.shape(valid)), axis=1)
      tiles = tf.gather(tiles, order, batch_dims=1)
      valid = tf.gather(valid, order, batch_dims=1)
    out[features.TILES_XF] = tiles
    out[features.TILE_VALID_XF] = valid
    return out
