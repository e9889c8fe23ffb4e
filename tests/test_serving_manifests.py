"""kubeflow/serving/: TF Serving reads the Pusher's base path, gRPC 8500 and REST 8501;
every config file parses as the proto TF Serving reads it into, and every file a flag names is
in the config map the manifests mount."""

import os

import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from histopipe.core.configs import PipelineConfig

SERVING_DIR = os.path.join(os.path.dirname(__file__), "..", "kubeflow", "serving")
CONFIG_MOUNT = "/config"

# The tensorflow-serving-api wheel ships model_server_config_pb2 but no Python
# module for MonitoringConfig, so it is declared here, field for field, from
# TF Serving's tensorflow_serving/config/monitoring_config.proto.
PROMETHEUS_CONFIG_FIELDS = (("enable", 1, "TYPE_BOOL", "", False),
                            ("path", 2, "TYPE_STRING", "", False))
MONITORING_CONFIG_FIELDS = (
    ("prometheus_config", 1, "TYPE_MESSAGE", ".tensorflow.serving.PrometheusConfig", False),)


def _tf_serving_messages():
  """{message name: class} for the protos above, in a pool of their own."""
  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
  proto_file = descriptor_pb2.FileDescriptorProto(
      name="histopipe_tests/tf_serving_configs.proto", package="tensorflow.serving",
      syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
  messages = (("PrometheusConfig", PROMETHEUS_CONFIG_FIELDS),
              ("MonitoringConfig", MONITORING_CONFIG_FIELDS))
  for message_name, fields in messages:
    message = proto_file.message_type.add(name=message_name)
    for name, number, kind, type_name, repeated in fields:
      field = message.field.add(
          name=name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, kind),
          label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated
          else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
      if type_name:
        field.type_name = type_name
  pool.Add(proto_file)
  factory = message_factory.MessageFactory(pool)
  return {name: factory.GetPrototype(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
          for name, _ in messages}


def _parse(file_name, message):
  with open(os.path.join(SERVING_DIR, file_name)) as f:
    return text_format.Parse(f.read(), message)


def _yaml(file_name):
  with open(os.path.join(SERVING_DIR, file_name)) as f:
    return [doc for doc in yaml.safe_load_all(f) if doc]


def _manifests():
  return {doc["kind"]: doc for doc in _yaml("tf-serving.yaml")}


def _deployment_container():
  (container,) = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
  return container


def _kserve_predictor():
  (service,) = _yaml("kserve.yaml")
  return service, service["spec"]["predictor"]


def _flags(container):
  """--name=value arguments as {name: value}."""
  return dict(arg[2:].split("=", 1) for arg in container["args"])


def _models_config():
  return _parse("models.config", model_server_config_pb2.ModelServerConfig())


def test_models_config_parses_as_tf_serving_config_for_the_pipeline_model():
  (model,) = _models_config().model_config_list.config
  assert model.name == PipelineConfig().name
  assert model.model_platform == "tensorflow"
  # The base path is where the Deployment mounts the Pusher's serving_model_dir.
  container = _deployment_container()
  mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
  assert model.base_path == mounts["models"]
  assert "--model_config_file=" + os.path.join(mounts["config"], "models.config") in container["args"]


def test_version_labels_stable_and_canary_fit_the_version_policy_and_the_server_flags():
  (model,) = _models_config().model_config_list.config
  labels = dict(model.version_labels)
  assert set(labels) == {"stable", "canary"}
  # Pusher versions are push times: the canary is never older than stable.
  assert labels["stable"] <= labels["canary"]
  # Both labelled versions can be loaded at once.
  assert model.model_version_policy.latest.num_versions >= 2
  # A starting server has loaded nothing yet: labels in its first config are
  # refused without this flag (TF Serving's ServerCore).
  for container in (_deployment_container(), _kserve_predictor()[1]["containers"][0]):
    assert _flags(container)["allow_version_labels_for_unavailable_models"] == "true"


def test_deployment_and_service_expose_grpc_8500_and_rest_8501():
  manifests = _manifests()
  assert set(manifests) == {"Deployment", "Service"}
  container = _deployment_container()
  assert container["image"].startswith("tensorflow/serving:")
  assert "--port=8500" in container["args"] and "--rest_api_port=8501" in container["args"]
  assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
  service = manifests["Service"]
  assert service["spec"]["selector"] == manifests["Deployment"]["spec"]["selector"]["matchLabels"]
  assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}


def test_tf_serving_batching_stays_off_the_model_batches_its_encoder_itself():
  """--enable_batching would wrap every signature, `metadata` and
  `predict_tiles` too, which cannot be batched (trainer/encoder_batching.py);
  and TF Serving refuses --batching_parameters_file without it (server.cc)."""
  for container in (_deployment_container(), _kserve_predictor()[1]["containers"][0]):
    flags = _flags(container)
    assert flags.get("enable_batching", "false") == "false"
    assert "batching_parameters_file" not in flags


def test_monitoring_exposes_prometheus_on_the_rest_port_where_the_pods_say():
  config = _parse("monitoring.config", _tf_serving_messages()["MonitoringConfig"]())
  assert config.prometheus_config.enable
  annotations = _manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
  assert annotations["prometheus.io/scrape"] == "true"
  assert annotations["prometheus.io/path"] == config.prometheus_config.path
  assert annotations["prometheus.io/port"] == _flags(_deployment_container())["rest_api_port"]


def test_every_file_a_flag_names_is_in_the_config_map_both_manifests_mount():
  (kustomization,) = _yaml("kustomization.yaml")
  (config_map,) = kustomization["configMapGenerator"]
  files = set(config_map["files"])
  assert all(os.path.isfile(os.path.join(SERVING_DIR, name)) for name in files)
  deployment_pod = _manifests()["Deployment"]["spec"]["template"]["spec"]
  _, kserve_pod = _kserve_predictor()
  for pod in (deployment_pod, kserve_pod):
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_volume,) = [m["name"] for m in container["volumeMounts"]
                        if m["mountPath"] == CONFIG_MOUNT]
    assert volumes[config_volume]["configMap"]["name"] == config_map["name"]
    named = [value for name, value in _flags(container).items() if name.endswith("_file")]
    assert f"{CONFIG_MOUNT}/models.config" in named
    assert f"{CONFIG_MOUNT}/monitoring.config" in named
    for path in named:
      assert os.path.dirname(path) == CONFIG_MOUNT and os.path.basename(path) in files, path


