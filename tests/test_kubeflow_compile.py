"""`histopipe kubeflow compile` and `submit`: the local DAG as a KFP v2 spec, and a run of it.

The spec is read back into KFP's own PipelineSpec proto. The KFP API server
cannot run here, so `submit` talks to a local HTTP server that answers the
few KFP v2 REST calls kfp.Client makes and records what it was sent.
"""

import json
import os
import re
import tempfile
import threading
from http import server as http_server

import pytest
import yaml
from google.protobuf import json_format
from kfp.client import client as kfp_client
from kfp.pipeline_spec import pipeline_spec_pb2
from kubernetes import client as kubernetes_client

from histopipe import cli
from tests.test_pipeline_dag import EXPECTED_UPSTREAM

IMAGE = "registry.example/histopipe:1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile(tmp_path, *extra):
  out = tmp_path / "pipeline.yaml"
  code = cli.main(["kubeflow", "compile", "--out", str(out), "--image", IMAGE,
                   "--pipeline-root", "gs://bucket/root", "--data-root", "gs://bucket/panda",
                   "--serving-dir", "gs://bucket/serving", *extra])
  return code, out


def _read_package(path):
  """The package as kfp's own client reads it for a run: (PipelineSpec, PlatformSpec)."""
  package = kfp_client._extract_pipeline_yaml(str(path))
  return package.pipeline_spec, package.platform_spec


def _pipeline_document(path):
  """The package's first YAML document, the pipeline spec, as a dict."""
  return next(yaml.safe_load_all(open(path)))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  code, out = _compile(tmp_path_factory.mktemp("kfp"))
  assert code == 0
  return out, out.read_text(), _read_package(out)[0]


# The local DAG with one change: the Evaluator's baseline is the model now
# served (open-source KFP refuses resolver tasks).
KUBEFLOW_UPSTREAM = {
    **{name: upstream for name, upstream in EXPECTED_UPSTREAM.items()
       if name != "latest_blessed_model_resolver"},
    "ServedModel": set(),
    "Evaluator": {"SlideExampleGen", "Trainer", "ServedModel"},
    "DriftCheck": {"SlideExampleGen", "Evaluator", "ServedModel"},
}


def test_every_component_is_a_task_with_its_dependencies(compiled):
  _, _, spec = compiled
  tasks = spec.root.dag.tasks
  assert set(tasks) == set(KUBEFLOW_UPSTREAM)
  for name, task in tasks.items():
    assert set(task.dependent_tasks) == KUBEFLOW_UPSTREAM[name], name
  assert spec.default_pipeline_root == "gs://bucket/root"


def test_every_task_runs_on_open_source_kfp(compiled):
  """KFP's Argo compiler refuses resolver executors ("resolver executors not
  implemented") and Google-only custom jobs: every executor is a container.
  The served-model step reads the serving folder, so KFP must not cache it."""
  _, _, spec = compiled
  deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                     pipeline_spec_pb2.PipelineDeploymentConfig())
  assert {name: executor.WhichOneof("spec") for name, executor in deployment.executors.items()
          } == {f"{name}_executor": "container" for name in KUBEFLOW_UPSTREAM}
  served = spec.root.dag.tasks["ServedModel"]
  assert not served.caching_options.enable_cache
  assert spec.root.dag.tasks["Trainer"].caching_options.enable_cache
  parameters = spec.components["ServedModel"].input_definitions.parameters
  assert set(parameters) == {"serving_model_dir"}


