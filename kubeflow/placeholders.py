"""The launcher's placeholders in a task's command and args (`{{$}}`, inputs'
and outputs' parameters and artifacts, the driver's runtime constants),
filled in one pass as KFP's launcher fills them."""

from __future__ import annotations

import json
import re

from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2 as kfp_spec

from histopipe.kubeflow.errors import PackageError

PLACEHOLDER = re.compile(r"\{\{\$[^}]*\}\}")
# What the KFP driver fills in runtime constants; run-local uses the run id
# for the job and the task name for the task.
DRIVER_CONSTANTS = ("{{$.pipeline_job_name}}", "{{$.pipeline_job_resource_name}}",
                     "{{$.pipeline_job_uuid}}", "{{$.pipeline_task_name}}",
                     "{{$.pipeline_task_uuid}}")


_NAMED_PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\]"
                                r"(?:\.(uri|path|output_file))?\}\}")
# The launcher's local paths for remote artifact URIs (its LocalPathForURI).
_MOUNTED_SCHEMES = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


def placeholder_problem(placeholder: str, component) -> str:
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


def local_path(uri: str) -> str:
  for scheme, mount in _MOUNTED_SCHEMES.items():
    if uri.startswith(scheme):
      return mount + uri[len(scheme):]
  return uri


def replace_placeholders(text: str, executor_input: kfp_spec.ExecutorInput,
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
    return artifacts[0].uri if field == "uri" else local_path(artifacts[0].uri)

  return PLACEHOLDER.sub(one, text)
