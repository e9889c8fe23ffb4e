"""Submits a compiled pipeline package to a Kubeflow Pipelines API server.

`kfp.Client().create_run_from_pipeline_package` does the work; before it, a
plain GET of the API's healthz endpoint turns "host unreachable" into one
clear error instead of kfp's retries and stack traces, and the parameters are
checked against the ones the package declares.
"""

from __future__ import annotations

import json
from typing import Dict, List, NamedTuple, Optional

import requests

from histopipe.core.errors import UserError
from histopipe.kubeflow.errors import PackageError
from histopipe.kubeflow.package_spec import load_package

HEALTHZ_PATH = "/apis/v2beta1/healthz"


class SubmitError(UserError):
  """The package, a parameter or the host is not right; says which."""


class SubmittedRun(NamedTuple):
  run_id: str
  url: str
  experiment: str


def parse_params(pairs: List[str]) -> Dict[str, object]:
  """["k=v", ...] -> {k: v}; v as JSON when it parses (numbers, booleans), else text."""
  params = {}
  for pair in pairs:
    name, sep, text = pair.partition("=")
    if not sep or not name:
      raise SubmitError(f"--param {pair!r}: expected NAME=VALUE")
    try:
      params[name] = json.loads(text)
    except json.JSONDecodeError:
      params[name] = text
  return params


def declared_parameters(package: str) -> Dict[str, bool]:
  """The package's pipeline parameters: name -> whether it has a default."""
  try:
    spec = load_package(package)
  except PackageError as e:
    raise SubmitError(str(e)) from None
  return {name: parameter.HasField("default_value")
          for name, parameter in spec.root.input_definitions.parameters.items()}


def check_reachable(host: str, timeout_s: float) -> None:
  url = host.rstrip("/") + HEALTHZ_PATH
  try:
    response = requests.get(url, timeout=timeout_s)
  except requests.RequestException as e:
    raise SubmitError(f"cannot reach the Kubeflow Pipelines API at {host} "
                      f"({type(e).__name__}: {e}); is the host right, and is the "
                      "ml-pipeline service port-forwarded or exposed?") from None
  if response.status_code != 200:
    raise SubmitError(f"{url} answered HTTP {response.status_code}: not a Kubeflow "
                      "Pipelines v2 API (the ml-pipeline service, or the UI's /pipeline path)")


def submit(host: str, package: str, experiment: str = "histopipe",
           params: Optional[Dict[str, object]] = None, run_name: Optional[str] = None,
           timeout_s: float = 10.0) -> SubmittedRun:
  params = params or {}
  declared = declared_parameters(package)
  unknown = sorted(set(params) - set(declared))
  if unknown:
    raise SubmitError(f"unknown pipeline parameter(s) {unknown}; {package} declares "
                      f"{sorted(declared) or 'none'}")
  missing = sorted(name for name, has_default in declared.items()
                   if not has_default and name not in params)
  if missing:
    raise SubmitError(f"{package} has no default for {missing}: pass "
                      + " ".join(f"--param {name}=..." for name in missing))
  check_reachable(host, timeout_s)
  import kfp  # slow to import; only once the host answers
  client = kfp.Client(host=host.rstrip("/"))
  try:
    result = client.create_run_from_pipeline_package(
        package, arguments=params, run_name=run_name, experiment_name=experiment)
  except Exception as e:  # kfp_server_api.ApiException and transport errors alike
    raise SubmitError(f"{host} refused the run: {type(e).__name__}: {e}") from None
  return SubmittedRun(result.run_id, f"{host.rstrip('/')}/#/runs/details/{result.run_id}",
                      experiment)
