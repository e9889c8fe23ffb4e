"""A Trainer killed partway (a preempted GPU node) resumes on the next run:
`histopipe run` is SIGKILLed after epoch 2 of 4 and run again on the same
output; the Trainer trains epochs 3 and 4 only, ends with 4 epochs in all, and
the model is exported and pushed."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import tensorflow as tf

RESUME_CONFIG = {
    "preset": "demo",
    "model": {"backbone": "small_cnn", "input_size": 32, "dense_units": 16,
              "attention_units": 8},
    "training": {"epochs": 4, "batch_size": 8, "eval_batch_size": 8, "warmup_epochs": 0},
    "evaluation": {"min_auc": -1.0, "max_auc_drop": 2.0},
}
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1")


def _histopipe(*argv):
  return [sys.executable, "-m", "histopipe", *argv]


def _epochs_started(text):
  return [int(n) for n in re.findall(r"^Epoch (\d+)/4$", text, re.M)]


def _tensorboard_epochs(logs_dir):
  """Epochs (0-based steps) of the scalar `epoch_loss` TensorBoard holds, read
  with TensorFlow's own event reader."""
  steps = set()
  for parent, _, names in os.walk(logs_dir):
    for name in names:
      if name.startswith("events.out.tfevents"):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(parent, name)):
          if any(value.tag == "epoch_loss" for value in event.summary.value):
            steps.add(event.step)
  return sorted(steps)


def test_a_killed_trainer_resumes_after_its_last_finished_epoch(tmp_path):
  data, out, config = tmp_path / "pcam", tmp_path / "out", tmp_path / "config.json"
  config.write_text(json.dumps(RESUME_CONFIG))
  subprocess.run(_histopipe("synth", "--format", "pcam", "--out", str(data), "--slides", "40"),
                 check=True, capture_output=True, env=ENV)
  run = _histopipe("run", "--data", str(data), "--out", str(out), "--config", str(config))
  first = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=ENV)
  printed, deadline = [], time.monotonic() + 900
  # "Epoch 3/4" is printed after every callback has ended epoch 2 (its backup written).
  for line in first.stdout:
    printed.append(line)
    if line.strip() == "Epoch 3/4" or time.monotonic() > deadline:
      break
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert _epochs_started("".join(printed)) == [1, 2, 3], "".join(printed)[-3000:]
  assert not (out / "serving_model").exists() or not any((out / "serving_model").iterdir())
  trainer_folder = out / "pipeline_root" / "Trainer"
  assert list((trainer_folder / "training_state").iterdir())  # the backup is there

  second = subprocess.run(run, capture_output=True, text=True, env=ENV)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert _epochs_started(second.stdout) == [3, 4], second.stdout[-3000:]
  log = (out / "run.log").read_text()
  assert "early stopping resumed: best val_probabilities_auc" in log
  assert [p for p in (out / "serving_model").iterdir() if p.name.isdigit()]  # pushed
  assert not list((trainer_folder / "training_state").iterdir())  # removed once exported
  # The second execution's TensorBoard log starts at epoch 3 (step 2) and ends at 4.
  runs = sorted((trainer_folder / "model_run").iterdir(), key=lambda p: int(p.name))
  assert _tensorboard_epochs(runs[-1]) == [2, 3]
  assert _tensorboard_epochs(runs[0]) == [0, 1]
