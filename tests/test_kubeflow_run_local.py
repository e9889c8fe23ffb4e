"""`histopipe kubeflow run-local`: a compiled package executed task by task as
the KFP v2 backend would (kfp's ExecutorInput in each task's own container
command, run as a subprocess), end to end on a small PCam-style set; its
pushed model has the signatures `histopipe run` pushes; a second run takes
the first run's served model as the Evaluator's baseline.
"""

import glob
import json
import os
import re

import pytest
import tensorflow as tf
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from histopipe import cli
from histopipe.kubeflow import package_spec, run_local
from histopipe.kubeflow.errors import PackageError
from tests.conftest import PCAM_CONFIG

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def package(pcam_run, tmp_path_factory):
  """The package compiled from the shared PCam run's data and settings (one
  epoch, no tuner, no GPU: the signatures do not depend on them)."""
  work = tmp_path_factory.mktemp("kfp_local")
  config = work / "config.json"
  # A CPU package: compiled for a GPU Trainer, the Trainer would refuse to run on this
  # machine (training.require_gpu), as it must on a node without its GPUs.
  config.write_text(json.dumps({**PCAM_CONFIG, "training": {**PCAM_CONFIG["training"],
                                                            "epochs": 1},
                                "tuning": {"enabled": False},
                                "kubeflow": {"trainer": {"cpu": 2, "memory_gb": 8, "gpus": 0},
                                             "tuner": {"cpu": 2, "memory_gb": 8, "gpus": 0}}}))
  package = work / "pipeline.yaml"
  assert cli.main(["kubeflow", "compile", "--out", str(package), "--image",
                   "registry.example/histopipe:test", "--pipeline-root", str(work / "root"),
                   "--data-root", str(pcam_run.data), "--serving-dir", str(work / "serving"),
                   "--config", str(config), "--format", "pcam"]) == 0
  return work, package


@pytest.fixture(scope="module")
def local_model(pcam_run):
  """What `histopipe run` pushed from the same data."""
  assert pcam_run.exit_code == 0
  (saved_model,) = glob.glob(str(pcam_run.out / "serving_model" / "*" / "saved_model.pb"))
  return os.path.dirname(saved_model)


@pytest.fixture(scope="module")
def two_runs(package):
  """The package run twice, as `run-local` does it (KFP's step cache on)."""
  work, package_file = package
  return [run_local.run_package(str(package_file), str(work / "tasks"), run_id=run_id)
          for run_id in ("first", "second")]


def _signatures(model_dir):
  """Each signature's inputs and outputs: name, dtype and shape."""
  loaded = tf.saved_model.load(model_dir)
  described = {}
  for name, function in loaded.signatures.items():
    inputs = function.structured_input_signature[1]
    described[name] = (
        {k: (v.dtype.name, v.shape.as_list()) for k, v in inputs.items()},
        {k: (v.dtype.name, v.shape.as_list()) for k, v in function.structured_outputs.items()})
  return described


def _compiled_spec(package_file) -> pipeline_spec_pb2.PipelineSpec:
  """The compiled package as kfp's own PipelineSpec proto reads it (not through run-local)."""
  with open(package_file) as f:
    return json_format.ParseDict(yaml.safe_load(f), pipeline_spec_pb2.PipelineSpec())


def _producers(task: pipeline_spec_pb2.PipelineTaskSpec) -> set:
  """The tasks a task must wait for, as the spec states them: its
  `dependent_tasks` and the producers named in its inputs."""
  producers = set(task.dependent_tasks)
  producers |= {artifact.task_output_artifact.producer_task
                for artifact in task.inputs.artifacts.values()
                if artifact.HasField("task_output_artifact")}
  producers |= {parameter.task_output_parameter.producer_task
                for parameter in task.inputs.parameters.values()
                if parameter.HasField("task_output_parameter")}
  return producers


