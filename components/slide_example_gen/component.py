"""The SlideExampleGen component: its input (the slide files of a data folder), its three patient-
level splits and its settings."""

from __future__ import annotations


from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from histopipe.bags import bag_features
from histopipe.data import datasets
from histopipe.core import storage
from histopipe.core.configs import DataConfig, PipelineConfig
from histopipe.components.slide_example_gen.executor import SlideExampleGenExecutor
from histopipe.components.slide_example_gen.driver import SlideExampleGenDriver
from histopipe.components.slide_example_gen.custom_config import make_custom_config

def input_pattern(data_dir: str, data: DataConfig) -> str:
  """The input split's file pattern (the slides, for PANDA)."""
  data_format = (datasets.detect_format(data_dir, data.labels_file) if data.format == "auto"
                 else data.format)
  # A bucket, or a data root given only at run time (a Kubeflow parameter), is
  # not looked into when the pipeline is built: there the default is
  # train_images/*.
  local = isinstance(data_dir, str) and not storage.is_url(data_dir)
  default = datasets.default_slide_pattern(data_dir) if local else datasets.PANDA_SLIDES
  return {"panda": data.slide_pattern or default,
          "pcam": datasets.PCAM_PATCHES,
          "idc": datasets.IDC_PATCHES}[data_format]


class SlideExampleGen(FileBasedExampleGen):
  """Bags of the best tiles of each slide, split by patient."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(SlideExampleGenExecutor)
  DRIVER_CLASS = SlideExampleGenDriver

  def __init__(self, input_base: str, config: PipelineConfig, code_fingerprint: str = ""):
    data = config.data
    super().__init__(
        input_base=input_base,
        input_config=example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(
            name="slides", pattern=input_pattern(input_base, data))]),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
                for name, buckets in (("train", data.train_buckets),
                                      ("valid", data.valid_buckets),
                                      ("eval", data.eval_buckets))
            ],
            partition_feature_name=bag_features.PARTITION_FEATURE)),
        custom_config=make_custom_config(config, code_fingerprint))