def test_kserve_serves_the_same_model_with_the_same_server_and_arguments():
  service, predictor = _kserve_predictor()
  assert service["apiVersion"] == "serving.kserve.io/v1beta1"
  assert service["kind"] == "InferenceService"
  assert service["metadata"]["name"] == PipelineConfig().name
  (container,) = predictor["containers"]
  deployment_container = _deployment_container()
  assert container["image"] == deployment_container["image"]
  assert container["args"] == deployment_container["args"]
  flags = _flags(container)
  assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")
  # KServe routes one port: the REST one.
  assert [p["containerPort"] for p in container["ports"]] == [8501]
  for probed in (container, deployment_container):
    assert probed["readinessProbe"]["httpGet"] == {
        "path": f"/v1/models/{PipelineConfig().name}/metadata", "port": 8501}
  # The model store: the Deployment's claim, which KServe mounts where
  # models.config looks for versions.
  env = {e["name"]: e["value"] for e in container["env"]}
  claims = [v["persistentVolumeClaim"]["claimName"]
            for v in _manifests()["Deployment"]["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v]
  assert env["STORAGE_URI"] == f"pvc://{claims[0]}"
  (model,) = _models_config().model_config_list.config
  assert model.base_path == "/mnt/models"  # where KServe mounts STORAGE_URI