def test_trainer_asks_for_a_gpu_and_every_step_has_limits(compiled):
  _, _, spec = compiled
  # A Struct in the PipelineSpec; KFP's own message for it:
  deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                     pipeline_spec_pb2.PipelineDeploymentConfig())
  executors = deployment.executors
  containers = {name[:-len("_executor")]: e.container for name, e in executors.items()
                if e.HasField("container")}
  assert set(containers) == set(KUBEFLOW_UPSTREAM)
  trainer = containers["Trainer"].resources
  assert trainer.accelerator.type == "nvidia.com/gpu" and trainer.accelerator.count == 1
  assert trainer.cpu_limit == 8 and trainer.memory_limit == 32
  # Requests as well as limits: by default the limits (a pod the scheduler
  # places only where all of it is free).
  assert trainer.cpu_request == 8 and trainer.memory_request == 32
  for name, container in containers.items():
    assert container.image == IMAGE
    resources = container.resources
    assert resources.cpu_limit > 0 and resources.memory_limit > 0, name
    assert 0 < resources.cpu_request <= resources.cpu_limit, name
    assert 0 < resources.memory_request <= resources.memory_limit, name
    if name != "Trainer":
      assert not container.resources.accelerator.count, name
  # The full preset's Beam flags reach the Beam-based steps.
  assert "--direct_running_mode=multi_processing" in containers["Transform"].args


def test_data_root_is_a_pipeline_parameter_and_no_local_path_leaks(compiled):
  out, text, spec = compiled
  parameter = spec.root.input_definitions.parameters["data_root"]
  assert parameter.default_value.string_value == "gs://bucket/panda"
  example_gen = spec.root.dag.tasks["SlideExampleGen"]
  assert example_gen.inputs.parameters["input_base"].component_input_parameter == "data_root"
  for local in (REPO, str(out.parent), os.path.expanduser("~"), tempfile.gettempdir()):
    # As a path of its own: "/root" inside "gs://bucket/root" is not a leak.
    assert not re.search(r"(?<![\w:/.-])" + re.escape(local) + r"(/|\b)", text), local


def test_beam_presets_reach_the_beam_steps_and_placeholders_are_refused(tmp_path, capsys):
  code, _ = _compile(tmp_path, "--beam-preset", "dataflow")
  assert code == 2 and "--project=YOUR_PROJECT" in capsys.readouterr().err
  code, out = _compile(tmp_path, "--beam-preset", "dataflow", "--beam-arg=--project=p",
                       "--beam-arg=--region=europe-west4",
                       "--beam-arg=--temp_location=gs://bucket/tmp")
  assert code == 0
  spec = _pipeline_document(out)
  args = spec["deploymentSpec"]["executors"]["Transform_executor"]["container"]["args"]
  assert "--runner=DataflowRunner" in args and "--project=p" in args
  assert "--setup_file=./setup.py" in args and not any("YOUR_" in a for a in args)


class _FakeKfpApi(http_server.BaseHTTPRequestHandler):
  """Answers kfp.Client's v2beta1 calls; records every request."""
  requests = []

  def _answer(self, body):
    data = json.dumps(body).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_GET(self):  # noqa: N802
    self.requests.append(("GET", self.path, None))
    if self.path.startswith("/apis/v2beta1/healthz"):
      self._answer({"multi_user": False})
    else:  # experiments by name: none yet
      self._answer({})

  def do_POST(self):  # noqa: N802
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    self.requests.append(("POST", self.path, body))
    if self.path == "/apis/v2beta1/experiments":
      self._answer({"experiment_id": "exp-1", "display_name": body["display_name"]})
    else:
      self._answer({"run_id": "run-42", "display_name": body["display_name"],
                    "experiment_id": body.get("experiment_id")})

  def log_message(self, *args):
    pass


@pytest.fixture
def fake_kfp():
  _FakeKfpApi.requests = []
  server = http_server.ThreadingHTTPServer(("localhost", 0), _FakeKfpApi)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f"http://localhost:{server.server_address[1]}", _FakeKfpApi.requests
  server.shutdown()
  server.server_close()


