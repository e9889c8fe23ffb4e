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
downstream of one that ran runs too (`step_cache.py`; one addition to KFP's
key: the digest of histopipe's sources here).

The package's reading and refusals are in `package_spec.py`, the
placeholders in `placeholders.py`; this module runs the tasks.

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
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Mapping, Optional, TextIO, Tuple

from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2 as kfp_spec

from histopipe.kubeflow.errors import PackageError, TaskFailed
from histopipe.kubeflow.package_spec import (check_supported, executor_of, load_package,
                                             load_platform_spec, parse_parameter,
                                             pipeline_parameters, task_order)
from histopipe.kubeflow.placeholders import DRIVER_CONSTANTS, replace_placeholders
from histopipe.kubeflow.step_cache import StepCache, cache_key
from histopipe.pipeline.fingerprints import package_digest

# What the pipeline image sets besides the package (kubeflow/Dockerfile's ENV
# lines; a test keeps the two equal).
IMAGE_ENV = {"TF_USE_LEGACY_KERAS": "1"}



@dataclasses.dataclass
class TaskRun:
  name: str
  kind: str  # "container" or "importer"
  cached: bool = False  # outputs reused from an earlier execution
  seconds: float = 0.0
  peak_rss_mb: float = 0.0  # the task's process and the children it waited for
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


# Runs a command, then writes the peak resident memory (KiB) `os.wait4` reports
# for it. A small process of its own starts the command: Linux carries the
# memory high-water mark of the process that forks and execs into the child's
# figure, and this (run-local's) process holds TensorFlow, hundreds of MB.
_MEASURING_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
  f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: List[str], **popen_arguments) -> Tuple[int, float]:
  """(exit status, peak resident memory in MB) of one command: its own peak
  or that of a child it waited for, whichever is larger (`wait4` in a small
  launcher; `getrusage(RUSAGE_CHILDREN)` here would give the largest over
  every child this process has had)."""
  with tempfile.TemporaryDirectory() as scratch:
    peak_file = os.path.join(scratch, "peak_kib")
    process = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", _MEASURING_LAUNCHER, peak_file] + list(argv),
        start_new_session=True, **popen_arguments)
    try:
      code = process.wait()
    except BaseException:
      os.killpg(process.pid, signal.SIGKILL)  # the launcher and the command
      process.wait()
      raise
    peak_kib = 0.0
    if os.path.exists(peak_file):
      with open(peak_file, encoding="ascii") as f:
        peak_kib = float(f.read())
  return code, peak_kib / 1024  # Linux counts KiB


class _Runner:
  """One run of a package: the outputs of the tasks so far, by task and key."""

  def __init__(self, spec: kfp_spec.PipelineSpec, parameters: Dict[str, struct_pb2.Value],
               run_root: str, work_dir: str, stream: TextIO, cache_file: str = ""):
    self.cache = StepCache(cache_file, stream)
    self.spec = spec
    self.parameters = parameters
    self.run_root = run_root
    self.work_dir = work_dir
    self.stream = stream
    self.artifacts: Dict[str, Dict[str, List[kfp_spec.RuntimeArtifact]]] = {}
    self.parameter_outputs: Dict[str, Dict[str, struct_pb2.Value]] = {}
    self._next_id = int(time.time() * 1000) * 1000  # MLMD-like ids, unique across runs
    self.run_id = os.path.basename(work_dir)
    self.code_digest = package_digest()
    self.run_uuid = str(uuid.uuid4())

  def _new_name(self) -> str:
    self._next_id += 1
    return str(self._next_id)

  def _with_driver_constants(self, value: struct_pb2.Value, task_name: str) -> struct_pb2.Value:
    if value.WhichOneof("kind") != "string_value" or "{{$." not in value.string_value:
      return value
    text = value.string_value
    for constant, filled in zip(DRIVER_CONSTANTS, (self.run_id, self.run_id, self.run_uuid,
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

  def run_container(self, name: str, task, component, container) -> TaskRun:
    executor_input = self.executor_input(name, task, component)
    caching = task.caching_options.enable_cache
    key = cache_key(self.spec.pipeline_info.name, executor_input, component, container,
                    self.code_digest)
    if caching:
      earlier = self.cache.lookup(key)
      if earlier is not None:
        self.artifacts[name], self.parameter_outputs[name], outputs = earlier
        return TaskRun(name, "container", cached=True, outputs=outputs)
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
    argv = [replace_placeholders(part, executor_input, as_json)
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
      code, peak_rss_mb = run_measured(argv, stdout=log, stderr=subprocess.STDOUT,
                                       env=environment, cwd=image_workdir())
    seconds = time.monotonic() - started
    if code != 0:
      raise TaskFailed(f"task {name} failed (exit status {code}); its log: {log_path}")
    outputs = self._merge_executor_output(name, component, executor_input, log_path)
    if caching:
      self.cache.remember(key, name, outputs, self.parameter_outputs[name])
    return TaskRun(name, "container", False, seconds, peak_rss_mb, log_path, outputs)

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
        self.parameter_outputs[name][key] = parse_parameter(key, text, kind)
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


def image_workdir() -> str:
  """Where the image runs each command (its WORKDIR, /pipeline, holds
  setup.py for --setup_file=./setup.py): here, the checkout holding this
  package's setup.py, else the current folder."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return root if os.path.exists(os.path.join(root, "setup.py")) else os.getcwd()


def _what_it_took(ran: TaskRun) -> str:
  if ran.cached:
    return "cached"
  took = f"done in {ran.seconds:.0f} s"
  return took + (f", peak memory {ran.peak_rss_mb:,.0f} MB" if ran.peak_rss_mb else "")


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
  # Node selectors and tolerations are the cluster's business: here every task
  # runs on this machine.
  check_supported(spec, load_platform_spec(package))
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
      component, executor = executor_of(spec, name)
      stream.write(f"[{number}/{len(order)}] {name} ...\n")
      stream.flush()
      if executor.WhichOneof("spec") == "importer":
        ran = runner.run_importer(name, task, component, executor.importer)
      else:
        ran = runner.run_container(name, task, component, executor.container)
      stream.write(f"[{number}/{len(order)}] {name}: {_what_it_took(ran)}\n")
      stream.flush()
      record.tasks.append(ran)
  finally:
    with open(os.path.join(work_dir, "run.json"), "w", encoding="utf-8") as f:
      json.dump(dataclasses.asdict(record), f, indent=1)
  return record
