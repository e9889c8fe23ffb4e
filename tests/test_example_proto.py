"""The TF-free tf.train.Example writer matches TensorFlow byte for byte."""

import numpy as np
import pytest
import tensorflow as tf

from histopipe.bags import bag_features
from histopipe.bags import example_proto
from histopipe.bags.bag_features import SlideBag


def _tf_bytes(features):
  def feature(kind, values):
    if kind == "bytes":
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind == "int64":
      return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
  example = tf.train.Example(features=tf.train.Features(
      feature={name: feature(*spec) for name, spec in features.items()}))
  return example.SerializeToString(deterministic=True)


@pytest.mark.parametrize("features", [
    {},
    {"empty_bytes": ("bytes", []), "empty_ints": ("int64", []),
     "empty_floats": ("float", [])},
    {"tiles": ("bytes", [b"", b"\x00\xff", bytes(range(256)) * 600]),  # 150 kB: long varint
     "x": ("int64", [0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1]),
     "tissue": ("float", [0.0, 0.25, -1.5, 1e-30, float(np.float32(0.1))]),
     "z_last": ("bytes", ["é".encode()]), "a_first": ("int64", [5])},
])
def test_serialize_example_equals_tensorflow(features):
  assert example_proto.serialize_example(features) == _tf_bytes(features)


def test_unknown_kind_is_refused():
  with pytest.raises(ValueError, match="bytes, int64 or float"):
    example_proto.serialize_example({"x": ("double", [1.0])})


def test_serialized_bag_parses_with_every_feature():
  bag = SlideBag(tiles=[b"png1", b"png2"], tile_valid=[1, 0], tile_x=[1024, -1],
                 tile_y=[2048, -1], tile_tissue=[0.75, 0.0], level=1, level_downsample=4.0,
                 tile_size=256, mpp=0.4861, slide_width=25000, slide_height=15000)
  data = bag_features.serialize_bag(bag, image_id="s1", patient_id="", data_provider="radboud",
                                    label=3, gleason_score="4+3")
  spec = {
      bag_features.IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
      bag_features.PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
      bag_features.LABEL: tf.io.FixedLenFeature([], tf.int64),
      bag_features.TILES: tf.io.FixedLenFeature([2], tf.string),
      bag_features.TILE_X: tf.io.FixedLenFeature([2], tf.int64),
      bag_features.TILE_TISSUE: tf.io.FixedLenFeature([2], tf.float32),
      bag_features.MPP: tf.io.FixedLenFeature([], tf.float32),
  }
  parsed = tf.io.parse_single_example(data, spec)
  assert parsed[bag_features.PATIENT_ID].numpy() == b"s1"  # unknown patient = the slide
  assert parsed[bag_features.LABEL].numpy() == 3
  assert parsed[bag_features.TILES].numpy().tolist() == [b"png1", b"png2"]
  assert parsed[bag_features.TILE_X].numpy().tolist() == [1024, -1]
  assert parsed[bag_features.TILE_TISSUE].numpy().tolist() == [0.75, 0.0]
  assert parsed[bag_features.MPP].numpy() == pytest.approx(0.4861)
