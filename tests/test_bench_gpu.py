"""bench/gpu.py runs here, on CPU, with its small sizes: the benchmark that will
size the first GPU node must not first fail on the day a GPU is lent.

It runs in its own process (it splits the CPU into 2 logical devices before
TensorFlow starts, as a 2-GPU node's MirroredStrategy would see 2 GPUs). No
timing is asserted: what is checked is that each measurement did the work
its flags ask for, on the devices it says.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, INPUT_BATCHES, REPLICAS = 1, 2, 2
TILES_PER_BAG, BAGS_PER_REPLICA = 4, 1  # --small


def test_the_gpu_benchmark_runs_on_cpu_with_small_sizes(tmp_path):
  command = [sys.executable, os.path.join(REPO, "bench", "gpu.py"), "--small",
             "--steps", str(STEPS), "--input-batches", str(INPUT_BATCHES), "--slides", "2",
             "--cpu-replicas", str(REPLICAS), "--workdir", str(tmp_path / "work"),
             "--slide-workdir", str(tmp_path / "slides")]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200,
                        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "work" / "gpu_results.json") as f:
    results = json.load(f)
  context, rates = results["context"], results["rates"]
  assert context["devices"].startswith("CPU") and context["replicas"] == REPLICAS
  assert context["trainer_policy"] == "float32"  # "auto" without GPUs
  step_images = STEPS * REPLICAS * BAGS_PER_REPLICA * TILES_PER_BAG
  assert set(rates) == {"i mixed_float16", "i float32", "ii mixed_float16", "ii float32", "iii"}
  for key in ("i mixed_float16", "i float32", "ii mixed_float16", "ii float32"):
    assert rates[key]["images"] == step_images, key
  assert rates["iii"]["images"] == INPUT_BATCHES * REPLICAS * BAGS_PER_REPLICA * TILES_PER_BAG
  assert all(rate["seconds"] > 0 for rate in rates.values())
  assert set(results["ratios"]) == {"(ii)/(i) mixed_float16", "(ii)/(i) float32",
                                    "(iii)/(ii) float32"}
  # For people: the table, with each ratio against its target.
  assert "| (ii)/(i) mixed_float16 |" in done.stdout and ">= 0.7" in done.stdout
  assert "| (iii)/(ii) float32 |" in done.stdout and ">= 1.5" in done.stdout
  assert results["environment"]["cuda_build"] == "12.3"  # what TF 2.16.2 was built for
