"""Where training runs: a node's GPUs, or the host CPU split into logical
devices that rehearse the multi-GPU code path; the precision policy of the
training step; and a loud stop when GPUs were asked for and none is there.

The strategy is MirroredStrategy whenever there is more than one device to
mirror over (GPUs, or `training.cpu_replicas` logical CPUs), so the code an
N-GPU node runs — per-replica batches, gradient all-reduce, the loss scaled
by the global batch — runs on CPU before anyone pays for a GPU node.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, List

import tensorflow as tf
import tf_keras as keras

from histopipe.core.configs import TrainingConfig
from histopipe.core.errors import UserError

MIXED_POLICY = "mixed_float16"
FLOAT32_POLICY = "float32"


class NoGpuError(UserError):
  """Training was asked to run on GPUs and TensorFlow sees none."""


def gpu_report() -> str:
  """What TensorFlow sees and what it was built for, for a message a person
  acts on: the devices, and the CUDA and cuDNN versions of this TF build."""
  build = tf.sysconfig.get_build_info()
  devices = ", ".join(d.name for d in tf.config.list_physical_devices()) or "none"
  return (f"TensorFlow {tf.__version__} sees: {devices}; it was built for CUDA "
          f"{build.get('cuda_version', 'none')} and cuDNN {build.get('cudnn_version', 'none')} "
          f"(CUDA build: {build.get('is_cuda_build', False)})")


def split_cpu(replicas: int) -> List[str]:
  """Splits the host CPU into `replicas` logical devices and returns their
  names. TensorFlow fixes its devices when it first runs an op: before that,
  the split is made; after it, a split already of this size is accepted
  (a second model in one process) and any other refused, naming the cause."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
  except RuntimeError as e:
    present = tf.config.list_logical_devices("CPU")
    if len(present) != replicas:
      raise UserError(f"training.cpu_replicas={replicas}: TensorFlow set up its devices "
                      f"already ({len(present)} CPU device(s)) before the Trainer ran; "
                      "split the CPU at process start (histopipe run does) or run the "
                      f"Trainer in its own process ({e})") from None
  return [device.name for device in tf.config.list_logical_devices("CPU")]


def training_strategy(training: TrainingConfig) -> tf.distribute.Strategy:
  """MirroredStrategy over a node's GPUs, or over `cpu_replicas` logical CPUs;
  else TensorFlow's default (one device). Stops when GPUs were required and
  there are none: a GPU job that trains on CPU takes days to notice."""
  gpus = tf.config.list_physical_devices("GPU")
  if training.require_gpu and not gpus:
    raise NoGpuError(f"the Trainer was given GPUs (training.require_gpu) and sees none: "
                     f"{gpu_report()}. Check the node's NVIDIA driver and device plugin, "
                     "and that the image's CUDA matches")
  if gpus:
    logging.info("training on %d GPU(s): %s", len(gpus), gpu_report())
    return tf.distribute.MirroredStrategy()
  if training.cpu_replicas > 0:
    devices = split_cpu(training.cpu_replicas)
    logging.info("training on %d logical CPU devices (training.cpu_replicas)", len(devices))
    return tf.distribute.MirroredStrategy(devices=devices)
  return tf.distribute.get_strategy()


def mixed_precision_on(training: TrainingConfig) -> bool:
  """"on", or "auto" with GPUs to train on."""
  if training.mixed_precision == "auto":
    return bool(tf.config.list_physical_devices("GPU"))
  return training.mixed_precision == "on"


def training_policy(training: TrainingConfig) -> str:
  """The Keras precision policy the training step runs under."""
  return MIXED_POLICY if mixed_precision_on(training) else FLOAT32_POLICY


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
  """Keras' global precision policy set for a block and put back after it, so
  that what is built later (the export, a second trial) is float32 unless it
  asks otherwise."""
  saved = keras.mixed_precision.global_policy().name
  keras.mixed_precision.set_global_policy(policy)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(saved)
