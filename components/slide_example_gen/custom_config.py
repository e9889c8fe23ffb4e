"""What the ExampleGen's custom config carries (the data and tiling settings and the code
fingerprint) and how the executor and driver read it back."""

from __future__ import annotations

import json
from typing import Any, Dict

from google.protobuf import any_pb2, struct_pb2
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from histopipe.core.configs import PipelineConfig

# Keys of the ExampleGen's custom config: only what tiling depends on, so a
# change of training settings leaves a cached ExampleGen valid.
_DATA, _TILING, _CODE = "data", "tiling", "code"


def make_custom_config(config: PipelineConfig,
                       code_fingerprint: str = "") -> example_gen_pb2.CustomConfig:
  # Each part travels as one JSON string: a Struct would turn ints into floats.
  values = struct_pb2.Struct()
  values[_DATA] = json.dumps(config.to_dict()[_DATA], sort_keys=True)
  values[_TILING] = json.dumps(config.to_dict()[_TILING], sort_keys=True)
  values[_CODE] = code_fingerprint
  packed = any_pb2.Any()
  packed.Pack(values)
  return example_gen_pb2.CustomConfig(custom_config=packed)


def config_from_exec_properties(exec_properties: Dict[str, Any]) -> PipelineConfig:
  """The settings the ExampleGen runs with (data and tiling; the rest default)."""
  custom = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY], custom)
  values = struct_pb2.Struct()
  custom.custom_config.Unpack(values)
  return PipelineConfig.from_dict({_DATA: json.loads(values[_DATA]),
                                   _TILING: json.loads(values[_TILING])})


def input_split(exec_properties: Dict[str, Any]) -> example_gen_pb2.Input.Split:
  input_config = example_gen_pb2.Input()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                            input_config)
  (split,) = input_config.splits
  return split
