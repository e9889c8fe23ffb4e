"""Clients of TF Serving's Predict API: gRPC (default) and REST.

Both take {input name: numpy array} and return {output name: numpy array},
with a per-call deadline and retries with exponential backoff on the errors
a restarting or overloaded server gives (unavailable, deadline exceeded, 503).
A model or signature the server does not have is not retried: it fails at
once with the server's own message.
"""

from __future__ import annotations

import base64
import time
from typing import Callable, Dict, Optional, TypeVar

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from histopipe.core import signatures
from histopipe.core.errors import UserError
from histopipe.core.model_contract import ModelContract
from histopipe.core.signatures import SERVING_DEFAULT

RETRYABLE_GRPC = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
RETRYABLE_HTTP = (429, 502, 503, 504)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_CONCURRENCY = 64  # slides in flight at once from one client  # a 36-tile PNG bag is ~4 MB; TF Serving's cap is 2 GB


class ServingError(UserError):
  """The server could not be reached, or refused the request; says which."""


class _Retryable(Exception):
  pass


T = TypeVar("T")


def call_with_retries(call: Callable[[], T], what: str, retries: int, backoff_s: float,
                      sleep: Callable[[float], None] = time.sleep) -> T:
  """`call()`; on _Retryable, up to `retries` more tries, waiting backoff_s, 2x, 4x..."""
  start = time.monotonic()
  for attempt in range(retries + 1):
    try:
      return call()
    except _Retryable as e:
      if attempt == retries:
        raise ServingError(f"{what}: gave up after {attempt + 1} tries in "
                           f"{time.monotonic() - start:.1f} s: {e}") from None
      sleep(backoff_s * 2 ** attempt)
  raise AssertionError("unreachable")


