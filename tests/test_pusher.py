"""The Pusher does not push the same model twice (the run after a blessing re-blesses it)."""

import os
import shutil

import tensorflow as tf
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from histopipe.components.pusher.executor import IdempotentPusherExecutor, same_model_version


def _saved_model(path, scale: float) -> str:
  module = tf.Module()
  module.scale = tf.Variable(scale)
  module.f = tf.function(lambda x: x * module.scale,
                         input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, path, signatures={"serving_default": module.f})
  return path


def _push(tmp_path, model_uri, base, name):
  model = standard_artifacts.Model()
  model.uri = str(model_uri)
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = str(tmp_path / f"blessing_{name}")
  blessing.set_int_custom_property("blessed", 1)
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(tmp_path / f"pushed_{name}")
  destination = pusher_pb2.PushDestination(
      filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))
  IdempotentPusherExecutor().Do(
      {"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
      {"push_destination": proto_utils.proto_to_json(destination)})
  return pushed


def test_the_same_model_is_recorded_as_pushed_without_a_new_version(tmp_path):
  base = tmp_path / "serving"
  first = _saved_model(str(tmp_path / "trainer_1" / "Format-Serving"), 2.0)
  pushed = _push(tmp_path, tmp_path / "trainer_1", base, "1")
  (version,) = os.listdir(base)
  assert pushed.get_int_custom_property("pushed") == 1
  # The same model again (a cached Trainer's artifact, blessed a second time).
  again = _push(tmp_path, tmp_path / "trainer_1", base, "2")
  assert os.listdir(base) == [version]
  assert again.get_string_custom_property("pushed_destination") == str(base / version)
  assert same_model_version(first, str(base)) == version
  # A different model gets a version of its own (TFX's versions are seconds: wait one).
  other = _saved_model(str(tmp_path / "trainer_3" / "Format-Serving"), 3.0)
  assert same_model_version(other, str(base)) is None
  shutil.move(str(base / version), str(base / str(int(version) - 1)))
  _push(tmp_path, tmp_path / "trainer_3", base, "3")
  assert len(os.listdir(base)) == 2
