"""A development server for machines without TF Serving — not TF Serving.

It answers TF Serving's gRPC `PredictionService` (Predict, GetModelMetadata)
and the REST `/v1/models/<name>[/versions/<v>]:predict` call over one
SavedModel, with TF Serving's request and response protos and its status
codes for a missing model or signature, so `histopipe predict` and its tests
run without the model server. Production serves the Pusher's output with the
official TF Serving image (kubeflow/serving/).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from concurrent import futures
from http import server as http_server
from typing import Dict, Optional

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from histopipe.core.signatures import SERVING_DEFAULT
from histopipe.serving.client import MAX_CONCURRENCY
from histopipe.serving.saved_model import BadModelInput, LoadedModel

class RequestRefused(Exception):
  """A request TF Serving would refuse, with the status code it would use."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code


class ServedModel:
  """One loaded model under a name and version, refusing requests as TF Serving does."""

  def __init__(self, name: str, model_dir: str):
    self.name = name
    self.loaded = LoadedModel(model_dir)
    self.path, self.version = self.loaded.path, self.loaded.version
    self.signature_defs = self.loaded.signature_defs

  def check(self, name: str, version: Optional[int], signature: str) -> None:
    if name != self.name or (version and version != self.version):
      wanted = f"Specific({name}, {version})" if version else f"Latest({name})"
      raise RequestRefused(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: {wanted}")
    if not self.loaded.has_signature(signature):
      raise RequestRefused(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Serving signature key \"{signature}\" not found.")

  def input_names(self, signature: str):
    return self.loaded.input_names(signature)

  def run(self, signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    try:
      return self.loaded.run(signature, inputs)
    except BadModelInput as e:
      raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """gRPC Predict and GetModelMetadata over a ServedModel."""

  def __init__(self, model: ServedModel):
    self._model = model

  def Predict(self, request, context):  # noqa: N802 (gRPC method name)
    spec = request.model_spec
    signature = spec.signature_name or SERVING_DEFAULT
    try:
      self._model.check(spec.name, spec.version.value if spec.HasField("version") else None,
                        signature)
      outputs = self._model.run(signature, {key: tf.make_ndarray(proto)
                                            for key, proto in request.inputs.items()})
    except RequestRefused as e:
      context.abort(e.code, str(e))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = self._model.name
    response.model_spec.version.value = self._model.version
    response.model_spec.signature_name = signature
    wanted = set(request.output_filter) or set(outputs)
    for key, value in outputs.items():
      if key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return response

  def GetModelMetadata(self, request, context):  # noqa: N802
    spec = request.model_spec
    try:
      self._model.check(spec.name, spec.version.value if spec.HasField("version") else None,
                        SERVING_DEFAULT)
    except RequestRefused as e:
      context.abort(e.code, str(e))
    if list(request.metadata_field) != ["signature_def"]:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                    "Metadata field signature_def is the only one supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = self._model.name
    response.model_spec.version.value = self._model.version
    response.metadata["signature_def"].Pack(_signature_map(self._model))
    return response


def _signature_map(model: ServedModel) -> get_model_metadata_pb2.SignatureDefMap:
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  for key, signature_def in model.signature_defs.items():
    signature_map.signature_def[key].CopyFrom(signature_def)
  return signature_map


def _model_path(path: str, verb: str):
  """(name, version or None) of `/v1/models/NAME[/versions/V]<verb>`."""
  parts = path.strip("/").split("/")
  if len(parts) < 3 or parts[:2] != ["v1", "models"] or not path.endswith(verb):
    raise RequestRefused(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {path}")
  parts[-1] = parts[-1][:-len(verb)]
  if verb == "/metadata":
    parts = parts[:-1]
  version = int(parts[4]) if len(parts) == 5 and parts[3] == "versions" else None
  return parts[2], version


def rest_metadata(model: ServedModel, path: str) -> dict:
  """TF Serving's REST model metadata: the signature defs, as its JSON mapping of the protos."""
  name, version = _model_path(path, "/metadata")
  model.check(name, version, SERVING_DEFAULT)
  return {"model_spec": {"name": model.name, "signature_name": "",
                         "version": str(model.version)},
          "metadata": {"signature_def": json_format.MessageToDict(
              _signature_map(model), preserving_proto_field_name=True)}}


def _json_ready(key: str, value: np.ndarray):
  """As TF Serving writes an output in JSON: strings as text, or base64-wrapped
  when the output's name ends in "_bytes"."""
  value = np.asarray(value, dtype=object if isinstance(value, bytes) else None)
  if value.dtype == object:
    if key.endswith("_bytes"):
      wrap = lambda v: {"b64": base64.b64encode(v).decode()}  # noqa: E731
    else:
      wrap = lambda v: v.decode("utf-8")  # noqa: E731
    return wrap(value.item()) if value.ndim == 0 else [
        _json_ready(key, v) if isinstance(v, np.ndarray) else wrap(v) for v in value]
  return value.tolist()


def _decode_instance(value):
  """REST JSON value -> numpy-able: {"b64": ...} becomes bytes."""
  if isinstance(value, dict) and set(value) == {"b64"}:
    return base64.b64decode(value["b64"])
  if isinstance(value, list):
    return [_decode_instance(v) for v in value]
  return value


def rest_predict(model: ServedModel, path: str, body: dict) -> dict:
  """TF Serving's REST predict, row format ("instances") or columnar ("inputs")."""
  name, version = _model_path(path, ":predict")
  signature = body.get("signature_name", SERVING_DEFAULT)
  model.check(name, version, signature)
  input_names = model.input_names(signature)
  if "instances" in body:
    instances = body["instances"]
    if instances and isinstance(instances[0], dict) and "b64" not in instances[0]:
      inputs = {key: [_decode_instance(i[key]) for i in instances] for key in instances[0]}
    else:
      inputs = {input_names[0]: [_decode_instance(i) for i in instances]}
  elif "inputs" in body:
    given = body["inputs"]
    inputs = ({key: _decode_instance(v) for key, v in given.items()} if isinstance(given, dict)
              else {input_names[0]: _decode_instance(given)})
  else:
    raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT,
                       "body needs \"instances\" or \"inputs\"")
  # JSON numbers are read as the signature's dtype, as TF Serving reads them.
  dtypes = model.loaded.input_dtypes(signature)
  outputs = model.run(signature, {key: np.array(value, dtype=dtypes.get(key))
                                  for key, value in inputs.items()})
  if "inputs" in body:
    # One output: its value alone; several: an object by name (TF Serving's columnar answer).
    if len(outputs) == 1:
      ((key, value),) = outputs.items()
      return {"outputs": _json_ready(key, value)}
    return {"outputs": {key: _json_ready(key, value) for key, value in outputs.items()}}
  rows = len(next(iter(outputs.values())))
  return {"predictions": [{key: _json_ready(key, value[i]) for key, value in outputs.items()}
                          for i in range(rows)]}


_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.FAILED_PRECONDITION: 400}


def _rest_handler(model: ServedModel):
  class Handler(http_server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
      try:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self._answer(200, rest_predict(model, self.path, body))
      except RequestRefused as e:
        self._answer(_HTTP_STATUS.get(e.code, 500), {"error": str(e)})
      except json.JSONDecodeError as e:
        self._answer(400, {"error": f"JSON parse error: {e}"})

    def do_GET(self):  # noqa: N802
      try:
        self._answer(200, rest_metadata(model, self.path))
      except RequestRefused as e:
        self._answer(_HTTP_STATUS.get(e.code, 500), {"error": str(e)})

    def _answer(self, status: int, answer: dict) -> None:
      data = json.dumps(answer).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's name)
      logging.debug("rest: " + format, *args)

  return Handler


# Requests the gRPC server runs at once: as many as one client sends
# (`predict --concurrency` up to MAX_CONCURRENCY), as TF Serving runs them, so
# that the model's in-graph batching sees them together. Four, as before,
# queued the rest: at 16 in flight the encoder saw at most 4 bags a batch.
WORKERS = MAX_CONCURRENCY


class DevServer:
  """gRPC (and optionally REST) on local ports; `port=0` picks a free one."""

  def __init__(self, model_dir: str, model_name: str, port: int = 0,
               rest_port: Optional[int] = None, host: str = "localhost",
               workers: int = WORKERS):
    self.model = ServedModel(model_name, model_dir)
    self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(self.model), self._grpc)
    self.port = self._grpc.add_insecure_port(f"{host}:{port}")
    if not self.port:
      raise OSError(f"cannot bind gRPC to {host}:{port}")
    self._rest = None
    if rest_port is not None:
      self._rest = http_server.ThreadingHTTPServer((host, rest_port), _rest_handler(self.model))
      self.rest_port = self._rest.server_address[1]
    self.host = host

  def start(self) -> "DevServer":
    self._grpc.start()
    if self._rest is not None:
      threading.Thread(target=self._rest.serve_forever, daemon=True).start()
    return self

  def wait(self) -> None:
    self._grpc.wait_for_termination()

  def stop(self) -> None:
    self._grpc.stop(grace=None)
    if self._rest is not None:
      self._rest.shutdown()
      self._rest.server_close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
