"""The SlideExampleGen driver: the input fingerprint that decides whether a cached ExampleGen is
still valid."""

from __future__ import annotations


from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.types import standard_component_specs

from histopipe.data import datasets
from histopipe.components.slide_example_gen.custom_config import (config_from_exec_properties,
                                                                  input_split)

class SlideExampleGenDriver(example_gen_driver.FileBasedDriver):
  """Fingerprints the label file and every input file (core/storage, so local
  folders and buckets alike), instead of TFX's fingerprint of one file pattern."""

  def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
    del pipeline_info, component_info
    config = config_from_exec_properties(exec_properties)
    exec_properties[example_gen_utils.SPAN_PROPERTY_NAME] = 0
    exec_properties[example_gen_utils.VERSION_PROPERTY_NAME] = None
    exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = datasets.input_fingerprint(
        exec_properties[standard_component_specs.INPUT_BASE_KEY], config.data.format,
        input_split(exec_properties).pattern, config.data.labels_file)
    return exec_properties