def _executor_input(run, task_name) -> pipeline_spec_pb2.ExecutorInput:
  """The ExecutorInput a task's container was given, as kfp's proto reads it."""
  with open(os.path.join(run.work_dir, task_name, "executor_input.json")) as f:
    return json_format.Parse(f.read(), pipeline_spec_pb2.ExecutorInput())


def test_the_package_runs_end_to_end_and_pushes_what_the_local_run_pushes(
    package, two_runs, local_model):
  work, package_file = package
  first = two_runs[0]
  spec = _compiled_spec(package_file)
  tasks = spec.root.dag.tasks
  order = [task.name for task in first.tasks]  # as they ran
  assert sorted(order) == sorted(tasks)  # every task of the spec, each once
  assert all(task.kind == "container" and not task.cached for task in first.tasks)
  # Each task ran after every task the spec says it depends on: later in the
  # run, and started (its ExecutorInput written) after the producer's log was closed.
  producers = {name: _producers(task) for name, task in tasks.items()}
  assert {name for name, upstream in producers.items() if not upstream} == {
      "SlideExampleGen", "ServedModel"}
  assert producers["StatisticsGen"] == {"SlideExampleGen"}
  assert {"Trainer", "DriftCheck"} <= producers["Pusher"]
  for name, upstream in producers.items():
    for producer in upstream:
      assert producer in tasks, (name, producer)
      assert order.index(producer) < order.index(name), f"{name} ran before its producer {producer}"
      assert (os.path.getmtime(os.path.join(first.work_dir, producer, "log.txt")) <=
              os.path.getmtime(os.path.join(first.work_dir, name, "executor_input.json"))), (
                  name, producer)
  # Each task ran its own container command with the ExecutorInput KFP builds:
  # the Trainer's examples are the artifact its producer (per the spec) was told to write.
  trainer_input = _executor_input(first, "Trainer")
  source = tasks["Trainer"].inputs.artifacts["examples"].task_output_artifact
  assert (source.producer_task, source.output_artifact_key) == ("SlideExampleGen", "examples")
  (written,) = _executor_input(first, source.producer_task).outputs.artifacts[
      source.output_artifact_key].artifacts
  examples = trainer_input.inputs.artifacts["examples"].artifacts[0]
  assert examples.uri == written.uri
  assert glob.glob(os.path.join(examples.uri, "Split-train", "*"))
  assert examples.type.instance_schema.startswith("title: tfx.Examples")
  model_uri = trainer_input.outputs.artifacts["model"].artifacts[0].uri
  assert re.fullmatch(re.escape(f"{work}/root/histopipe/first/Trainer/") +
                      r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/model",
                      model_uri)
  # The command is the package's own, with `{{$}}` replaced by that input.
  executor_label = spec.components[tasks["Trainer"].component_ref.name].executor_label
  container = json_format.MessageToDict(spec.deployment_spec)["executors"][
      executor_label]["container"]
  argv = json.load(open(os.path.join(first.work_dir, "Trainer", "command.json")))
  expected = container["command"] + container["args"]
  assert len(argv) == len(expected)
  for ran, declared in zip(argv, expected):
    if declared == "{{$}}":
      assert json_format.Parse(ran, pipeline_spec_pb2.ExecutorInput()) == trainer_input
    else:
      assert ran == declared
  # Both runs pushed the same model: one version (the Pusher is idempotent).
  (pushed,) = glob.glob(str(work / "serving" / "*" / "saved_model.pb"))
  model_dir = os.path.dirname(pushed)
  assert first.output("Pusher", "pushed_model")["metadata"]["pushed_version"] == \
      os.path.basename(model_dir)
  assert _signatures(model_dir) == _signatures(local_model)


