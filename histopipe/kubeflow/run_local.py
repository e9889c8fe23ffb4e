"""`histopipe kubeflow run-local`: runs a compiled KFP v2 package on this
machine, task by task, as the KFP v2 backend's driver and launcher would.

For each task in dependency order: its parameters (constants, pipeline
parameters, upstream output parameters, the component's defaults) and input
artifacts (upstream outputs, as the launcher passes them: name, type, URI,
metadata), output artifacts provisioned at
`<pipeline root>/<pipeline>/<run id>/<task>/<uuid>/<key>` as KFP names them,
all in kfp's own `ExecutorInput` message; that JSON substituted into the
task's container command and args (`{{$}}` and the launcher's other
placeholders) and exactly that command run as a subprocess, in this Python
environment (the image's: `python` is this interpreter's, the image's ENV
set); then the task's `ExecutorOutput` read back and merged into its outputs
as the launcher does. Importer tasks are resolved as KFP's importer does (no
container).

KFP's step cache too: a task whose `cachingOptions` enable it, with the
cache key of an earlier execution (its image, command and args as compiled,
its input parameter values and input artifact names, its output names and
types), reuses that execution's outputs instead of running, as long as they
still exist (`--no-cache` runs everything). Artifact names are unique per
execution, as MLMD ids are, so a task downstream of one that ran runs too.

What it does not do, it refuses before any task runs, naming the task:
resolver tasks (open-source KFP refuses them too: "resolver executors not
implemented"), sub-DAGs, conditions, loops, Google-only custom jobs. The
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


def _replace_placeholders(text: str, executor_input: kfp_spec.ExecutorInput,
                          as_json: str) -> str:
  """The launcher's substitutions: the whole input, parameters, artifact
  URIs and paths (a local pipeline root's path is its URI), output files."""
  text = text.replace("{{$}}", as_json)

  def one(match: "re.Match[str]") -> str:
    placeholder = match.group(0)
    found = re.fullmatch(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\]"
                         r"(?:\.(uri|path|output_file))?\}\}", placeholder)
    if not found:
      raise PackageError(f"unsupported placeholder {placeholder}")
    side, kind, key, field = found.groups()
    if side == "inputs" and kind == "parameters" and field is None:
      value = json_format.MessageToDict(executor_input.inputs.parameter_values[key])
      return value if isinstance(value, str) else json.dumps(value)
    if kind == "artifacts" and field in ("uri", "path"):
      artifacts = getattr(executor_input, side).artifacts[key].artifacts
      if not artifacts:
        raise PackageError(f"{placeholder}: no artifact")
      return artifacts[0].uri
    if side == "outputs" and kind == "parameters" and field == "output_file":
      return executor_input.outputs.parameters[key].output_file
    raise PackageError(f"unsupported placeholder {placeholder}")

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

  def _new_name(self) -> str:
    self._next_id += 1
    return str(self._next_id)

  def _parameter_values(self, name: str, task, component) -> Dict[str, struct_pb2.Value]:
    values: Dict[str, struct_pb2.Value] = {}
    for key, source in task.inputs.parameters.items():
      kind = source.WhichOneof("kind")
      if kind == "runtime_value":
        values[key] = source.runtime_value.constant
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
    salt = uuid.uuid4().hex[:12]
    for key, definition in component.output_definitions.artifacts.items():
      artifact = executor_input.outputs.artifacts[key].artifacts.add()
      artifact.type.CopyFrom(definition.artifact_type)
      artifact.uri = "/".join([self.run_root, name, salt, key])
    task_dir = os.path.join(self.work_dir, name)
    for key in component.output_definitions.parameters:
      executor_input.outputs.parameters[key].output_file = os.path.join(
          task_dir, "parameters", key)
    # TFX's entry point takes its scratch folder from this file's folder.
    executor_input.outputs.output_file = os.path.join(task_dir, "kfp_outputs",
                                                      "output_metadata.json")
    return executor_input

  def _cache_key(self, executor_input: kfp_spec.ExecutorInput, container) -> str:
    """KFP's cache key: the inputs (parameter values, artifact names), the
    outputs' names and types, the image, command and args as compiled."""
    described = {
        "parameters": {k: json_format.MessageToDict(v)
                       for k, v in executor_input.inputs.parameter_values.items()},
        "artifacts": {k: [a.name for a in v.artifacts]
                      for k, v in executor_input.inputs.artifacts.items()},
        "outputs": {k: [json_format.MessageToDict(a.type) for a in v.artifacts]
                    for k, v in executor_input.outputs.artifacts.items()},
        "output_parameters": sorted(executor_input.outputs.parameters),
        "container": [container.image, list(container.command), list(container.args)],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

  def _cached(self, name: str, key: str) -> Optional[TaskRun]:
    """An earlier execution with this cache key whose outputs still exist."""
    if not self.cache_file or not os.path.exists(self.cache_file):
      return None
    with open(self.cache_file, encoding="utf-8") as f:
      entry = json.load(f).get(key)
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
    cache = {}
    if os.path.exists(self.cache_file):
      with open(self.cache_file, encoding="utf-8") as f:
        cache = json.load(f)
    cache[key] = {"task": name, "outputs": outputs,
                  "parameters": {k: json_format.MessageToDict(v)
                                 for k, v in self.parameter_outputs[name].items()}}
    with open(self.cache_file, "w", encoding="utf-8") as f:
      json.dump(cache, f, indent=1)

  def run_container(self, name: str, task, component, container) -> TaskRun:
    executor_input = self.executor_input(name, task, component)
    caching = task.caching_options.enable_cache
    key = self._cache_key(executor_input, container)
    if caching:
      cached = self._cached(name, key)
      if cached is not None:
        return cached
    task_dir = os.path.join(self.work_dir, name)
    os.makedirs(os.path.dirname(executor_input.outputs.output_file), exist_ok=True)
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
                            cwd=task_dir, check=False).returncode
    seconds = time.monotonic() - started
    if code != 0:
      raise TaskFailed(f"task {name} failed (exit status {code}); its log: {log_path}")
    outputs = self._merge_executor_output(name, executor_input)
    if caching:
      self._remember(name, key, outputs)
    return TaskRun(name, "container", False, seconds, log_path, outputs)

  def _merge_executor_output(self, name: str,
                             executor_input: kfp_spec.ExecutorInput) -> Dict[str, List[dict]]:
    """The launcher's `mergeRuntimeArtifacts`: the executor may set each output's
    URI and metadata; the provisioned type stays. A missing file is no output."""
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
      if key not in self.parameter_outputs[name] and os.path.exists(definition.output_file):
        with open(definition.output_file, encoding="utf-8") as f:
          self.parameter_outputs[name][key] = struct_pb2.Value(string_value=f.read())
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
    artifact = kfp_spec.RuntimeArtifact(name=self._new_name(), uri=uri)
    artifact.type.CopyFrom(importer.type_schema)
    artifact.metadata.update(json_format.MessageToDict(importer.metadata))
    self.artifacts[name] = {key: [artifact]}
    self.parameter_outputs[name] = {}
    return TaskRun(name, "importer", outputs={key: [json_format.MessageToDict(artifact)]})


def _exists(uri: str) -> bool:
  """Whether an artifact's URI still holds something (a bucket's: assumed)."""
  return "://" in uri or os.path.exists(uri)


def run_package(package: str, work_dir: str, parameters: Optional[Mapping[str, str]] = None,
                pipeline_root: str = "", run_id: str = "",
                stream: TextIO = sys.stderr, use_cache: bool = True) -> LocalRun:
  """Runs every task of `package`; logs, executor inputs and outputs of each
  task go to `work_dir/<run id>/<task>/`, artifacts under the pipeline root
  (the package's `defaultPipelineRoot` unless `pipeline_root` is given), the
  cache index to `work_dir/cache.json`."""
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
  tasks = []
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
    tasks.append(ran)
  record = LocalRun(run_id, run_root, work_dir, tasks)
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
