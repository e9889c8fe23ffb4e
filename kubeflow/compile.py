"""Compiles the local runner's DAG into a KFP v2 pipeline spec.

`KubeflowDagRunner` (v1) is gone in TFX 1.16; `KubeflowV2DagRunner` writes a
PipelineJob (the spec plus a runtime config). Kubeflow Pipelines takes the
spec itself as a package, so we write its `pipelineSpec` as YAML with the
pipeline root as `defaultPipelineRoot`. Each step gets its container limits
and requests from `KubeflowConfig`, and the Trainer and Tuner a GPU, the GPU
pool's toleration and any node selector, in a platform spec after it
(kubeflow/scheduling.py); `data_root` is a pipeline
parameter, so one compiled spec serves any slide folder of the format compiled
in (named, or detected from a local `data_root` as the local runner detects
it). One difference from the local DAG: the Evaluator's baseline is the model
now served (`components/served_model/`), because open-source KFP refuses TFX's
resolver tasks ("resolver executors not implemented"). The image must hold
this package (kubeflow/Dockerfile): Transform, Tuner and Trainer load
`trainer.*` by module path, never from a local file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Optional, Sequence

import yaml
from tfx import v1 as tfx

from histopipe.beam.flags import merge_beam_args, require_filled
from histopipe.components.served_model.component import NEVER_CACHED
from histopipe.core.configs import BEAM_PRESETS, PipelineConfig
from histopipe.core import storage
from histopipe.core.errors import UserError
from histopipe.core.storage import make_output_dir
from histopipe.data.datasets import with_detected_format
from histopipe.kubeflow.scheduling import schedule_steps
from histopipe.pipeline import pipeline as pipeline_dag

DATA_ROOT_PARAMETER = "data_root"


def with_beam_args(config: PipelineConfig, beam_preset: Optional[str] = None,
                   extra_beam_args: Sequence[str] = ()) -> PipelineConfig:
  """`config` with the Beam flags of the Beam steps: a preset's (or the
  config's own), then `extra_beam_args` merged in; placeholders refused."""
  base = BEAM_PRESETS[beam_preset] if beam_preset else config.beam_pipeline_args
  beam_args = merge_beam_args(base, extra_beam_args)
  require_filled(beam_args)
  return dataclasses.replace(config, beam_pipeline_args=tuple(beam_args))


def with_known_format(config: PipelineConfig, data_root: Optional[str]) -> PipelineConfig:
  """`config` with `data.format` "auto" resolved as the local runner resolves it, from a
  local data root; a bucket (whose credentials are the cluster's) or a data root given
  only per run is not read when compiling, so there the format must be named."""
  if config.data.format != "auto":
    return config
  if data_root and not storage.is_url(data_root):
    return with_detected_format(config, data_root)
  where = (f"the data root {data_root} is not read when compiling" if data_root else
           "no --data-root: the data root is given per run")
  raise UserError(f"cannot tell the data format ({where}); name it with --format panda, "
                  "pcam or idc (config data.format)")


def with_gpu_requirement(config: PipelineConfig) -> PipelineConfig:
  """`config` with `training.require_gpu` set when the Trainer or Tuner step is
  given GPUs: such a pod that sees none (a driver or image mismatch) stops at
  once, naming what it saw, instead of training on CPU for days."""
  kubeflow = config.kubeflow
  if not (kubeflow.trainer.gpus or kubeflow.tuner.gpus):
    return config
  return dataclasses.replace(config, training=dataclasses.replace(config.training,
                                                                  require_gpu=True))


def compile_pipeline(config: PipelineConfig, output_file: str, image: str,
                     pipeline_root: str, data_root: Optional[str] = None,
                     serving_model_dir: Optional[str] = None) -> str:
  """Writes the KFP v2 PipelineSpec YAML to `output_file`; returns its path.

  Without `data_root` the parameter has no default and each run must set it;
  the serving dir defaults to `<pipeline_root>/serving_model`.
  """
  serving_model_dir = serving_model_dir or pipeline_root.rstrip("/") + "/serving_model"
  config = with_gpu_requirement(with_known_format(config, data_root))
  data_root_parameter = tfx.dsl.experimental.RuntimeParameter(
      name=DATA_ROOT_PARAMETER, ptype=str, default=data_root)
  dag = pipeline_dag.create_pipeline(config, data_root=data_root_parameter,
                                     pipeline_root=pipeline_root,
                                     serving_model_dir=serving_model_dir,
                                     baseline=pipeline_dag.BASELINE_SERVED)
  with tempfile.TemporaryDirectory() as scratch:
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, display_name=config.name, use_pipeline_spec_2_1=True),
        output_dir=scratch, output_filename="pipeline_job.json")
    runner.run(dag)
    with open(os.path.join(scratch, "pipeline_job.json")) as f:
      spec = json.load(f)["pipelineSpec"]
  spec["defaultPipelineRoot"] = pipeline_root
  # TFX leaves parameter defaults to the PipelineJob's runtime config; a KFP
  # package carries them in the spec.
  if data_root:
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    parameters[DATA_ROOT_PARAMETER]["defaultValue"] = data_root
  platform_spec = schedule_steps(spec, config.kubeflow)
  # A step that reads state outside the pipeline (the served model) must run
  # every time: KFP would otherwise reuse its output from the cache. (No
  # cachingOptions is KFP's "off", as TFX writes it for an uncached pipeline.)
  for task_name in NEVER_CACHED:
    spec["root"]["dag"]["tasks"][task_name].pop("cachingOptions", None)
  make_output_dir(os.path.dirname(os.path.abspath(output_file)))
  # As kfp's compiler writes a package with Kubernetes placement: the pipeline
  # spec, then the platform spec as a second YAML document.
  with open(output_file, "w") as f:
    yaml.safe_dump_all([spec, platform_spec] if platform_spec else [spec], f, sort_keys=False)
  return output_file
