"""A compiled KFP v2 package as run-local reads it: the PipelineSpec through
kfp's own proto, what run-local refuses before any task runs, the tasks in
dependency order and the pipeline parameters typed as the package declares."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import yaml
from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2 as kfp_spec

from histopipe.kubeflow.errors import PackageError
from histopipe.kubeflow.placeholders import PLACEHOLDER, placeholder_problem

PARAMETER_TYPES = kfp_spec.ParameterType.ParameterTypeEnum


def _documents(path: str) -> list:
  """The YAML documents of a package: the pipeline spec, then, when the
  package places steps on Kubernetes nodes, the platform spec."""
  try:
    with open(path, encoding="utf-8") as f:
      return list(yaml.safe_load_all(f))
  except OSError as e:
    raise PackageError(f"{path}: cannot read the package ({e.strerror})") from None
  except yaml.YAMLError as e:
    raise PackageError(f"{path}: not YAML or JSON ({e})") from None


def load_package(path: str) -> kfp_spec.PipelineSpec:
  """The PipelineSpec in a compiled package (YAML or JSON; a PipelineJob's
  `pipelineSpec` too), parsed by kfp's own proto."""
  documents = _documents(path)
  document = documents[0] if documents else None
  if isinstance(document, dict) and "pipelineSpec" in document:
    document = document["pipelineSpec"]
  if not isinstance(document, dict) or "root" not in document:
    raise PackageError(f"{path}: not a KFP v2 pipeline spec (no root DAG)")
  try:
    return json_format.ParseDict(document, kfp_spec.PipelineSpec())
  except json_format.ParseError as e:
    raise PackageError(f"{path}: not a KFP v2 pipeline spec ({e})") from None


def load_platform_spec(path: str) -> kfp_spec.PlatformSpec:
  """The package's platform spec (empty when it has none), merged from the
  documents after the first as kfp's client merges them."""
  merged: dict = {}
  for document in _documents(path)[1:]:
    if not isinstance(document, dict):
      raise PackageError(f"{path}: a document after the pipeline spec is not a platform spec")
    merged.update(document)
  try:
    return json_format.ParseDict(merged, kfp_spec.PlatformSpec())
  except json_format.ParseError as e:
    raise PackageError(f"{path}: not a KFP platform spec ({e})") from None


# What a platform spec may say of an executor for run-local to run it: where
# its pod is scheduled, which changes nothing a task computes. Anything else
# (secrets, volumes, config maps as files or env) would have to be skipped.
PLACEMENT_FIELDS = ("nodeSelector", "tolerations", "nodeAffinity", "podAffinity")


def unsupported_platform_features(platform: kfp_spec.PlatformSpec) -> List[str]:
  problems = []
  for name, single in sorted(platform.platforms.items()):
    if name != "kubernetes":
      problems.append(f"platform {name}: not Kubernetes")
      continue
    for executor, config in sorted(single.deployment_spec.executors.items()):
      for field in sorted(set(config.keys()) - set(PLACEMENT_FIELDS)):
        problems.append(f"{executor}: Kubernetes {field} (only node placement can be run locally)")
  return problems


def executor_of(spec: kfp_spec.PipelineSpec, task_name: str):
  """The task's component and its executor (the spec keeps the deployment
  config as a Struct; kfp's own message reads it)."""
  task = spec.root.dag.tasks[task_name]
  component = spec.components[task.component_ref.name]
  deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                     kfp_spec.PipelineDeploymentConfig())
  return component, deployment.executors.get(component.executor_label)


