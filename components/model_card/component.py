"""The ModelCard component: what the card is built from, and its output folder."""

from __future__ import annotations


from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.experimental import simple_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from histopipe.components.drift_check.component import DRIFT_REPORT_TYPE
from histopipe.core.configs import PipelineConfig
from histopipe.components.model_card.executor import ModelCardExecutor

COMPONENT_ID = "ModelCard"


# model_card.json and model_card.html: a standard type (see
# DRIFT_REPORT_TYPE for why not a class of our own).
MODEL_CARD_TYPE = simple_artifacts.File


class ModelCardSpec(ComponentSpec):
  PARAMETERS = {"config": ExecutionParameter(type=str),
                "data_root": ExecutionParameter(type=str),
                # A digest of this code: a cached card is reused only with it.
                "code": ExecutionParameter(type=str, optional=True)}
  INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples),
            "model": ChannelParameter(type=standard_artifacts.Model),
            "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
            "drift_report": ChannelParameter(type=DRIFT_REPORT_TYPE),
            "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
            "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}
  OUTPUTS = {"model_card": ChannelParameter(type=MODEL_CARD_TYPE)}


class ModelCard(base_component.BaseComponent):
  """Writes the model card of the trained model, and next to its push."""

  SPEC_CLASS = ModelCardSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ModelCardExecutor)

  def __init__(self, examples, model, evaluation, drift_report, blessing, pushed_model,
               config: PipelineConfig, data_root, code: str = ""):
    super().__init__(spec=ModelCardSpec(
        examples=examples, model=model, evaluation=evaluation, drift_report=drift_report,
        blessing=blessing, pushed_model=pushed_model, config=config.to_json(),
        data_root=data_root, code=code, model_card=types.Channel(type=MODEL_CARD_TYPE)))
