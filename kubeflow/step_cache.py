"""KFP's step cache, as run-local emulates it: the cache key of a task and an
index of earlier executions by key, in one JSON file written atomically.

A task whose key matches an earlier execution reuses that execution's outputs
as long as they still exist. One addition to KFP's key: the digest of
histopipe's sources here, since this environment stands in for the image and
its code can change under the same image name.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, TextIO

from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2 as kfp_spec


def cache_key(pipeline_name: str, executor_input: kfp_spec.ExecutorInput, component,
              container, code_digest: str) -> str:
  """KFP's cache key, within this pipeline: the inputs (parameter values,
  artifact names), the outputs' names and types, the image, command and
  args as compiled. Here the "image" is this Python environment, whose
  histopipe code can change under the same image name: its digest counts too."""
  described = {
      "pipeline": pipeline_name,
      "parameters": {k: json_format.MessageToDict(v)
                     for k, v in executor_input.inputs.parameter_values.items()},
      "artifacts": {k: [a.name for a in v.artifacts]
                    for k, v in executor_input.inputs.artifacts.items()},
      "outputs": {k: [json_format.MessageToDict(a.type) for a in v.artifacts]
                  for k, v in executor_input.outputs.artifacts.items()},
      "output_parameters": {k: int(v.parameter_type) for k, v in
                            component.output_definitions.parameters.items()},
      "container": [container.image, list(container.command), list(container.args)],
      "code": code_digest,
  }
  return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def artifact_exists(uri: str) -> bool:
  """Whether an artifact's URI still holds something (a bucket's: assumed)."""
  return "://" in uri or os.path.exists(uri)


class StepCache:
  """The executions so far, by cache key: each one's task, output artifacts
  (RuntimeArtifacts as JSON) and output parameters. No file: nothing cached."""

  def __init__(self, cache_file: str, stream: TextIO):
    self.cache_file = cache_file
    self.stream = stream

  def _read(self) -> dict:
    """The index; one that cannot be read (a run killed while writing it)
    counts as empty, with a warning."""
    if not self.cache_file or not os.path.exists(self.cache_file):
      return {}
    try:
      with open(self.cache_file, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      self.stream.write(f"warning: cache index {self.cache_file} unreadable ({e}); "
                        "running every task\n")
      return {}

  def lookup(self, key: str):
    """(output artifacts by key, output parameters by key) of an earlier
    execution with this cache key whose outputs still exist, else None."""
    entry = self._read().get(key)
    if entry is None:
      return None
    artifacts = {k: [json_format.ParseDict(a, kfp_spec.RuntimeArtifact()) for a in v]
                 for k, v in entry["outputs"].items()}
    if any(not artifact_exists(a.uri) for v in artifacts.values() for a in v):
      return None
    parameters = {k: json_format.ParseDict(v, struct_pb2.Value())
                  for k, v in entry["parameters"].items()}
    return artifacts, parameters, entry["outputs"]

  def remember(self, key: str, task_name: str, outputs: Dict[str, List[dict]],
               parameters: Dict[str, struct_pb2.Value]) -> None:
    if not self.cache_file:
      return
    cache = self._read()
    cache[key] = {"task": task_name, "outputs": outputs,
                  "parameters": {k: json_format.MessageToDict(v) for k, v in parameters.items()}}
    # Written aside and renamed: a run killed here leaves the old index whole.
    partial = self.cache_file + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
      json.dump(cache, f, indent=1)
    os.replace(partial, self.cache_file)


