"""The DriftCheck component: its inputs (Examples, the baseline model, the Evaluator's blessing),
outputs (the drift report and the blessing passed on) and thresholds."""

from __future__ import annotations


from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.experimental import simple_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from histopipe.components.drift_check.executor import (BASELINE_MODEL_KEY, BLESSING_KEY, BLOCK_KEY,
                                                       DriftCheckExecutor, EXAMPLES_KEY,
                                                       MAX_JSD_KEY, MIN_BAGS_KEY,
                                                       MODEL_BLESSING_KEY, REPORT_KEY)

COMPONENT_ID = "DriftCheck"


# The report's artifact type: drift.json (monitoring/drift.py's report) and
# this run's statistics.pb. A standard type, not a class of our own: on
# Kubeflow, TFX's container entrypoint imports a custom artifact class from
# its schema title, which must be "module.Class" with one dot (so no
# "histopipe.components.drift_check.executor.X"); `system.Metrics` is what KFP shows
# as metrics.
DRIFT_REPORT_TYPE = simple_artifacts.Metrics


class DriftCheckSpec(ComponentSpec):
  PARAMETERS = {MAX_JSD_KEY: ExecutionParameter(type=float),
                MIN_BAGS_KEY: ExecutionParameter(type=int),
                BLOCK_KEY: ExecutionParameter(type=int),
                # A digest of this code: a cached check is reused only with it.
                "code": ExecutionParameter(type=str, optional=True)}
  INPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
            BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
            MODEL_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing)}
  OUTPUTS = {REPORT_KEY: ChannelParameter(type=DRIFT_REPORT_TYPE),
             BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing)}


class DriftCheck(base_component.BaseComponent):
  """Compares this run's bag image statistics with the baseline model's
  training statistics; passes the Evaluator's blessing on (withheld when
  drifted and `block_on_drift`)."""

  SPEC_CLASS = DriftCheckSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(DriftCheckExecutor)

  def __init__(self, examples: types.BaseChannel, model_blessing: types.BaseChannel,
               max_jsd: float, min_bags: int, block_on_drift: bool,
               baseline_model: types.BaseChannel = None, code: str = ""):
    super().__init__(spec=DriftCheckSpec(
        examples=examples, baseline_model=baseline_model, model_blessing=model_blessing,
        max_jsd=float(max_jsd), min_bags=int(min_bags), block_on_drift=int(block_on_drift),
        code=code,
        drift_report=types.Channel(type=DRIFT_REPORT_TYPE),
        blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
