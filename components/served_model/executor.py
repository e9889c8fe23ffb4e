"""The executors of ServedModel and of the Evaluator that treats "nothing served" as no baseline."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, path_utils

from histopipe.components.pusher.executor import pushed_versions
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract

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


def _encoder_digest(model: types.Artifact) -> Optional[str]:
  """The digest of the frozen encoder a model's head was trained on (its
  contract's), None for a backbone trained end to end (or an older model)."""
  path = os.path.join(path_utils.serving_model_path(model.uri), "assets.extra", CONTRACT_FILE)
  if not fileio.exists(path):
    return None
  with fileio.open(path, "r") as f:
    encoder = ModelContract.from_json(f.read()).encoder
  return encoder["digest"] if encoder else None


class BaselineEvaluatorExecutor(evaluator_executor.Executor):
  """TFX's Evaluator, with an empty baseline (nothing served yet) given as no
  baseline, as TFX's empty resolver output is; and likewise a baseline that
  cannot read the candidate's examples: a model on another frozen encoder
  (or none) takes other bags (its tiles' embeddings by another encoder, or
  tile bags), so the candidate is gated on the floor alone, and the log
  says why."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    key = standard_component_specs.BASELINE_MODEL_KEY
    baselines = input_dict.get(key, [])
    if any(served_nothing(model) for model in baselines):
      input_dict = {**input_dict, key: []}
    elif baselines:
      candidate = artifact_utils.get_single_instance(
          input_dict[standard_component_specs.MODEL_KEY])
      theirs, ours = _encoder_digest(baselines[0]), _encoder_digest(candidate)
      if theirs != ours:
        logging.warning("the baseline model (%s) was trained on the embeddings of encoder %s, "
                        "this one on those of %s: it cannot score this one's bags, so the "
                        "gate compares with the floor alone", baselines[0].uri,
                        theirs or "none (end to end)", ours or "none (end to end)")
        input_dict = {**input_dict, key: []}
    super().Do(input_dict, output_dict, exec_properties)
