"""ServedModel (the model now served, as a Model artifact) and the Evaluator that takes it as its
baseline."""

from __future__ import annotations

from typing import Dict

from tfx import types
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from histopipe.components.served_model.executor import (BaselineEvaluatorExecutor, MODEL_KEY,
                                                        SERVING_MODEL_DIR_KEY, ServedModelExecutor)

COMPONENT_ID = "ServedModel"
# Node ids whose executions must never be reused from the cache.
NEVER_CACHED = (COMPONENT_ID,)


class ServedModelSpec(ComponentSpec):
  PARAMETERS = {SERVING_MODEL_DIR_KEY: ExecutionParameter(type=str)}
  INPUTS: Dict[str, ChannelParameter] = {}
  OUTPUTS = {MODEL_KEY: ChannelParameter(type=standard_artifacts.Model)}


class ServedModel(base_component.BaseComponent):
  """Outputs the model now served from `serving_model_dir` (empty if none)."""

  SPEC_CLASS = ServedModelSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ServedModelExecutor)

  def __init__(self, serving_model_dir: str):
    super().__init__(spec=ServedModelSpec(
        serving_model_dir=serving_model_dir,
        model=types.Channel(type=standard_artifacts.Model)))


class BaselineEvaluator(Evaluator):
  """TFX's Evaluator component with the executor above (its node id stays "Evaluator")."""

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(BaselineEvaluatorExecutor)
