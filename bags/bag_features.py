"""The bag: one `tf.Example` per slide. Feature keys are stated here once.

The trainer module, the serving signatures and the clients import these names;
the SlideExampleGen writes them with `serialize_bag`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List

from histopipe.bags import example_proto

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
# Image statistics of the bag's real tiles, one float each (bag_statistics.py):
# what StatisticsGen and the drift checks look at, since tiles are opaque bytes.
STAT_PREFIX = "img_"
MEAN_RGB = tuple(f"{STAT_PREFIX}mean_{c}" for c in "rgb")  # 0..255
STD_RGB = tuple(f"{STAT_PREFIX}std_{c}" for c in "rgb")  # over the bag's pixels
OD_HAEMATOXYLIN = f"{STAT_PREFIX}od_haematoxylin"  # mean stain optical density
OD_EOSIN = f"{STAT_PREFIX}od_eosin"
TISSUE_FRACTION = f"{STAT_PREFIX}tissue_fraction"  # mean over real tiles
FOCUS = f"{STAT_PREFIX}focus"  # mean variance of the Laplacian of grey
BYTES_PER_TILE = f"{STAT_PREFIX}bytes_per_tile"  # encoded size, PNG or JPEG
IMAGE_STATISTICS = MEAN_RGB + STD_RGB + (OD_HAEMATOXYLIN, OD_EOSIN, TISSUE_FRACTION, FOCUS,
                                         BYTES_PER_TILE)

# Embedding bags (components/tile_embedder/): the bag's features without its
# tiles, their real tiles' embeddings by a frozen encoder in their place, tile
# after tile, and the embedding size; tile_x, tile_y and tile_tissue keep
# only the real tiles' entries, in the same order.
EMBEDDINGS = "embeddings"  # [n * D] float32
EMBEDDING_SIZE = "embedding_size"  # D
# Every feature of an embedding bag but its embeddings: what statistics are
# computed on (the embeddings' values, pooled over all dimensions, say nothing).
EMBEDDING_BAG_METADATA = (IMAGE_ID, PATIENT_ID, DATA_PROVIDER, LABEL, GLEASON_SCORE, TILE_X,
                          TILE_Y, TILE_TISSUE, LEVEL, LEVEL_DOWNSAMPLE, TILE_SIZE, MPP,
                          SLIDE_WIDTH, SLIDE_HEIGHT, EMBEDDING_SIZE) + IMAGE_STATISTICS

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
  # IMAGE_STATISTICS -> value, of the real tiles (empty only in hand-made bags).
  image_stats: Dict[str, float] = dataclasses.field(default_factory=dict)


def serialize_bag(bag: SlideBag, image_id: str, patient_id: str, data_provider: str,
                  label: int, gleason_score: str) -> bytes:
  """The serialized `tf.train.Example` of one bag, built without TensorFlow
  so Beam workers that tile slides never import it."""
  if bag.image_stats and set(bag.image_stats) != set(IMAGE_STATISTICS):
    raise ValueError(f"a bag's image statistics are all of {IMAGE_STATISTICS} or none; "
                     f"got {sorted(bag.image_stats)}")
  stats = {name: ("float", [value]) for name, value in bag.image_stats.items()}
  return example_proto.serialize_example({
      **stats,
      IMAGE_ID: ("bytes", [image_id.encode()]),
      PATIENT_ID: ("bytes", [(patient_id or image_id).encode()]),
      DATA_PROVIDER: ("bytes", [data_provider.encode()]),
      LABEL: ("int64", [label]),
      GLEASON_SCORE: ("bytes", [gleason_score.encode()]),
      TILES: ("bytes", bag.tiles),
      TILE_VALID: ("int64", bag.tile_valid),
      TILE_X: ("int64", bag.tile_x),
      TILE_Y: ("int64", bag.tile_y),
      TILE_TISSUE: ("float", bag.tile_tissue),
      LEVEL: ("int64", [bag.level]),
      LEVEL_DOWNSAMPLE: ("float", [bag.level_downsample]),
      TILE_SIZE: ("int64", [bag.tile_size]),
      MPP: ("float", [bag.mpp]),
      SLIDE_WIDTH: ("int64", [bag.slide_width]),
      SLIDE_HEIGHT: ("int64", [bag.slide_height]),
  })


def serialize_request(bag: SlideBag, image_id: str) -> bytes:
  """A bag as a serving client sends it: the image id and the model's inputs
  (tiles, tile_valid); no label, provider or other metadata."""
  return example_proto.serialize_example({
      IMAGE_ID: ("bytes", [image_id.encode()]),
      TILES: ("bytes", bag.tiles),
      TILE_VALID: ("int64", bag.tile_valid),
  })
