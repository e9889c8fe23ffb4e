"""Serializes a `tf.train.Example` without importing TensorFlow.

Beam workers that tile slides only need the bytes of each bag. Building them
with TensorFlow's protos made every worker process import TensorFlow first
(seconds of start-up and ~0.7 GB each), which is what kept two Beam workers
slower than one. The wire format of `tf.train.Example` is small and fixed
(tensorflow/core/example/{example,feature}.proto); this module writes it, and
the tests check it byte for byte against TensorFlow's own deterministic
serialization.
"""

from __future__ import annotations

import struct
from typing import Dict, Sequence, Union

FeatureValues = Union[Sequence[bytes], Sequence[int], Sequence[float]]

# Wire types of the protobuf encoding.
_VARINT = 0
_LENGTH_DELIMITED = 2

# Field numbers in feature.proto / example.proto.
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3  # oneof kind in Feature
_LIST_VALUE = 1  # `value` in BytesList, FloatList, Int64List
_MAP_KEY, _MAP_VALUE = 1, 2  # a map<string, Feature> entry
_FEATURE_MAP = 1  # `feature` in Features
_FEATURES = 1  # `features` in Example


def _varint(value: int) -> bytes:
  if value < 0:
    value += 1 << 64  # int64 as two's complement: ten bytes
  out = bytearray()
  while True:
    low = value & 0x7F
    value >>= 7
    if value:
      out.append(low | 0x80)
    else:
      out.append(low)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _feature(kind: str, values: FeatureValues) -> bytes:
  if kind == "bytes":
    listed = b"".join(_field(_LIST_VALUE, v) for v in values)
    return _field(_BYTES_LIST, listed)
  if kind == "int64":
    # Repeated scalars are packed; an empty packed field is left out.
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(_INT64_LIST, _field(_LIST_VALUE, packed) if values else b"")
  if kind == "float":
    packed = struct.pack(f"<{len(values)}f", *values)
    return _field(_FLOAT_LIST, _field(_LIST_VALUE, packed) if values else b"")
  raise ValueError(f"feature kind must be bytes, int64 or float, got {kind!r}")


def serialize_feature(kind: str, values: FeatureValues) -> bytes:
  """One serialized `tf.train.Feature` (what TFX's ExampleGen hashes to split)."""
  return _feature(kind, values)


def serialize_example(features: Dict[str, tuple]) -> bytes:
  """`{name: (kind, values)}` -> the serialized `tf.train.Example`.

  kind is "bytes", "int64" or "float". Entries are written sorted by name, as
  TensorFlow's `SerializeToString(deterministic=True)` does, so the same bag
  always gives the same bytes.
  """
  entries = b"".join(
      _field(_FEATURE_MAP, _field(_MAP_KEY, name.encode()) +
             _field(_MAP_VALUE, _feature(kind, values)))
      for name, (kind, values) in sorted(features.items()))
  return _field(_FEATURES, entries)
