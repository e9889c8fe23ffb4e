"""The bag: one `tf.Example` per slide. Feature keys are stated here once.

The trainer module, the serving signatures and the clients import these names;
the SlideExampleGen writes them with `bag_to_example`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List

if TYPE_CHECKING:
  import tensorflow as tf

IMAGE_ID = "image_id"
PATIENT_ID = "patient_id"
DATA_PROVIDER = "data_provider"
LABEL = "label"
GLEASON_SCORE = "gleason_score"
TILES = "tiles"  # encoded PNG/JPEG tiles, padded to tiles_per_slide
TILE_VALID = "tile_valid"  # 1 real tile, 0 padding
TILE_X = "tile_x"  # level-0 pixel coordinates of each tile's top-left
TILE_Y = "tile_y"
TILE_TISSUE = "tile_tissue"  # tissue fraction of each tile
LEVEL = "level"
LEVEL_DOWNSAMPLE = "level_downsample"
TILE_SIZE = "tile_size"  # pixels at `level`
MPP = "mpp"  # microns per level-0 pixel, 0 when unknown
SLIDE_WIDTH = "slide_width"  # level 0
SLIDE_HEIGHT = "slide_height"

# Splits are hashed on this feature, so no patient crosses train/eval.
PARTITION_FEATURE = PATIENT_ID


@dataclasses.dataclass
class SlideBag:
  """The tiles cut from one slide, before labels are attached."""
  tiles: List[bytes]
  tile_valid: List[int]
  tile_x: List[int]
  tile_y: List[int]
  tile_tissue: List[float]
  level: int
  level_downsample: float
  tile_size: int
  mpp: float
  slide_width: int
  slide_height: int


def bag_to_example(bag: SlideBag, image_id: str, patient_id: str,
                   data_provider: str, label: int,
                   gleason_score: str) -> "tf.train.Example":
  # TensorFlow is imported here only: tiling a slide without building
  # Examples stays light (~0.1 GB of memory instead of ~0.8 GB with TF).
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

  def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))

  feature = {
      IMAGE_ID: _bytes([image_id.encode()]),
      PATIENT_ID: _bytes([(patient_id or image_id).encode()]),
      DATA_PROVIDER: _bytes([data_provider.encode()]),
      LABEL: _ints([label]),
      GLEASON_SCORE: _bytes([gleason_score.encode()]),
      TILES: _bytes(bag.tiles),
      TILE_VALID: _ints(bag.tile_valid),
      TILE_X: _ints(bag.tile_x),
      TILE_Y: _ints(bag.tile_y),
      TILE_TISSUE: _floats(bag.tile_tissue),
      LEVEL: _ints([bag.level]),
      LEVEL_DOWNSAMPLE: _floats([bag.level_downsample]),
      TILE_SIZE: _ints([bag.tile_size]),
      MPP: _floats([bag.mpp]),
      SLIDE_WIDTH: _ints([bag.slide_width]),
      SLIDE_HEIGHT: _ints([bag.slide_height]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))