def test_submit_uploads_the_compiled_spec_with_its_parameters(compiled, fake_kfp, capsys):
  package, text, _ = compiled
  host, requests = fake_kfp
  assert cli.main(["kubeflow", "submit", "--host", host, "--package", str(package),
                   "--experiment", "panda", "--param", "data_root=gs://other/panda"]) == 0
  printed = capsys.readouterr().out
  assert "run id: run-42" in printed and f"url: {host}/#/runs/details/run-42" in printed
  (experiment,) = [b for m, p, b in requests if p == "/apis/v2beta1/experiments" and m == "POST"]
  assert experiment["display_name"] == "panda"
  (run,) = [b for m, p, b in requests if p == "/apis/v2beta1/runs"]
  assert run["experiment_id"] == "exp-1"
  # The package as compiled: the pipeline spec and the Trainer's placement.
  pipeline, platform = yaml.safe_load_all(text)
  assert run["pipeline_spec"] == {"pipeline_spec": pipeline, "platform_spec": platform}
  assert "Trainer_executor" in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
  assert run["runtime_config"]["parameters"] == {"data_root": "gs://other/panda"}


def test_submit_says_when_the_host_is_unreachable_or_a_parameter_unknown(compiled, capsys):
  package, _, _ = compiled
  assert cli.main(["kubeflow", "submit", "--host", "http://localhost:9", "--package",
                   str(package), "--timeout", "2"]) == 2
  assert "cannot reach the Kubeflow Pipelines API at http://localhost:9" in \
      capsys.readouterr().err
  assert cli.main(["kubeflow", "submit", "--host", "http://localhost:9", "--package",
                   str(package), "--param", "epochs=3"]) == 2
  assert "unknown pipeline parameter(s) ['epochs']" in capsys.readouterr().err


def test_without_a_data_root_default_each_run_must_name_one(tmp_path, capsys):
  out = tmp_path / "pipeline.yaml"
  assert cli.main(["kubeflow", "compile", "--out", str(out), "--image", IMAGE,
                   "--pipeline-root", "gs://bucket/root"]) == 0
  spec = _pipeline_document(out)
  assert "defaultValue" not in spec["root"]["inputDefinitions"]["parameters"]["data_root"]
  assert "gs://bucket/root/serving_model" in out.read_text()  # the Pusher's default
  assert cli.main(["kubeflow", "submit", "--host", "http://localhost:9",
                   "--package", str(out)]) == 2
  assert "--param data_root=..." in capsys.readouterr().err


def _example_gen_settings(package):
  """The SlideExampleGen's data settings and input pattern, as the compiled spec carries them
  (read through KFP's own PipelineSpec proto)."""
  spec, _ = _read_package(package)
  parameters = spec.root.dag.tasks["SlideExampleGen"].inputs.parameters
  custom = json.loads(parameters["custom_config"].runtime_value.constant.string_value)
  (split,) = json.loads(parameters["input_config"].runtime_value.constant.string_value)["splits"]
  return json.loads(custom["custom_config"]["value"]["data"]), split["pattern"]


def test_compile_on_a_local_folder_detects_its_format_as_run_does(tmp_path, capsys):
  """The full preset says panda; a local PCam folder as --data-root, no --format: the
  package tiles PCam's patches (train/*.tif, labels from train_labels.csv)."""
  data = tmp_path / "pcam"
  assert cli.main(["synth", "--format", "pcam", "--out", str(data), "--slides", "4"]) == 0
  out = tmp_path / "pipeline.yaml"
  argv = ["kubeflow", "compile", "--out", str(out), "--image", IMAGE,
          "--pipeline-root", "gs://bucket/root"]
  assert cli.main(argv + ["--data-root", str(data)]) == 0
  data_settings, pattern = _example_gen_settings(out)
  assert data_settings["format"] == "pcam" and pattern == "train/*.tif"
  # --format still decides when given.
  assert cli.main(argv + ["--data-root", str(data), "--format", "idc"]) == 0
  assert _example_gen_settings(out)[0]["format"] == "idc"


@pytest.mark.parametrize("data_root", [["--data-root", "gs://bucket/data"], []],
                         ids=["bucket", "no_data_root"])
