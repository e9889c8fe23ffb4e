"""The GPU code path rehearsed on CPU: MirroredStrategy over logical CPU
devices, the precision policy of the training step, a float32 export, the
refusal to train without the GPUs a step was given, and the Tuner's trials
releasing each other's state."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src import backend as keras_backend  # its layer-name counters

from histopipe.core.configs import ModelConfig, TrainingConfig, demo_config
from histopipe.trainer import devices, features, fit, tuning
from histopipe.trainer.model import build_mil_model, ordinal_targets

TINY = ModelConfig(backbone="small_cnn", input_size=16, dense_units=8, attention_units=4,
                   dropout=0.0)

# One Keras training step (the Trainer's compiled loss; SGD with rate 1, so a
# weight's change is minus its gradient) on a global batch of two bags, on
# one device and on two logical CPUs (one bag per replica, as 2 bags on 2
# GPUs), from the same weights. Printed: the largest difference between the
# two runs' weight changes and the largest change (the scale). The backbone
# is frozen (its BatchNorm in inference mode), as in the frozen phase: a
# training-mode BatchNorm normalises over each replica's own tiles, on GPUs too.
_ONE_STEP = textwrap.dedent("""
    import dataclasses, json, sys
    import numpy as np, tensorflow as tf, tf_keras as keras
    from histopipe.core.configs import ModelConfig, demo_config
    from histopipe.trainer import devices, features, fit
    from histopipe.trainer.model import build_mil_model, ordinal_targets
    names = devices.split_cpu(2)
    model_config = ModelConfig(backbone="small_cnn", input_size=16, dense_units=8,
                               attention_units=4, dropout=0.0, head_normalization=sys.argv[1])
    config = dataclasses.replace(demo_config(), model=model_config)
    rng = np.random.default_rng(0)
    inputs = {features.TILES_XF: rng.normal(size=(2, 4, 16, 16, 3)).astype(np.float32),
              features.TILE_VALID_XF: np.ones((2, 4), np.float32)}
    labels = np.array([[1], [4]], np.int64)
    targets = {features.ORDINAL_LOGITS: ordinal_targets(labels, 6).numpy(),
               features.PROBABILITIES: labels}
    data = tf.data.Dataset.from_tensors((inputs, targets))
    keras.utils.set_random_seed(1)
    initial = build_mil_model(model_config, 4, 6).get_weights()

    def weight_changes(strategy):
      with strategy.scope():
        model = build_mil_model(model_config, 4, 6)
        model.set_weights(initial)
        fit.set_backbone_trainable(model, False)
        fit.compile_model(model, config)
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=model.loss)
      before = [w.numpy() for w in model.trainable_weights]
      model.fit(data, epochs=1, verbose=0)
      return [w.numpy() - b for w, b in zip(model.trainable_weights, before)]

    single = weight_changes(tf.distribute.get_strategy())
    mirrored = tf.distribute.MirroredStrategy(devices=names)
    replicated = weight_changes(mirrored)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "largest_difference": max(float(np.abs(a - b).max()) for a, b in zip(single, replicated)),
        "largest_change": max(float(np.abs(a).max()) for a in single)}))
    """)


def _run(script, *args):
  done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1"))
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_logical_devices_take_the_step_one_device_takes():
  """LayerNorm head, one bag per replica: the gradients of the global batch,
  whether one device computes them or two replicas do and MirroredStrategy
  sums them, agree to float32 rounding."""
  step = _run(_ONE_STEP, "layer")
  assert step["replicas"] == 2
  assert step["largest_change"] > 1e-3  # the step did move the head
  assert step["largest_difference"] < 1e-5 * max(1.0, step["largest_change"])


def test_a_batchnorm_head_with_one_bag_per_replica_trains_differently():
  """Why the head's default is LayerNorm: BatchNorm over a replica's single
  bag has zero variance, so the replicas' step is not the single device's."""
  step = _run(_ONE_STEP, "batch")
  assert step["replicas"] == 2
  assert step["largest_difference"] > 1e-3 * step["largest_change"]


def test_the_float32_export_of_a_mixed_precision_model():
  """Trained under mixed_float16, exported in float32: every layer computes
  in float32 and the probabilities agree with the mixed model's to float16
  rounding (stated tolerance: 1e-2)."""
  config = dataclasses.replace(demo_config(), model=TINY)
  tiles = config.tiles_per_bag
  rng = np.random.default_rng(3)
  inputs = {features.TILES_XF: rng.normal(size=(3, tiles, 16, 16, 3)).astype(np.float32),
            features.TILE_VALID_XF: np.ones((3, tiles), np.float32)}
  with devices.precision_policy(devices.MIXED_POLICY):
    mixed = build_mil_model(TINY, tiles, config.num_classes)
  assert keras.mixed_precision.global_policy().name == "float32"  # put back
  assert any(layer.compute_dtype == "float16" for layer in _layers(mixed))
  exported = fit.float32_copy(mixed, config)
  assert {layer.compute_dtype for layer in _layers(exported)} == {"float32"}
  mixed_out, exported_out = mixed(inputs), exported(inputs)
  np.testing.assert_allclose(exported_out[features.PROBABILITIES].numpy(),
                             mixed_out[features.PROBABILITIES].numpy(), atol=1e-2)
  assert exported_out[features.PROBABILITIES].dtype == tf.float32


def _layers(model):
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      yield from _layers(layer)
    else:
      yield layer


def test_mixed_precision_auto_is_on_only_with_gpus():
  on_gpus = bool(tf.config.list_physical_devices("GPU"))
  assert devices.mixed_precision_on(TrainingConfig(mixed_precision="auto")) == on_gpus
  assert devices.training_policy(TrainingConfig(mixed_precision="on")) == "mixed_float16"
  assert devices.training_policy(TrainingConfig(mixed_precision="off")) == "float32"


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is here")
def test_a_trainer_given_gpus_that_sees_none_stops_saying_what_it_saw():
  """The message names the devices TensorFlow lists and the CUDA and cuDNN
  versions of its build, as tf.sysconfig reports them."""
  build = tf.sysconfig.get_build_info()
  with pytest.raises(devices.NoGpuError) as stopped:
    devices.training_strategy(TrainingConfig(require_gpu=True))
  message = str(stopped.value)
  assert "/physical_device:CPU:0" in message and "sees none" in message
  assert f"CUDA {build['cuda_version']}" in message
  assert f"cuDNN {build['cudnn_version']}" in message


def test_each_tuner_trial_starts_from_a_clear_keras_state(tmp_path):
  """Keras' global state (its graph, layer-name counters) is what grows trial
  by trial; each trial clears it, so the second trial's layers are numbered
  as the first's were."""
  config = dataclasses.replace(
      demo_config(), model=TINY,
      training=dataclasses.replace(demo_config().training, frozen_backbone_epochs=0),
      tuning=dataclasses.replace(demo_config().tuning, epochs=1))
  tiles = config.tiles_per_bag
  rng = np.random.default_rng(5)
  labels = np.array([[0], [1], [2], [3]], np.int64)
  batch = ({features.TILES_XF: rng.normal(size=(4, tiles, 16, 16, 3)).astype(np.float32),
            features.TILE_VALID_XF: np.ones((4, tiles), np.float32)},
           {features.ORDINAL_LOGITS: ordinal_targets(labels, 6).numpy(),
            features.PROBABILITIES: labels})
  data = tf.data.Dataset.from_tensors(batch)
  search = tuning.MilRandomSearch(config, tf.distribute.get_strategy(),
                                  directory=str(tmp_path), project_name="trials")
  trial = types.SimpleNamespace(hyperparameters=types.SimpleNamespace(values={}))
  next_names = []
  for _ in range(2):
    search.run_trial(trial, data, data, None)
    # The name Keras would give the next Dense layer: it counts those made so far.
    next_names.append(keras_backend.unique_object_name("dense", zero_based=True))
  assert next_names[0] == next_names[1] != "dense"


