"""The Kubeflow compiler builds the same DAG as the local runner."""

import json

from kubeflow.compile import compile_pipeline
from pipeline.configs import demo_config
from tests.test_pipeline_dag import EXPECTED_UPSTREAM


def test_compiles_every_component_into_a_kfp_v2_spec(tmp_path):
  output = tmp_path / "pipeline.json"
  compile_pipeline(demo_config(), str(output), image="registry.example/histopipe:1",
                   pipeline_root="gs://bucket/root", data_root="gs://bucket/panda",
                   serving_model_dir="gs://bucket/serving")
  job = json.loads(output.read_text())
  tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
  components = {name for name in EXPECTED_UPSTREAM if name != "latest_blessed_model_resolver"}
  assert components <= set(tasks)
  assert any(name.startswith("latest_blessed_model_resolver") for name in tasks)
  assert set(tasks["Pusher"]["dependentTasks"]) == {"Trainer", "Evaluator"}
  executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
  assert all(e["container"]["image"] == "registry.example/histopipe:1"
             for e in executors.values() if "container" in e)
  assert str(tmp_path) not in output.read_text().replace(str(output), "")
