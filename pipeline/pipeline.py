"""The DAG, built from one PipelineConfig.

SlideExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> Transform
-> Trainer -> Evaluator (baseline: latest blessed model) -> Pusher.
The local runner and the Kubeflow compiler both call `create_pipeline`.
"""

from __future__ import annotations

import json
from typing import Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from components import bag_features
from components.slide_example_gen import SlideExampleGen
from pipeline.configs import PipelineConfig
from trainer import features

KAPPA_METRIC = "kappa"
PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
  """Quadratic weighted kappa gate: a floor, and no big drop vs the baseline.

  TFMA drops change thresholds when there is no baseline, so the first run is
  judged by the value threshold alone.
  """
  gate = config.evaluation
  kappa = tfma.MetricConfig(
      class_name="QuadraticWeightedKappa",
      module="trainer.metrics",
      config=json.dumps({"num_classes": config.num_classes, "name": KAPPA_METRIC}),
      # The gate judges the overall slice; provider slices are reported only.
      per_slice_thresholds=[tfma.PerSliceMetricThreshold(
          slicing_specs=[tfma.SlicingSpec()],
          threshold=tfma.MetricThreshold(
              value_threshold=tfma.GenericValueThreshold(
                  lower_bound={"value": gate.min_kappa}),
              change_threshold=tfma.GenericChangeThreshold(
                  direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                  absolute={"value": -gate.max_kappa_drop})))])
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(signature_name="serving_default",
                                  label_key=features.LABEL_KEY,
                                  prediction_key=features.PROBABILITIES)],
      slicing_specs=[tfma.SlicingSpec(),
                     tfma.SlicingSpec(feature_keys=[bag_features.DATA_PROVIDER])],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name="ExampleCount"),
          tfma.MetricConfig(class_name="SparseCategoricalAccuracy",
                            config=json.dumps({"name": "accuracy"})),
          kappa,
      ])])


def create_pipeline(config: PipelineConfig, data_root: str, pipeline_root: str,
                    serving_model_dir: str,
                    metadata_connection_config: Optional[object] = None
                    ) -> tfx.dsl.Pipeline:
  config_json = {"config": config.to_json()}
  example_gen = SlideExampleGen(input_base=data_root, config=config)
  statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"],
      schema=schema_gen.outputs["schema"])
  transform = tfx.components.Transform(
      examples=example_gen.outputs["examples"],
      schema=schema_gen.outputs["schema"],
      preprocessing_fn=PREPROCESSING_FN,
      # Decoded float tiles would be ~2.3 TB for PANDA: keep bags encoded and
      # apply the transform graph in the Trainer's input pipeline instead.
      materialize=False,
      custom_config=config_json)
  trainer = tfx.components.Trainer(
      run_fn=RUN_FN,
      examples=example_gen.outputs["examples"],
      transform_graph=transform.outputs["transform_graph"],
      schema=schema_gen.outputs["schema"],
      train_args=tfx.proto.TrainArgs(splits=["train"]),
      # Early stopping looks at "valid"; "eval" stays unseen for the Evaluator.
      eval_args=tfx.proto.EvalArgs(splits=["valid"]),
      custom_config=config_json)
  baseline_resolver = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing),
  ).with_id("latest_blessed_model_resolver")
  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs["examples"],
      model=trainer.outputs["model"],
      baseline_model=baseline_resolver.outputs["model"],
      example_splits=["eval"],
      eval_config=eval_config(config))
  pusher = tfx.components.Pusher(
      model=trainer.outputs["model"],
      model_blessing=evaluator.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))
  return tfx.dsl.Pipeline(
      pipeline_name=config.name,
      pipeline_root=pipeline_root,
      components=[example_gen, statistics_gen, schema_gen, example_validator,
                  transform, trainer, baseline_resolver, evaluator, pusher],
      enable_cache=False,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=list(config.beam_pipeline_args))
