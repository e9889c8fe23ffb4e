"""histopipe/kubeflow/serving/: TF Serving reads the Pusher's base path, gRPC 8500 and REST 8501."""

import os

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from histopipe.core.configs import PipelineConfig

SERVING_DIR = os.path.join(os.path.dirname(__file__), "..", "histopipe", "kubeflow", "serving")


def _manifests():
  with open(os.path.join(SERVING_DIR, "tf-serving.yaml")) as f:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(f) if doc}


def test_models_config_parses_as_tf_serving_config_for_the_pipeline_model():
  with open(os.path.join(SERVING_DIR, "models.config")) as f:
    config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert model.name == PipelineConfig().name
  assert model.model_platform == "tensorflow"
  # The base path is where the Deployment mounts the Pusher's serving_model_dir.
  (container,) = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
  mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
  assert model.base_path == mounts["models"]
  assert "--model_config_file=" + os.path.join(mounts["config"], "models.config") in container["args"]


def test_deployment_and_service_expose_grpc_8500_and_rest_8501():
  manifests = _manifests()
  assert set(manifests) == {"Deployment", "Service"}
  (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
  assert container["image"].startswith("tensorflow/serving:")
  assert "--port=8500" in container["args"] and "--rest_api_port=8501" in container["args"]
  assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
  service = manifests["Service"]
  assert service["spec"]["selector"] == manifests["Deployment"]["spec"]["selector"]["matchLabels"]
  assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}