def test_the_second_run_takes_the_served_model_as_its_baseline(package, two_runs):
  """Nothing changed but what is served: KFP's cache reuses the tiling,
  statistics, Transform and training; the served-model step (never cached)
  finds the first run's push, so the Evaluator runs again against it."""
  work = package[0]
  first, second = two_runs
  assert first.output("ServedModel", "model")["metadata"]["served_version"] == ""
  assert "baseline_model" not in first.output("Evaluator", "blessing")["metadata"]
  assert {task.name for task in second.tasks if not task.cached} == {
      "ServedModel", "Evaluator", "DriftCheck", "Pusher", "ModelCard"}
  assert second.output("Trainer", "model") == first.output("Trainer", "model")
  first_version = first.output("Pusher", "pushed_model")["metadata"]["pushed_version"]
  served = second.output("ServedModel", "model")
  assert served["metadata"]["served_version"] == first_version
  assert served["metadata"]["served_from"] == str(work / "serving" / first_version)
  assert os.path.exists(os.path.join(served["uri"], "Format-Serving", "saved_model.pb"))
  blessing = second.output("Evaluator", "blessing")["metadata"]
  assert blessing["baseline_model"] == served["uri"]
  # The same model again: the idempotent Pusher records the version it found.
  assert second.output("Pusher", "pushed_model")["metadata"]["pushed_version"] == first_version


def _spec_with(extra_tasks=None, extra_executors=None, parameters=None):
  """A tiny hand-written package: one container task, plus what is given."""
  spec = {
      "pipelineInfo": {"name": "tiny"}, "schemaVersion": "2.1.0",
      "root": {"inputDefinitions": {"parameters": parameters or {}},
               "dag": {"tasks": {"echo": {"taskInfo": {"name": "echo"},
                                          "componentRef": {"name": "echo"}},
                                 **(extra_tasks or {})}}},
      "components": {"echo": {"executorLabel": "echo_executor"},
                     **{name: {"executorLabel": f"{name}_executor"}
                        for name in (extra_tasks or {})}},
      "deploymentSpec": {"executors": {
          "echo_executor": {"container": {"image": "x", "command": ["python", "-c", "pass"]}},
          **(extra_executors or {})}},
  }
  return spec


# Two small tasks and an importer, as KFP SDK packages spell them: `make`
# writes a dataset and an output parameter, `use` reads both and the
# imported file through placeholders.
_MAKE = ("import sys, pathlib; n, data, count = sys.argv[1:]; assert n == '3', n; "
         "pathlib.Path(data).write_text('x' * int(n)); pathlib.Path(count).write_text(n)")
_USE = ("import sys, pathlib; data, count, ref, out = sys.argv[1:]; "
        "pathlib.Path(out).write_text(pathlib.Path(data).read_text() + count + "
        "pathlib.Path(ref).read_text())")
_DATASET = {"artifactType": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}


