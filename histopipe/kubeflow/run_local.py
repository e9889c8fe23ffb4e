"""`histopipe kubeflow run-local`: runs a compiled KFP v2 package on this
machine, task by task, as the KFP v2 backend's driver and launcher would.

For each task in dependency order: its parameters (constants, pipeline
parameters, upstream output parameters, the component's defaults) and input
artifacts (upstream outputs, as the launcher passes them: name, type, URI,
metadata), output artifacts provisioned at
`<pipeline root>/<pipeline>/<run id>/<task>/<uuid>/<key>` as KFP names them
(the launcher's own folders made first),
all in kfp's own `ExecutorInput` message; that JSON substituted into the
task's container command and args (`{{$}}` and the launcher's other
placeholders) and exactly that command run as a subprocess, in this Python
environment (the image's: `python` is this interpreter's, the image's ENV
set, in its WORKDIR's stand-in, the checkout); then the task's
`ExecutorOutput` read back and merged into its outputs as the launcher does,
declared output parameters typed from their files. Importer tasks are
resolved as KFP's importer does (no container; the same artifact for the
same URI unless `reimport`).

KFP's step cache too: a task whose `cachingOptions` enable it, with the
cache key of an earlier execution (its image, command and args as compiled,
its input parameter values and input artifact names, its output names and
types, within the pipeline), reuses that execution's outputs instead of
running, as long as they still exist (`--no-cache` runs everything).
Artifact names are unique per execution, as MLMD ids are, so a task
downstream of one that ran runs too. One addition to KFP's key: the digest of
histopipe's sources here, since this environment stands in for the image and
its code can change under the same image name.

What it does not do, it refuses before any task runs, naming the task:
resolver tasks (open-source KFP refuses them too: "resolver executors not
implemented"), sub-DAGs, conditions, loops, Google-only custom jobs,
parameters from sources it does not resolve, placeholders the launcher would
not fill, inputs from tasks that do not exist. The
`preCacheCheck` lifecycle hook is not run; open-source KFP ignores it too.

Why hand-written: `kfp.local` (kfp >= 2.6) runs components written with the
KFP SDK, not a compiled TFX package, and the pinned kfp is 2.5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Mapping, Optional, Sequence, TextIO

import yaml
from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2 as kfp_spec

from histopipe.core.errors import UserError

# What the pipeline image sets besides the package (kubeflow/Dockerfile's ENV
# lines; a test keeps the two equal).
IMAGE_ENV = {"TF_USE_LEGACY_KERAS": "1"}

PARAMETER_TYPES = kfp_spec.ParameterType.ParameterTypeEnum
_PLACEHOLDER = re.compile(r"\{\{\$[^}]*\}\}")
# What the KFP driver fills in runtime constants; run-local uses the run id
# for the job and the task name for the task.
_DRIVER_CONSTANTS = ("{{$.pipeline_job_name}}", "{{$.pipeline_job_resource_name}}",
                     "{{$.pipeline_job_uuid}}", "{{$.pipeline_task_name}}",
                     "{{$.pipeline_task_uuid}}")


class PackageError(UserError):
  """A package this tool cannot run, or a run it cannot start; says which task and why."""


class TaskFailed(UserError):
  """A task's command exited non-zero; names the task and its log."""


@dataclasses.dataclass
class TaskRun:
  name: str
  kind: str  # "container" or "importer"
  cached: bool = False  # outputs reused from an earlier execution
  seconds: float = 0.0
  log: str = ""
  outputs: Dict[str, List[dict]] = dataclasses.field(default_factory=dict)  # key -> artifacts


@dataclasses.dataclass
class LocalRun:
  run_id: str
  run_root: str  # <pipeline root>/<pipeline name>/<run id>
  work_dir: str  # logs, executor inputs and outputs of each task
  tasks: List[TaskRun]

  def output(self, task: str, key: str) -> dict:
    """The single artifact `task` wrote under `key` (a RuntimeArtifact as JSON)."""
    (artifact,) = next(t for t in self.tasks if t.name == task).outputs[key]
    return artifact