def check_supported(spec: kfp_spec.PipelineSpec,
                    platform: Optional[kfp_spec.PlatformSpec] = None) -> None:
  """Refuses, naming the task, anything this tool would have to skip or fake."""
  problems = unsupported_platform_features(platform) if platform is not None else []
  for name, task in spec.root.dag.tasks.items():
    component, executor = executor_of(spec, name)
    if component.HasField("dag"):
      problems.append(f"{name}: a sub-DAG")
      continue
    if task.HasField("trigger_policy") and task.trigger_policy.condition:
      problems.append(f"{name}: a condition ({task.trigger_policy.condition})")
    if task.HasField("iterator_policy") or task.WhichOneof("iterator"):
      problems.append(f"{name}: a loop")
    kind = executor.WhichOneof("spec") if executor is not None else None
    if kind == "resolver":
      problems.append(f"{name}: a resolver task (open-source KFP refuses these too: "
                      "\"resolver executors not implemented\")")
    elif kind == "custom_job":
      problems.append(f"{name}: a custom job (Google Cloud only)")
    elif kind not in ("container", "importer"):
      problems.append(f"{name}: no executor in the package")
    for key, artifact in task.inputs.artifacts.items():
      if not artifact.HasField("task_output_artifact"):
        problems.append(f"{name}: input artifact {key} is not an upstream task's output")
      elif artifact.task_output_artifact.producer_task not in spec.root.dag.tasks:
        problems.append(f"{name}: input artifact {key} comes from "
                        f"{artifact.task_output_artifact.producer_task}, which is no task")
    for key, parameter in task.inputs.parameters.items():
      source = parameter.WhichOneof("kind")
      if source not in ("runtime_value", "component_input_parameter", "task_output_parameter"):
        problems.append(f"{name}: parameter {key} comes from {source}")
      elif (source == "task_output_parameter" and
            parameter.task_output_parameter.producer_task not in spec.root.dag.tasks):
        problems.append(f"{name}: parameter {key} comes from "
                        f"{parameter.task_output_parameter.producer_task}, which is no task")
    if kind == "container":
      for part in list(executor.container.command) + list(executor.container.args):
        for placeholder in PLACEHOLDER.findall(part):
          problem = placeholder_problem(placeholder, component)
          if problem:
            problems.append(f"{name}: {problem}")
  if problems:
    raise PackageError("cannot run this package locally:\n  " + "\n  ".join(problems))


def task_order(spec: kfp_spec.PipelineSpec) -> List[str]:
  """Tasks in dependency order: `dependentTasks` plus every producer a task
  takes an input from (KFP adds those edges itself)."""
  tasks = spec.root.dag.tasks
  upstream = {name: set(task.dependent_tasks) for name, task in tasks.items()}
  for name, task in tasks.items():
    for artifact in task.inputs.artifacts.values():
      upstream[name].add(artifact.task_output_artifact.producer_task)
    for parameter in task.inputs.parameters.values():
      if parameter.HasField("task_output_parameter"):
        upstream[name].add(parameter.task_output_parameter.producer_task)
  order: List[str] = []
  done = set()
  while len(order) < len(tasks):
    ready = sorted(name for name in tasks if name not in done and upstream[name] <= done)
    if not ready:
      raise PackageError("the tasks' dependencies form a cycle: "
                         + ", ".join(sorted(set(tasks) - done)))
    order.extend(ready[:1])
    done.add(ready[0])
  return order


def pipeline_parameters(spec: kfp_spec.PipelineSpec,
                        given: Mapping[str, str]) -> Dict[str, struct_pb2.Value]:
  """The pipeline's parameters: `given` (NAME=VALUE strings, parsed by the
  parameter's type) over the package's defaults; each must have a value."""
  definitions = spec.root.input_definitions.parameters
  unknown = sorted(set(given) - set(definitions))
  if unknown:
    raise PackageError(f"unknown parameter(s) {', '.join(unknown)}; the package takes: "
                       + (", ".join(sorted(definitions)) or "none"))
  values = {}
  for name, definition in definitions.items():
    if name in given:
      values[name] = parse_parameter(name, given[name], definition.parameter_type)
    elif definition.HasField("default_value"):
      values[name] = definition.default_value
    elif not definition.is_optional:
      raise PackageError(f"parameter {name} has no default in the package: "
                         f"give it with --param {name}=VALUE")
  return values


def parse_parameter(name: str, text: str, kind: int) -> struct_pb2.Value:
  value = struct_pb2.Value()
  try:
    if kind == PARAMETER_TYPES.STRING:
      value.string_value = text
    elif kind in (PARAMETER_TYPES.NUMBER_INTEGER, PARAMETER_TYPES.NUMBER_DOUBLE):
      number = float(text)
      if kind == PARAMETER_TYPES.NUMBER_INTEGER and not number.is_integer():
        raise ValueError("not an integer")
      value.number_value = number
    elif kind == PARAMETER_TYPES.BOOLEAN:
      if text.lower() not in ("true", "false"):
        raise ValueError("not true or false")
      value.bool_value = text.lower() == "true"
    else:  # LIST, STRUCT
      json_format.Parse(text, value)
  except (ValueError, json_format.ParseError) as e:
    raise PackageError(f"--param {name}={text}: {e}") from None
  return value


def parse_params(items: Sequence[str]) -> Dict[str, str]:
  """`NAME=VALUE` strings as a dict of texts (typed later by each parameter's
  declared type, unlike `submit.parse_params`, which guesses from the text)."""
  values = {}
  for item in items:
    name, separator, value = item.partition("=")
    if not separator or not name:
      raise PackageError(f"--param {item}: expected NAME=VALUE")
    values[name] = value
  return values