def _small_package(reference_file) -> dict:
  def container(code, *args):
    return {"container": {"image": "python:3.10", "command": ["python", "-c", code],
                          "args": list(args)}}
  return {
      "pipelineInfo": {"name": "small"}, "schemaVersion": "2.1.0",
      "root": {
          "inputDefinitions": {"parameters": {"n": {"parameterType": "NUMBER_INTEGER",
                                                    "defaultValue": 3}}},
          "dag": {"tasks": {
              "make": {"taskInfo": {"name": "make"}, "componentRef": {"name": "make"},
                       "cachingOptions": {"enableCache": True},
                       "inputs": {"parameters": {"n": {"componentInputParameter": "n"}}}},
              "reference": {"taskInfo": {"name": "reference"},
                            "componentRef": {"name": "reference"},
                            "inputs": {"parameters": {"uri": {"runtimeValue": {
                                "constant": str(reference_file)}}}}},
              "use": {"taskInfo": {"name": "use"}, "componentRef": {"name": "use"},
                      "cachingOptions": {"enableCache": True},
                      "inputs": {
                          "artifacts": {
                              "data": {"taskOutputArtifact": {"producerTask": "make",
                                                              "outputArtifactKey": "data"}},
                              "ref": {"taskOutputArtifact": {"producerTask": "reference",
                                                             "outputArtifactKey": "artifact"}}},
                          "parameters": {"count": {"taskOutputParameter": {
                              "producerTask": "make", "outputParameterKey": "count"}}}}},
          }}},
      "components": {
          "make": {"executorLabel": "make_executor",
                   "inputDefinitions": {"parameters": {"n": {"parameterType": "NUMBER_INTEGER"}}},
                   "outputDefinitions": {"artifacts": {"data": _DATASET},
                                         "parameters": {"count": {"parameterType": "STRING"}}}},
          "reference": {"executorLabel": "reference_executor",
                        "inputDefinitions": {"parameters": {"uri": {"parameterType": "STRING"}}},
                        "outputDefinitions": {"artifacts": {"artifact": _DATASET}}},
          "use": {"executorLabel": "use_executor",
                  "inputDefinitions": {"artifacts": {"data": _DATASET, "ref": _DATASET},
                                       "parameters": {"count": {"parameterType": "STRING"}}},
                  "outputDefinitions": {"artifacts": {"out": _DATASET}}}},
      "deploymentSpec": {"executors": {
          "make_executor": container(_MAKE, "{{$.inputs.parameters['n']}}",
                                     "{{$.outputs.artifacts['data'].path}}",
                                     "{{$.outputs.parameters['count'].output_file}}"),
          "reference_executor": {"importer": {
              "artifactUri": {"runtimeParameter": "uri"},
              "typeSchema": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}},
          "use_executor": container(_USE, "{{$.inputs.artifacts['data'].path}}",
                                    "{{$.inputs.parameters['count']}}",
                                    "{{$.inputs.artifacts['ref'].path}}",
                                    "{{$.outputs.artifacts['out'].path}}")}},
  }


