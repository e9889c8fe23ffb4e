"""The Evaluator's baseline: the model being served, taken from the serving folder.

Why not TFX's latest-blessed-model Resolver: open-source Kubeflow Pipelines
refuses resolver tasks (its Argo compiler answers "resolver executors not
implemented"; only Vertex AI runs them), so a package holding one cannot run
there at all. The newest version in the Pusher's folder is the last model this
pipeline blessed (the Pusher pushes blessed models only) and the one TF
Serving answers requests without a version or label with, so it is the
baseline a new model must not fall behind. (Where an operator routes traffic
by the `stable` label of kubeflow/serving/models.config, the newest push may
be a canary not yet promoted: the comparison is then with the canary.) `ServedModel` copies it into a Model artifact (traced in ML Metadata
like any other input); before anything is served the artifact is empty and
`BaselineEvaluator` evaluates without a baseline, as TFX does with an empty
resolver. The step reads state outside the pipeline, so it must never be
cached: `kubeflow/compile.py` removes its caching options (`NEVER_CACHED`);
the local runner keeps TFX's resolver instead.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, path_utils

from histopipe.components.pusher import pushed_versions

SERVING_MODEL_DIR_KEY = "serving_model_dir"
MODEL_KEY = "model"
# Custom properties of the output: the version copied ("" when none) and its folder.
SERVED_VERSION = "served_version"
SERVED_FROM = "served_from"

COMPONENT_ID = "ServedModel"
# Node ids whose executions must never be reused from the cache.
NEVER_CACHED = (COMPONENT_ID,)


def newest_version(serving_model_dir: str) -> Optional[str]:
  """The highest numbered version folder holding a SavedModel, or None."""
  versions = pushed_versions(serving_model_dir)
  return versions[0] if versions else None


class ServedModelSpec(ComponentSpec):
  PARAMETERS = {SERVING_MODEL_DIR_KEY: ExecutionParameter(type=str)}
  INPUTS: Dict[str, ChannelParameter] = {}
  OUTPUTS = {MODEL_KEY: ChannelParameter(type=standard_artifacts.Model)}


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


class ServedModel(base_component.BaseComponent):
  """Outputs the model now served from `serving_model_dir` (empty if none)."""

  SPEC_CLASS = ServedModelSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ServedModelExecutor)

  def __init__(self, serving_model_dir: str):
    super().__init__(spec=ServedModelSpec(
        serving_model_dir=serving_model_dir,
        model=types.Channel(type=standard_artifacts.Model)))


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


class BaselineEvaluator(Evaluator):
  """TFX's Evaluator component with the executor above (its node id stays "Evaluator")."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(BaselineEvaluatorExecutor)