class GrpcPredictClient:
  """`PredictionService/Predict` over gRPC (TF Serving's port 8500)."""

  def __init__(self, target: str, model: str, signature: str = SERVING_DEFAULT,
               deadline_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5):
    self.target, self.model, self.signature = target, model, signature
    self._deadline_s, self._retries, self._backoff_s = deadline_s, retries, backoff_s
    self._channel = grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

  def _call(self, method, request, what: str):
    def once():
      try:
        return method(request, timeout=self._deadline_s)
      except grpc.RpcError as e:
        if e.code() in RETRYABLE_GRPC:
          raise _Retryable(f"{e.code().name}: {e.details()}") from None
        raise ServingError(f"{what}: {e.code().name}: {e.details()}") from None
    return call_with_retries(once, what, self._retries, self._backoff_s)

  def signatures(self) -> Dict[str, object]:
    """The model's signature defs (GetModelMetadata); raises if the model is
    not served or lacks this client's signature."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = self.model
    response = self._call(self._stub.GetModelMetadata, request,
                          f"model {self.model!r} metadata at {self.target}")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    if self.signature not in signature_map.signature_def:
      raise ServingError(f"model {self.model!r} at {self.target} has no signature "
                         f"{self.signature!r}; it has {sorted(signature_map.signature_def)}")
    return dict(signature_map.signature_def)

  def contract(self) -> Optional[ModelContract]:
    """What the served model was trained with (its `metadata` signature), or
    None for a model exported without one."""
    if signatures.METADATA not in self.signatures():
      return None
    outputs = self.predict({signatures.METADATA_REQUEST: np.array([b""], dtype=object)},
                           signature=signatures.METADATA)
    return ModelContract.from_json(outputs[signatures.CONTRACT].item().decode())

  def predict(self, inputs: Dict[str, np.ndarray],
              signature: Optional[str] = None) -> Dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = self.model
    request.model_spec.signature_name = signature or self.signature
    for key, value in inputs.items():
      request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    response = self._call(self._stub.Predict, request,
                          f"predict on model {self.model!r} at {self.target}")
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

  def close(self) -> None:
    self._channel.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _to_json(value: np.ndarray):
  if value.dtype == object or value.dtype.kind == "S":
    return [{"b64": base64.b64encode(v).decode()} for v in value.tolist()]
  return value.tolist()


class RestPredictClient:
  """TF Serving's REST API (port 8501): predict in row format, and model metadata."""

  def __init__(self, target: str, model: str, signature: str = SERVING_DEFAULT,
               deadline_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5):
    base = target if "://" in target else f"http://{target}"
    self.model_url = f"{base}/v1/models/{model}"
    self.target, self.model, self.signature = target, model, signature
    self._deadline_s, self._retries, self._backoff_s = deadline_s, retries, backoff_s
    self._session = requests.Session()
    # One pooled connection per concurrent caller (predict --concurrency up to
    # this many); urllib3's default of 10 would drop and reopen the others.
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=MAX_CONCURRENCY)
    self._session.mount("http://", adapter)
    self._session.mount("https://", adapter)

  def _call(self, method: str, url: str, what: str, **kwargs) -> dict:
    def once():
      try:
        response = self._session.request(method, url, timeout=self._deadline_s, **kwargs)
      except (requests.ConnectionError, requests.Timeout) as e:
        raise _Retryable(f"{type(e).__name__}: {e}") from None
      if response.status_code in RETRYABLE_HTTP:
        raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
      if response.status_code != 200:
        raise ServingError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
      return response.json()
    return call_with_retries(once, what, self._retries, self._backoff_s)

  def signatures(self) -> Dict[str, dict]:
    """The model's signature defs (REST model metadata, as JSON); raises if the
    model is not served or lacks this client's signature."""
    url = f"{self.model_url}/metadata"
    body = self._call("GET", url, f"model {self.model!r} metadata at {url}")
    signature_defs = body["metadata"]["signature_def"]["signature_def"]
    if self.signature not in signature_defs:
      raise ServingError(f"model {self.model!r} at {self.target} has no signature "
                         f"{self.signature!r}; it has {sorted(signature_defs)}")
    return signature_defs

  def contract(self) -> Optional[ModelContract]:
    """What the served model was trained with (its `metadata` signature, asked
    in TF Serving's columnar format, which allows a scalar output), or None
    for a model exported without one."""
    if signatures.METADATA not in self.signatures():
      return None
    url = f"{self.model_url}:predict"
    body = {"signature_name": signatures.METADATA,
            "inputs": {signatures.METADATA_REQUEST: [""]}}
    outputs = self._call("POST", url, f"model {self.model!r} metadata at {url}",
                         json=body)["outputs"]
    if isinstance(outputs, dict):  # several outputs come by name, one alone
      outputs = outputs[signatures.CONTRACT]
    return ModelContract.from_json(outputs)

  def predict(self, inputs: Dict[str, np.ndarray],
              signature: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The client's signature in row format; another `signature` (a frozen
    encoder model's embed_tiles, predict_embeddings) in columnar format,
    whose outputs need not have the inputs' first dimension."""
    if len(inputs) != 1:
      raise ValueError("the REST client sends one named input")
    url = f"{self.model_url}:predict"
    if signature and signature != self.signature:
      body = {"signature_name": signature,
              "inputs": {key: _to_json(np.asarray(value)) for key, value in inputs.items()}}
      outputs = self._call("POST", url, f"predict on model {self.model!r} at {url}",
                           json=body)["outputs"]
      if not isinstance(outputs, dict):  # one output comes alone, unnamed
        (name,) = self.signatures()[signature]["outputs"]
        outputs = {name: outputs}
      return {key: np.array(value) for key, value in outputs.items()}
    (values,) = inputs.values()
    body = {"signature_name": self.signature, "instances": _to_json(np.asarray(values))}
    predictions = self._call("POST", url, f"predict on model {self.model!r} at {url}",
                             json=body)["predictions"]
    return {key: np.array([row[key] for row in predictions]) for key in predictions[0]}

  def close(self) -> None:
    self._session.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def connect(server: str, model: str, rest: bool = False, deadline_s: float = 30.0,
            retries: int = 3):
  """A Predict client for `server` (HOST:PORT): gRPC, or REST with `rest`."""
  client_class = RestPredictClient if rest else GrpcPredictClient
  return client_class(server, model, deadline_s=deadline_s, retries=retries)
