"""The idempotent Pusher executor, and the versions in a serving folder."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

def model_digest(model_dir: str) -> str:
  """sha256 over a SavedModel's graph and variables (names and bytes)."""
  digest = hashlib.sha256()
  names = ["saved_model.pb"] + sorted(
      os.path.join("variables", name)
      for name in (fileio.listdir(os.path.join(model_dir, "variables"))
                   if fileio.isdir(os.path.join(model_dir, "variables")) else []))
  for name in names:
    path = os.path.join(model_dir, name)
    if fileio.exists(path):
      digest.update(name.encode())
      with fileio.open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def pushed_versions(base_directory: str) -> List[str]:
  """The numbered version folders under `base_directory` that hold a
  SavedModel, newest first (TF Serving's own layout)."""
  if not fileio.isdir(base_directory):
    return []
  versions = sorted((name.rstrip("/") for name in fileio.listdir(base_directory)
                     if name.rstrip("/").isdigit()), key=int, reverse=True)
  return [version for version in versions
          if fileio.exists(os.path.join(base_directory, version, "saved_model.pb"))]


def same_model_version(model_dir: str, base_directory: str) -> Optional[str]:
  """The newest version under `base_directory` holding the same model, or None."""
  wanted = model_digest(model_dir)
  for version in pushed_versions(base_directory):
    if model_digest(os.path.join(base_directory, version)) == wanted:
      return version
  return None


class IdempotentPusherExecutor(pusher_executor.Executor):
  """Pushes as TFX does, unless the same model is already pushed."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                              destination)
    if self.CheckBlessing(input_dict) and destination.HasField("filesystem"):
      model_path = self.GetModelPath(input_dict)
      base = destination.filesystem.base_directory
      version = same_model_version(model_path, base)
      if version is not None:
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=os.path.join(base, version),
                         pushed_version=version)
        return
    super().Do(input_dict, output_dict, exec_properties)
