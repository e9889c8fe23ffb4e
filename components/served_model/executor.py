"""The executors of ServedModel and of the Evaluator that treats "nothing served" as no baseline."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, path_utils

from histopipe.components.pusher.executor import pushed_versions

SERVING_MODEL_DIR_KEY = "serving_model_dir"
MODEL_KEY = "model"
# Custom properties of the output: the version copied ("" when none) and its folder.
SERVED_VERSION = "served_version"
SERVED_FROM = "served_from"


def newest_version(serving_model_dir: str) -> Optional[str]:
  """The highest numbered version folder holding a SavedModel, or None."""
  versions = pushed_versions(serving_model_dir)
  return versions[0] if versions else None


class ServedModelExecutor(base_executor.BaseExecutor):
  """Copies the newest served version into the Model artifact's serving folder."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    model = artifact_utils.get_single_instance(output_dict[MODEL_KEY])
    base = exec_properties[SERVING_MODEL_DIR_KEY]
    version = newest_version(base)
    model.set_string_custom_property(SERVED_VERSION, version or "")
    if version is None:
      fileio.makedirs(model.uri)
      return
    source = os.path.join(base, version)
    io_utils.copy_dir(source, path_utils.serving_model_dir(model.uri))
    model.set_string_custom_property(SERVED_FROM, source)


def served_nothing(model: types.Artifact) -> bool:
  """Whether `ServedModel` found nothing served (its explicit mark, so a
  damaged copy of a served model fails the Evaluator instead of passing as
  "no baseline")."""
  return (model.has_custom_property(SERVED_VERSION) and
          model.get_string_custom_property(SERVED_VERSION) == "")


class BaselineEvaluatorExecutor(evaluator_executor.Executor):
  """TFX's Evaluator, with an empty baseline (nothing served yet) given as no
  baseline, as TFX's empty resolver output is."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    key = standard_component_specs.BASELINE_MODEL_KEY
    if any(served_nothing(model) for model in input_dict.get(key, [])):
      input_dict = {**input_dict, key: []}
    super().Do(input_dict, output_dict, exec_properties)