def test_compile_refuses_a_format_it_cannot_know(tmp_path, capsys, data_root):
  """A config that leaves the format to detection, and a data root that is not read when
  compiling: one line asking for --format, exit 2, no package."""
  config = tmp_path / "auto.json"
  config.write_text(json.dumps({"data": {"format": "auto"}}))
  out = tmp_path / "pipeline.yaml"
  for flags in (["--config", str(config)], ["--format", "auto"]):
    assert cli.main(["kubeflow", "compile", "--out", str(out), "--image", IMAGE,
                     "--pipeline-root", "gs://bucket/root", *data_root, *flags]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("histopipe kubeflow compile: error: ") and "--format" in line
    assert not out.exists()


def _trainer_settings(spec):
  """The settings the compiled Trainer task trains with (its custom_config, read
  through KFP's PipelineSpec proto)."""
  parameters = spec.root.dag.tasks["Trainer"].inputs.parameters
  custom = json.loads(parameters["custom_config"].runtime_value.constant.string_value)
  return json.loads(custom["config"])


def test_a_trainer_given_gpus_is_compiled_to_refuse_training_without_them(compiled, tmp_path):
  _, _, spec = compiled
  assert _trainer_settings(spec)["training"]["require_gpu"] is True  # the full preset: 1 GPU
  config = tmp_path / "cpu.json"
  config.write_text(json.dumps({"kubeflow": {"trainer": {"cpu": 8, "memory_gb": 32, "gpus": 0},
                                             "tuner": {"cpu": 8, "memory_gb": 32, "gpus": 0}}}))
  code, out = _compile(tmp_path, "--config", str(config), "--format", "panda")
  assert code == 0
  cpu_only, platform = _read_package(out)
  assert _trainer_settings(cpu_only)["training"]["require_gpu"] is False
  # No GPU, so no GPU pool to tolerate: a one-document package.
  assert platform == pipeline_spec_pb2.PlatformSpec()
  assert len(list(yaml.safe_load_all(out.read_text()))) == 1


class _Response:
  """What kubernetes' ApiClient.deserialize reads: a body."""

  def __init__(self, value):
    self.data = json.dumps(value)


def _as_kubernetes(value, kind):
  """`value` read as the Kubernetes API reads it (the kubernetes client's own models)."""
  return kubernetes_client.ApiClient().deserialize(_Response(value), kind)


def test_the_gpu_steps_are_placed_on_gpu_nodes_and_light_steps_anywhere(tmp_path, capsys):
  """kubeflow.trainer/tuner's node labels, GPU model and tolerations reach the
  platform spec that kfp's client reads and the KFP driver applies to the
  pod; each toleration reads as a Kubernetes Toleration with the values
  given; the GPU pool's own toleration is added; no other step is placed."""
  spot = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
          "effect": "NoSchedule"}
  evicted = {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
             "effect": "NoExecute", "toleration_seconds": 600}
  gpu_step = {"cpu": 8, "memory_gb": 48, "gpus": 2, "cpu_request": 6, "memory_request_gb": 40,
              "gpu_model": "nvidia-l4", "node_selector": {"pool": "gpu-spot"},
              "tolerations": [spot, evicted]}
  config = tmp_path / "gpu.json"
  config.write_text(json.dumps({
      "tuning": {"enabled": True},
      "kubeflow": {"gpu_model_label": "cloud.google.com/gke-accelerator",
                   "trainer": gpu_step, "tuner": gpu_step}}))
  code, out = _compile(tmp_path, "--config", str(config), "--format", "panda")
  assert code == 0
  printed = capsys.readouterr().out
  assert ("Trainer: 2 x nvidia.com/gpu, 8 CPU (request 6), 48 GB (request 40); node "
          "pool=gpu-spot, cloud.google.com/gke-accelerator=nvidia-l4; tolerates "
          "cloud.google.com/gke-spot, node.kubernetes.io/not-ready, nvidia.com/gpu") in printed
  spec, platform = _read_package(out)
  placed = platform.platforms["kubernetes"].deployment_spec.executors
  assert set(placed) == {"Trainer_executor", "Tuner_executor"}
  for executor in placed.values():
    written = json_format.MessageToDict(executor)
    assert written["nodeSelector"]["labels"] == {
        "pool": "gpu-spot", "cloud.google.com/gke-accelerator": "nvidia-l4"}
    tolerations = _as_kubernetes(written["tolerations"], "list[V1Toleration]")
    assert [t.to_dict() for t in tolerations] == [
        {**spot, "toleration_seconds": None},
        {**evicted, "value": None},
        {"key": "nvidia.com/gpu", "operator": "Exists", "value": None, "effect": "NoSchedule",
         "toleration_seconds": None}]
  deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                     pipeline_spec_pb2.PipelineDeploymentConfig())
  for step in ("Trainer", "Tuner"):
    resources = deployment.executors[f"{step}_executor"].container.resources
    assert (resources.cpu_limit, resources.cpu_request) == (8, 6)
    assert (resources.memory_limit, resources.memory_request) == (48, 40)
    assert (resources.accelerator.type, resources.accelerator.count) == ("nvidia.com/gpu", 2)