REHEARSAL_CONFIG = {
    "preset": "demo",
    "model": {"backbone": "small_cnn", "input_size": 32, "dense_units": 16,
              "attention_units": 8},
    "training": {"epochs": 2, "batch_size": 4, "eval_batch_size": 4,
                 "cpu_replicas": 2, "mixed_precision": "on"},
    "evaluation": {"min_auc": -1.0, "max_auc_drop": 2.0},
}


def _half_precision_nodes(saved_model_pb: str) -> int:
  """Nodes of a SavedModel's graph and functions with a float16 type attribute,
  read with TensorFlow's own SavedModel proto."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
  saved = saved_model_pb2.SavedModel()
  with open(saved_model_pb, "rb") as f:
    saved.ParseFromString(f.read())
  graph = saved.meta_graphs[0].graph_def
  nodes = list(graph.node) + [n for function in graph.library.function for n in function.node_def]
  half = tf.float16.as_datatype_enum
  return sum(1 for node in nodes
             if any(value.type == half or half in value.list.type
                    for value in node.attr.values()))


def test_the_rehearsal_trains_on_two_logical_devices_in_mixed_precision_and_exports_float32(
    tmp_path):
  """`histopipe run` (its own process: TensorFlow's devices are fixed at its
  first op) with training.cpu_replicas 2 and mixed_precision "on": the Trainer
  trains over two replicas in mixed_float16, and the pushed model holds no
  float16 node and answers serving_default and predict_tiles in float32."""
  data, out, config = tmp_path / "pcam", tmp_path / "out", tmp_path / "config.json"
  config.write_text(json.dumps(REHEARSAL_CONFIG))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1")
  for argv in (["synth", "--format", "pcam", "--out", str(data), "--slides", "40"],
               ["run", "--data", str(data), "--out", str(out), "--config", str(config)]):
    done = subprocess.run([sys.executable, "-m", "histopipe", *argv], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  log = (out / "run.log").read_text()
  assert "training on 2 logical CPU devices" in log
  assert "global batch: 8 bags (training.batch_size 4 on each of 2 replica(s))" in log
  assert "training step precision: mixed_float16" in log
  (version,) = [p for p in (out / "serving_model").iterdir() if p.name.isdigit()]
  assert _half_precision_nodes(str(version / "saved_model.pb")) == 0
  model = tf.saved_model.load(str(version))
  bags = sorted((out / "pipeline_root").glob("**/SlideExampleGen/examples/*/Split-eval/*"))
  serialized = [record.numpy() for record in tf.data.TFRecordDataset([str(bags[0])]).take(3)]
  answer = model.signatures["serving_default"](examples=tf.constant(serialized))
  assert answer["probabilities"].dtype == tf.float32 and answer["probabilities"].shape[0] == 3
  assert answer["grade"].dtype == tf.int64
  example = tf.train.Example.FromString(serialized[0])
  tiles = example.features.feature["tiles"].bytes_list.value
  one = model.signatures["predict_tiles"](tiles=tf.constant(list(tiles)))
  np.testing.assert_allclose(one["probabilities"].numpy()[0],
                             answer["probabilities"].numpy()[0], atol=1e-5)