def load_package(path: str) -> kfp_spec.PipelineSpec:
  """The PipelineSpec in a compiled package (YAML or JSON; a PipelineJob's
  `pipelineSpec` too), parsed by kfp's own proto."""
  try:
    with open(path, encoding="utf-8") as f:
      document = yaml.safe_load(f)
  except OSError as e:
    raise PackageError(f"{path}: cannot read the package ({e.strerror})") from None
  except yaml.YAMLError as e:
    raise PackageError(f"{path}: not YAML or JSON ({e})") from None
  if isinstance(document, dict) and "pipelineSpec" in document:
    document = document["pipelineSpec"]
  if not isinstance(document, dict) or "root" not in document:
    raise PackageError(f"{path}: not a KFP v2 pipeline spec (no root DAG)")
  try:
    return json_format.ParseDict(document, kfp_spec.PipelineSpec())
  except json_format.ParseError as e:
    raise PackageError(f"{path}: not a KFP v2 pipeline spec ({e})") from None


def _executor(spec: kfp_spec.PipelineSpec, task_name: str):
  """The task's component and its executor (the spec keeps the deployment
  config as a Struct; kfp's own message reads it)."""
  task = spec.root.dag.tasks[task_name]
  component = spec.components[task.component_ref.name]
  deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                     kfp_spec.PipelineDeploymentConfig())
  return component, deployment.executors.get(component.executor_label)


def check_supported(spec: kfp_spec.PipelineSpec) -> None:
  """Refuses, naming the task, anything this tool would have to skip or fake."""
  problems = []
  for name, task in spec.root.dag.tasks.items():
    component, executor = _executor(spec, name)
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
        for placeholder in _PLACEHOLDER.findall(part):
          problem = _placeholder_problem(placeholder, component)
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
      values[name] = _parse_parameter(name, given[name], definition.parameter_type)
    elif definition.HasField("default_value"):
      values[name] = definition.default_value
    elif not definition.is_optional:
      raise PackageError(f"parameter {name} has no default in the package: "
                         f"give it with --param {name}=VALUE")
  return values


def _parse_parameter(name: str, text: str, kind: int) -> struct_pb2.Value:
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


_NAMED_PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\]"
                                r"(?:\.(uri|path|output_file))?\}\}")
# The launcher's local paths for remote artifact URIs (its LocalPathForURI).
_MOUNTED_SCHEMES = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


def _placeholder_problem(placeholder: str, component) -> str:
  """Why the launcher could not fill `placeholder` for `component` ("" if it can)."""
  if placeholder == "{{$}}":
    return ""
  found = _NAMED_PLACEHOLDER.fullmatch(placeholder)
  if not found:
    return f"unsupported placeholder {placeholder}"
  side, kind, key, field = found.groups()
  definitions = getattr(component, "input_definitions" if side == "inputs"
                        else "output_definitions")
  if key not in getattr(definitions, kind):
    return f"{placeholder} names no {side[:-1]} {kind[:-1]} of the component"
  if (side, kind, field) not in (("inputs", "parameters", None), ("inputs", "artifacts", "uri"),
                                 ("inputs", "artifacts", "path"), ("outputs", "artifacts", "uri"),
                                 ("outputs", "artifacts", "path"),
                                 ("outputs", "parameters", "output_file")):
    return f"unsupported placeholder {placeholder}"
  return ""


def _parameter_text(value: struct_pb2.Value) -> str:
  """A parameter as the launcher writes it into a command: strings as they
  are, whole numbers without a decimal point, the rest as compact JSON."""
  kind = value.WhichOneof("kind")
  if kind == "string_value":
    return value.string_value
  if kind == "number_value":
    number = value.number_value
    return str(int(number)) if number.is_integer() else repr(number)
  if kind == "bool_value":
    return "true" if value.bool_value else "false"
  return json.dumps(json_format.MessageToDict(value), separators=(",", ":"))


def _local_path(uri: str) -> str:
  for scheme, mount in _MOUNTED_SCHEMES.items():
    if uri.startswith(scheme):
      return mount + uri[len(scheme):]
  return uri


