"""What each compiled step asks of the cluster: its container's limits and
requests, and for the steps that need them, the node selector and tolerations.

Where KFP v2 reads each (its driver, backend/src/v2/driver, builds the pod):
- Limits, requests and the GPU are the container's `resources`
  (`PipelineContainerSpec.ResourceSpec`: cpu_limit, memory_limit in GB,
  cpu_request, memory_request, accelerator). The open-source driver makes the
  accelerator's `type` the name of a limit (`nvidia.com/gpu: 1`); it is not a
  GPU model there (Vertex AI reads it as one, e.g. NVIDIA_TESLA_T4).
- A GPU model, node labels and tolerations are Kubernetes-only: KFP keeps them
  in the package's platform spec, `platforms.kubernetes.deploymentSpec.
  executors.<executor>`, a second YAML document that kfp-kubernetes writes
  (`add_node_selector`, `add_toleration`) and the driver applies to the pod.
  That library is not used here: its releases with tolerations (1.2.0 on)
  require protobuf 4 and kfp >= 2.6, and the pinned stack is protobuf 3.20.3
  with kfp 2.5. The fields are written as its `KubernetesExecutorConfig`
  proto's JSON (`nodeSelector.labels`, `tolerations[].key|operator|value|
  effect|tolerationSeconds`), which the driver parses.
"""

from __future__ import annotations

from typing import Dict

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from histopipe.core.configs import KubeflowConfig, StepResources, Toleration

# Steps that run Beam (the DirectRunner inside their container by default).
BEAM_STEPS = ("SlideExampleGen", "StatisticsGen", "Transform", "Evaluator")
EMBEDDER_STEP = "TileEmbedder"  # with model.encoder; a Beam step that may ask for a GPU
RESOURCE_SPEC = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
EXECUTOR_SUFFIX = "_executor"  # TFX names a step's executor <component id>_executor


def resource_spec(resources: StepResources, gpu_resource: str):
  """The container's limits, its requests (the limits unless given lower) and GPUs."""
  spec = RESOURCE_SPEC()
  cpu_request, memory_request = resources.requests
  if resources.cpu:
    spec.cpu_limit = resources.cpu
    spec.cpu_request = cpu_request
  if resources.memory_gb:
    spec.memory_limit = resources.memory_gb
    spec.memory_request = memory_request
  if resources.gpus:
    spec.accelerator.type = gpu_resource
    spec.accelerator.count = resources.gpus
  return spec


def step_resources(kubeflow: KubeflowConfig) -> Dict[str, StepResources]:
  """Resources by component id; the rest get `light_step`."""
  return {"Trainer": kubeflow.trainer, "Tuner": kubeflow.tuner,
          EMBEDDER_STEP: kubeflow.embedder,
          **{step: kubeflow.beam_step for step in BEAM_STEPS}}


def _toleration(toleration: Toleration) -> dict:
  written = {"key": toleration.key, "operator": toleration.operator}
  if toleration.value:
    written["value"] = toleration.value
  if toleration.effect:
    written["effect"] = toleration.effect
  if toleration.toleration_seconds is not None:
    # An int64 in proto3 JSON is a string, as kfp-kubernetes writes it.
    written["tolerationSeconds"] = str(toleration.toleration_seconds)
  return written


def kubernetes_executor_config(resources: StepResources, kubeflow: KubeflowConfig) -> dict:
  """The platform spec's entry for one step's executor: its node selector
  (its labels and its GPU model) and tolerations (its own and, given GPUs,
  the GPU pool's); empty when the step may run on any node."""
  labels = dict(resources.node_selector)
  if resources.gpu_model:
    labels[kubeflow.gpu_model_label] = resources.gpu_model
  tolerations = list(resources.tolerations)
  if resources.gpus:
    tolerations += [t for t in kubeflow.gpu_tolerations if t not in tolerations]
  config: dict = {}
  if labels:
    config["nodeSelector"] = {"labels": labels}
  if tolerations:
    config["tolerations"] = [_toleration(t) for t in tolerations]
  return config


def schedule_steps(spec: dict, kubeflow: KubeflowConfig) -> dict:
  """Sets every container executor's resources in `spec` (the PipelineSpec as
  a dict; done there rather than with TFX's `with_platform_config`, which TFX
  drops for file-based ExampleGens) and returns the platform spec, as a dict,
  holding the steps that have a node selector or tolerations ({} if none)."""
  by_component = step_resources(kubeflow)
  executors: Dict[str, dict] = {}
  for name, executor in spec["deploymentSpec"]["executors"].items():
    if "container" not in executor:
      continue  # importers: no container
    resources = by_component.get(name[:-len(EXECUTOR_SUFFIX)], kubeflow.light_step)
    executor["container"]["resources"] = json_format.MessageToDict(
        resource_spec(resources, kubeflow.gpu_resource))
    placement = kubernetes_executor_config(resources, kubeflow)
    if placement:
      executors[name] = placement
  if not executors:
    return {}
  return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}