def test_placeholders_output_parameters_importers_and_the_step_cache(tmp_path):
  """The launcher's placeholders (a whole number as "3"), an output parameter
  passed on, an importer, and KFP's cache: an unchanged run reuses both
  tasks; deleting an output runs its task again, and what depends on it;
  `--no-cache` runs everything."""
  reference = tmp_path / "reference.txt"
  reference.write_text("!")
  package = tmp_path / "small.yaml"
  # With a platform spec placing a task on GPU nodes, as compile writes one:
  # where a pod lands changes nothing a task computes, so it runs here.
  package.write_text(yaml.safe_dump_all([_small_package(reference), _placement(
      {"nodeSelector": {"labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                        "effect": "NoSchedule"}]})]))
  out, root = tmp_path / "out", tmp_path / "root"

  def run(run_id, **flags):
    ran = run_local.run_package(str(package), str(out), pipeline_root=str(root),
                                run_id=run_id, **flags)
    return ran, {task.name for task in ran.tasks if task.kind == "container" and not task.cached}

  first, executed = run("one")
  assert executed == {"make", "use"}
  assert open(first.output("use", "out")["uri"]).read() == "xxx3!"
  assert first.output("reference", "artifact")["uri"] == str(reference)
  assert run("two")[1] == set()
  os.remove(first.output("make", "data")["uri"])
  third, executed = run("three")
  assert executed == {"make", "use"}
  assert open(third.output("use", "out")["uri"]).read() == "xxx3!"
  assert run("four", use_cache=False)[1] == {"make", "use"}
  with pytest.raises(PackageError, match="run id four was used already"):
    run("four")


def _placement(make_executor: dict) -> dict:
  """A platform spec (kfp-kubernetes' layout) for the small package's `make` executor."""
  return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {
      "make_executor": make_executor}}}}}


def test_what_cannot_run_locally_is_refused_before_anything_runs(tmp_path):
  package = tmp_path / "p.yaml"
  package.write_text(yaml.safe_dump(_spec_with(
      extra_tasks={"resolve": {"taskInfo": {"name": "resolve"},
                               "componentRef": {"name": "resolve"}}},
      extra_executors={"resolve_executor": {"resolver": {"outputArtifactQueries": {}}}})))
  with pytest.raises(PackageError, match="resolve: a resolver task"):
    run_local.run_package(str(package), str(tmp_path / "out"), pipeline_root=str(tmp_path))
  assert not (tmp_path / "out").exists()
  small = _small_package(tmp_path / "reference.txt")
  small["deploymentSpec"]["executors"]["use_executor"]["container"]["args"][0] = (
      "{{$.inputs.artifacts['other'].path}}")
  small["root"]["dag"]["tasks"]["make"]["triggerPolicy"] = {"condition": "1 == 1"}
  package.write_text(yaml.safe_dump(small))
  with pytest.raises(PackageError) as refused:
    run_local.run_package(str(package), str(tmp_path / "out"), pipeline_root=str(tmp_path))
  assert "make: a condition" in str(refused.value)
  assert "use: {{$.inputs.artifacts['other'].path}} names no input artifact" in str(refused.value)
  assert not (tmp_path / "out").exists()
  # A secret as an environment variable would have to be faked here.
  package.write_text(yaml.safe_dump_all([_small_package(tmp_path / "reference.txt"), _placement(
      {"secretAsEnv": [{"secretName": "gcs", "keyToEnv": [{"secretKey": "k",
                                                           "envVar": "KEY"}]}]})]))
  with pytest.raises(PackageError, match="make_executor: Kubernetes secretAsEnv"):
    run_local.run_package(str(package), str(tmp_path / "out"), pipeline_root=str(tmp_path))
  assert not (tmp_path / "out").exists()


def test_parameters_are_typed_by_the_package_and_checked(tmp_path, capsys):
  package = tmp_path / "p.yaml"
  package.write_text(yaml.safe_dump(_spec_with(parameters={
      "n": {"parameterType": "NUMBER_INTEGER"},
      "name": {"parameterType": "STRING", "defaultValue": "x"}})))
  spec = package_spec.load_package(str(package))
  values = package_spec.pipeline_parameters(spec, {"n": "3", "name": "007"})
  assert values["n"].number_value == 3 and values["name"].string_value == "007"
  for given, message in (({}, "parameter n has no default"),
                         ({"n": "2.5"}, "not an integer"),
                         ({"n": "1", "m": "2"}, "unknown parameter")):
    with pytest.raises(PackageError, match=message):
      package_spec.pipeline_parameters(spec, given)
  # Through the CLI: one line, exit status 2.
  assert cli.main(["kubeflow", "run-local", "--package", str(package),
                   "--pipeline-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
  assert "parameter n has no default" in capsys.readouterr().err


def test_the_image_environment_is_the_dockerfiles():
  with open(os.path.join(REPO, "kubeflow", "Dockerfile")) as f:
    lines = [line for line in f.read().splitlines() if line.startswith("ENV ")]
  env = dict(re.fullmatch(r"ENV (\w+)=(\S+)", line).groups() for line in lines)
  assert env == run_local.IMAGE_ENV
  # WORKDIR /pipeline holds setup.py (Dataflow's --setup_file=./setup.py).
  assert os.path.exists(os.path.join(run_local.image_workdir(), "setup.py"))


def test_each_task_s_peak_memory_is_its_own():
  """run-local measures a task's peak resident memory from its own process
  (wait4), so a small task after a large one reads small: the figure the scale
  rehearsal compares per component."""
  import subprocess
  import sys
  big = ("b = bytearray(300 * 2**20)\n"
         "for i in range(0, len(b), 4096): b[i] = 1")  # touched: resident
  code, big_mb = run_local.run_measured([sys.executable, "-c", big])
  assert code == 0 and big_mb >= 300
  code, small_mb = run_local.run_measured([sys.executable, "-c", "pass"])
  assert code == 0 and 0 < small_mb < 100
  code, _ = run_local.run_measured([sys.executable, "-c", "raise SystemExit(3)"],
                                   stderr=subprocess.DEVNULL)
  assert code == 3