@pytest.mark.parametrize("step, message", [
    ({"cpu": 4, "cpu_request": 8}, "a request above its limit"),
    ({"gpus": 0, "gpu_model": "nvidia-l4"}, "gpu_model is set on a step with no gpus"),
    ({"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}, "takes no value"),
    ({"tolerations": [{"operator": "Equal", "value": "b"}]}, "must have operator Exists"),
    ({"tolerations": [{"key": "a", "effect": "NoSchedule", "toleration_seconds": 5}]},
     "needs effect NoExecute"),
], ids=["request_over_limit", "model_without_gpu", "exists_with_value", "equal_without_key",
        "seconds_without_noexecute"])
def test_a_pod_kubernetes_would_refuse_is_refused_when_compiling(tmp_path, capsys, step,
                                                                  message):
  config = tmp_path / "bad.json"
  config.write_text(json.dumps({"kubeflow": {"trainer": step}}))
  code, out = _compile(tmp_path, "--config", str(config), "--format", "panda")
  assert code == 2 and not out.exists()
  (line,) = capsys.readouterr().err.splitlines()
  assert "config.kubeflow.trainer" in line and message in line



def test_a_frozen_encoder_pipeline_embeds_in_a_gpu_beam_step(tmp_path, capsys):
  """With model.encoder the TileEmbedder is a task after the SlideExampleGen
  that the statistics and the Trainer wait on; its container asks for
  kubeflow.embedder's GPU (a Beam step on one node, the DirectRunner inside)
  and tolerates the GPU pool's taint."""
  from tests.test_frozen_encoders import _save_encoder
  encoder = _save_encoder(tmp_path / "encoder")
  config = tmp_path / "encoder.json"
  config.write_text(json.dumps({"model": {"encoder": encoder, "input_size": 16,
                                          "encoder_spec": {"input_size": 16}}}))
  code, out = _compile(tmp_path, "--config", str(config), "--format", "panda")
  assert code == 0, capsys.readouterr().err
  spec, platform = _read_package(out)
  tasks = spec.root.dag.tasks
  assert set(tasks["TileEmbedder"].dependent_tasks) == {"SlideExampleGen"}
  assert "TileEmbedder" in tasks["StatisticsGen"].dependent_tasks
  assert "TileEmbedder" in tasks["Trainer"].dependent_tasks
  deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                     pipeline_spec_pb2.PipelineDeploymentConfig())
  resources = deployment.executors["TileEmbedder_executor"].container.resources
  assert (resources.accelerator.type, resources.accelerator.count) == ("nvidia.com/gpu", 1)
  assert resources.cpu_limit == 8 and resources.memory_limit == 32
  placed = json_format.MessageToDict(
      platform.platforms["kubernetes"].deployment_spec.executors["TileEmbedder_executor"])
  assert [t.to_dict() for t in _as_kubernetes(placed["tolerations"], "list[V1Toleration]")] == [
      {"key": "nvidia.com/gpu", "operator": "Exists", "value": None, "effect": "NoSchedule",
       "toleration_seconds": None}]