def _replace_placeholders(text: str, executor_input: kfp_spec.ExecutorInput,
                          as_json: str) -> str:
  """The launcher's substitutions, in one pass (a value is never scanned
  again): the whole input, parameters, artifact URIs and paths, output
  files. `check_supported` has checked every placeholder already."""

  def one(match: "re.Match[str]") -> str:
    placeholder = match.group(0)
    if placeholder == "{{$}}":
      return as_json
    side, kind, key, field = _NAMED_PLACEHOLDER.fullmatch(placeholder).groups()
    if kind == "parameters":
      if side == "inputs":
        return _parameter_text(executor_input.inputs.parameter_values[key])
      return executor_input.outputs.parameters[key].output_file
    artifacts = getattr(executor_input, side).artifacts[key].artifacts
    if not artifacts:
      raise PackageError(f"{placeholder}: no artifact")
    return artifacts[0].uri if field == "uri" else _local_path(artifacts[0].uri)

  return _PLACEHOLDER.sub(one, text)


class _Runner:
  """One run of a package: the outputs of the tasks so far, by task and key."""

  def __init__(self, spec: kfp_spec.PipelineSpec, parameters: Dict[str, struct_pb2.Value],
               run_root: str, work_dir: str, stream: TextIO, cache_file: str = ""):
    self.cache_file = cache_file
    self.spec = spec
    self.parameters = parameters
    self.run_root = run_root
    self.work_dir = work_dir
    self.stream = stream
    self.artifacts: Dict[str, Dict[str, List[kfp_spec.RuntimeArtifact]]] = {}
    self.parameter_outputs: Dict[str, Dict[str, struct_pb2.Value]] = {}
    self._next_id = int(time.time() * 1000) * 1000  # MLMD-like ids, unique across runs
    self.run_id = os.path.basename(work_dir)
    self.code_digest = histopipe_code_digest()
    self.run_uuid = str(uuid.uuid4())

  def _new_name(self) -> str:
    self._next_id += 1
    return str(self._next_id)

  def _with_driver_constants(self, value: struct_pb2.Value, task_name: str) -> struct_pb2.Value:
    if value.WhichOneof("kind") != "string_value" or "{{$." not in value.string_value:
      return value
    text = value.string_value
    for constant, filled in zip(_DRIVER_CONSTANTS, (self.run_id, self.run_id, self.run_uuid,
                                                    task_name, str(uuid.uuid4()))):
      text = text.replace(constant, filled)
    return struct_pb2.Value(string_value=text)

  def _parameter_values(self, name: str, task, component) -> Dict[str, struct_pb2.Value]:
    values: Dict[str, struct_pb2.Value] = {}
    for key, source in task.inputs.parameters.items():
      kind = source.WhichOneof("kind")
      if kind == "runtime_value":
        values[key] = self._with_driver_constants(source.runtime_value.constant, name)
      elif kind == "component_input_parameter":
        if source.component_input_parameter not in self.parameters:
          raise PackageError(f"{name}: parameter {source.component_input_parameter} has no value")
        values[key] = self.parameters[source.component_input_parameter]
      elif kind == "task_output_parameter":
        producer = source.task_output_parameter
        values[key] = self.parameter_outputs[producer.producer_task][
            producer.output_parameter_key]
      else:
        raise PackageError(f"{name}: parameter {key} comes from {kind}, which this tool "
                           "does not resolve")
    for key, definition in component.input_definitions.parameters.items():
      if key in values:
        continue
      if definition.HasField("default_value"):
        values[key] = definition.default_value
      elif not definition.is_optional:
        raise PackageError(f"{name}: parameter {key} has no value")
    return values

  def executor_input(self, name: str, task, component) -> kfp_spec.ExecutorInput:
    executor_input = kfp_spec.ExecutorInput()
    for key, value in self._parameter_values(name, task, component).items():
      executor_input.inputs.parameter_values[key].CopyFrom(value)
    for key, source in task.inputs.artifacts.items():
      producer = source.task_output_artifact
      artifacts = self.artifacts[producer.producer_task][producer.output_artifact_key]
      executor_input.inputs.artifacts[key].artifacts.extend(artifacts)
    salt = str(uuid.uuid4())
    for key, definition in component.output_definitions.artifacts.items():
      artifact = executor_input.outputs.artifacts[key].artifacts.add()
      artifact.type.CopyFrom(definition.artifact_type)
      artifact.metadata.CopyFrom(definition.metadata)
      artifact.uri = "/".join([self.run_root, name, salt, key])
    task_dir = os.path.join(self.work_dir, name)
    for key in component.output_definitions.parameters:
      executor_input.outputs.parameters[key].output_file = os.path.join(
          task_dir, "parameters", key)
    # TFX's entry point takes its scratch folder from this file's folder.
    executor_input.outputs.output_file = os.path.join(task_dir, "kfp_outputs",
                                                      "output_metadata.json")
    return executor_input

  def _cache_key(self, executor_input: kfp_spec.ExecutorInput, component, container) -> str:
    """KFP's cache key, within this pipeline: the inputs (parameter values,
    artifact names), the outputs' names and types, the image, command and
    args as compiled. Here the "image" is this Python environment, whose
    histopipe code can change under the same image name: its digest counts too."""
    described = {
        "pipeline": self.spec.pipeline_info.name,
        "parameters": {k: json_format.MessageToDict(v)
                       for k, v in executor_input.inputs.parameter_values.items()},
        "artifacts": {k: [a.name for a in v.artifacts]
                      for k, v in executor_input.inputs.artifacts.items()},
        "outputs": {k: [json_format.MessageToDict(a.type) for a in v.artifacts]
                    for k, v in executor_input.outputs.artifacts.items()},
        "output_parameters": {k: int(v.parameter_type) for k, v in
                              component.output_definitions.parameters.items()},
        "container": [container.image, list(container.command), list(container.args)],
        "code": self.code_digest,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

  def _read_cache(self) -> dict:
    """The cache index; one that cannot be read (a run killed while writing
    it) counts as empty, with a warning."""
    if not self.cache_file or not os.path.exists(self.cache_file):
      return {}
    try:
      with open(self.cache_file, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      self.stream.write(f"warning: cache index {self.cache_file} unreadable ({e}); "
                        "running every task\n")
      return {}

  def _cached(self, name: str, key: str) -> Optional[TaskRun]:
    """An earlier execution with this cache key whose outputs still exist."""
    entry = self._read_cache().get(key)
    if entry is None:
      return None
    artifacts = {k: [json_format.ParseDict(a, kfp_spec.RuntimeArtifact()) for a in v]
                 for k, v in entry["outputs"].items()}
    if any(not _exists(a.uri) for v in artifacts.values() for a in v):
      return None
    self.artifacts[name] = artifacts
    self.parameter_outputs[name] = {k: json_format.ParseDict(v, struct_pb2.Value())
                                    for k, v in entry["parameters"].items()}
    return TaskRun(name, "container", cached=True, outputs=entry["outputs"])

  def _remember(self, name: str, key: str, outputs: Dict[str, List[dict]]) -> None:
    if not self.cache_file:
      return
    cache = self._read_cache()
    cache[key] = {"task": name, "outputs": outputs,
                  "parameters": {k: json_format.MessageToDict(v)
                                 for k, v in self.parameter_outputs[name].items()}}
    # Written aside and renamed: a run killed here leaves the old index whole.
    partial = self.cache_file + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
      json.dump(cache, f, indent=1)
    os.replace(partial, self.cache_file)

  def run_container(self, name: str, task, component, container) -> TaskRun:
    executor_input = self.executor_input(name, task, component)
    caching = task.caching_options.enable_cache
    key = self._cache_key(executor_input, component, container)
    if caching:
      cached = self._cached(name, key)
      if cached is not None:
        return cached
    task_dir = os.path.join(self.work_dir, name)
    os.makedirs(os.path.dirname(executor_input.outputs.output_file), exist_ok=True)
    # The launcher's prepareOutputFolders: parents of output files and local artifacts.
    for definition in executor_input.outputs.parameters.values():
      os.makedirs(os.path.dirname(definition.output_file), exist_ok=True)
    for artifacts in executor_input.outputs.artifacts.values():
      for artifact in artifacts.artifacts:
        if "://" not in artifact.uri:
          os.makedirs(os.path.dirname(artifact.uri), exist_ok=True)
    if os.path.exists(executor_input.outputs.output_file):
      os.remove(executor_input.outputs.output_file)  # TFX would read it as the driver's
    with open(os.path.join(task_dir, "executor_input.json"), "w", encoding="utf-8") as f:
      f.write(json_format.MessageToJson(executor_input))
    as_json = json_format.MessageToJson(executor_input, indent=None)
    argv = [_replace_placeholders(part, executor_input, as_json)
            for part in list(container.command) + list(container.args)]
    with open(os.path.join(task_dir, "command.json"), "w", encoding="utf-8") as f:
      json.dump(argv, f, indent=1)
    environment = dict(os.environ)
    environment.update(IMAGE_ENV)
    environment.update({variable.name: variable.value for variable in container.env})
    # `python` in the command is the image's interpreter: here, this one.
    environment["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environment.get(
        "PATH", "")
    log_path = os.path.join(task_dir, "log.txt")
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
      code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=environment,
                            cwd=image_workdir(), check=False).returncode
    seconds = time.monotonic() - started
    if code != 0:
      raise TaskFailed(f"task {name} failed (exit status {code}); its log: {log_path}")
    outputs = self._merge_executor_output(name, component, executor_input, log_path)
    if caching:
      self._remember(name, key, outputs)
    return TaskRun(name, "container", False, seconds, log_path, outputs)

  def _merge_executor_output(self, name: str, component, executor_input: kfp_spec.ExecutorInput,
                             log_path: str) -> Dict[str, List[dict]]:
    """The launcher's `mergeRuntimeArtifacts`: the executor may set each output's
    URI and metadata; the provisioned type stays. A missing file is no output.
    Output parameters from their files, typed as declared; a declared one
    the task did not write fails the task, as on KFP."""
    executor_output = kfp_spec.ExecutorOutput()
    path = executor_input.outputs.output_file
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        json_format.Parse(f.read(), executor_output, ignore_unknown_fields=True)
    outputs: Dict[str, List[kfp_spec.RuntimeArtifact]] = {}
    for key, provisioned in executor_input.outputs.artifacts.items():
      written = executor_output.artifacts[key].artifacts if key in executor_output.artifacts \
          else []
      merged = []
      for index, artifact in enumerate(provisioned.artifacts):
        result = kfp_spec.RuntimeArtifact()
        result.CopyFrom(artifact)
        if index < len(written):
          if written[index].uri:
            result.uri = written[index].uri
          result.metadata.update(json_format.MessageToDict(written[index].metadata))
        result.name = self._new_name()
        merged.append(result)
      outputs[key] = merged
    self.artifacts[name] = outputs
    self.parameter_outputs[name] = dict(executor_output.parameter_values)
    for key, definition in executor_input.outputs.parameters.items():
      if key in self.parameter_outputs[name]:
        continue
      if not os.path.exists(definition.output_file):
        raise TaskFailed(f"task {name} wrote no output parameter {key} "
                         f"({definition.output_file}); its log: {log_path}")
      with open(definition.output_file, encoding="utf-8") as f:
        text = f.read()
      kind = component.output_definitions.parameters[key].parameter_type
      try:
        self.parameter_outputs[name][key] = _parse_parameter(key, text, kind)
      except PackageError as e:
        raise TaskFailed(f"task {name}: output parameter {e}; its log: {log_path}") from None
    return {key: [json_format.MessageToDict(a) for a in artifacts]
            for key, artifacts in outputs.items()}

  def run_importer(self, name: str, task, component, importer) -> TaskRun:
    """KFP's importer: the URI (a constant or a pipeline parameter) as an
    artifact of the declared type, no container."""
    source = importer.artifact_uri
    if source.HasField("runtime_parameter"):
      parameters = self._parameter_values(name, task, component)
      if source.runtime_parameter not in parameters:
        raise PackageError(f"{name}: the importer's URI parameter "
                           f"{source.runtime_parameter} has no value")
      uri = parameters[source.runtime_parameter].string_value
    else:
      uri = source.constant.string_value
    ((key, _),) = component.output_definitions.artifacts.items()
    # Without `reimport`, KFP reuses the artifact already recorded for this
    # URI and type: the same name, so the tasks downstream can be cached.
    same = hashlib.sha256(json.dumps([uri, json_format.MessageToDict(importer.type_schema)],
                                     sort_keys=True).encode()).hexdigest()
    artifact = kfp_spec.RuntimeArtifact(
        name=self._new_name() if importer.reimport else f"imported-{same[:16]}", uri=uri)
    artifact.type.CopyFrom(importer.type_schema)
    artifact.metadata.update(json_format.MessageToDict(importer.metadata))
    self.artifacts[name] = {key: [artifact]}
    self.parameter_outputs[name] = {}
    return TaskRun(name, "importer", outputs={key: [json_format.MessageToDict(artifact)]})


def histopipe_code_digest() -> str:
  """sha256 over this environment's histopipe sources (names and bytes)."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  digest = hashlib.sha256()
  for folder, folders, files in sorted(os.walk(package)):
    folders.sort()
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        digest.update(os.path.relpath(path, package).encode())
        with open(path, "rb") as f:
          digest.update(f.read())
  return digest.hexdigest()


def image_workdir() -> str:
  """Where the image runs each command (its WORKDIR, /pipeline, holds
  setup.py for --setup_file=./setup.py): here, the checkout holding this
  package's setup.py, else the current folder."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return root if os.path.exists(os.path.join(root, "setup.py")) else os.getcwd()


def _exists(uri: str) -> bool:
  """Whether an artifact's URI still holds something (a bucket's: assumed)."""
  return "://" in uri or os.path.exists(uri)


def run_package(package: str, work_dir: str, parameters: Optional[Mapping[str, str]] = None,
                pipeline_root: str = "", run_id: str = "",
                stream: Optional[TextIO] = None, use_cache: bool = True) -> LocalRun:
  """Runs every task of `package`; logs, executor inputs and outputs of each
  task go to `work_dir/<run id>/<task>/`, artifacts under the pipeline root
  (the package's `defaultPipelineRoot` unless `pipeline_root` is given), the
  cache index to `work_dir/cache.json`; `run.json` records the tasks that
  ran, also when one failed."""
  stream = stream or sys.stderr
  spec = load_package(package)
  check_supported(spec)
  values = pipeline_parameters(spec, parameters or {})
  root = (pipeline_root or spec.default_pipeline_root).rstrip("/")
  if not root:
    raise PackageError(f"{package}: no defaultPipelineRoot; give --pipeline-root")
  run_id = run_id or time.strftime("run-local-%Y%m%d-%H%M%S")
  run_root = "/".join([root, spec.pipeline_info.name, run_id])
  cache_file = os.path.join(os.path.abspath(work_dir), "cache.json") if use_cache else ""
  work_dir = os.path.join(os.path.abspath(work_dir), run_id)
  if os.path.exists(work_dir):
    raise PackageError(f"{work_dir}: run id {run_id} was used already; choose another")
  os.makedirs(work_dir)
  runner = _Runner(spec, values, run_root, work_dir, stream, cache_file)
  order = task_order(spec)
  record = LocalRun(run_id, run_root, work_dir, [])
  try:
    for number, name in enumerate(order, 1):
      task = spec.root.dag.tasks[name]
      component, executor = _executor(spec, name)
      stream.write(f"[{number}/{len(order)}] {name} ...\n")
      stream.flush()
      if executor.WhichOneof("spec") == "importer":
        ran = runner.run_importer(name, task, component, executor.importer)
      else:
        ran = runner.run_container(name, task, component, executor.container)
      stream.write(f"[{number}/{len(order)}] {name}: "
                   + ("cached\n" if ran.cached else f"done in {ran.seconds:.0f} s\n"))
      stream.flush()
      record.tasks.append(ran)
  finally:
    with open(os.path.join(work_dir, "run.json"), "w", encoding="utf-8") as f:
      json.dump(dataclasses.asdict(record), f, indent=1)
  return record


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
