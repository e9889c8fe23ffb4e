"""The DAG, built from one PipelineConfig.

SlideExampleGen -> StatisticsGen (sliced by data provider) -> SchemaGen ->
ExampleValidator -> Transform -> [Tuner, when enabled] -> Trainer -> Evaluator
(baseline: the latest blessed model, or on Kubeflow the model now served) ->
DriftCheck (this run's bags against the baseline's training bags; passes the
blessing on) -> Pusher -> ModelCard (next to the pushed version).
The local runner and the Kubeflow compiler both call `create_pipeline`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from histopipe.bags import bag_features
from histopipe.data.datasets import with_detected_format
from histopipe.components.drift_check.component import COMPONENT_ID as DRIFT_CHECK_ID, DriftCheck
from histopipe.components.model_card.component import COMPONENT_ID as MODEL_CARD_ID, ModelCard
from histopipe.components.pusher.component import IdempotentPusher
from histopipe.components.served_model.component import BaselineEvaluator, ServedModel
from histopipe.components.slide_example_gen.component import SlideExampleGen
from histopipe.components.tile_embedder.component import TileEmbedder
from histopipe.core import layout, signatures
from histopipe.core.configs import PipelineConfig, check_trainable
from histopipe.encoders.frozen import encoder_digest
from histopipe.pipeline.fingerprints import code_fingerprint
from histopipe.trainer import features, metrics

METRICS_MODULE = metrics.__name__  # TFMA loads the custom metrics by module path
PREPROCESSING_FN = "histopipe.trainer.preprocessing.preprocessing_fn"
RUN_FN = "histopipe.trainer.task.run_fn"
BASELINE_RESOLVER = "resolver"
BASELINE_SERVED = "served"
TUNER_FN = "histopipe.trainer.tuning.tuner_fn"


def _gate(floor: float, largest_drop: float) -> list:
  """A floor, and no drop of more than `largest_drop` vs the baseline, judged
  on the overall slice (provider slices are reported only). TFMA drops change
  thresholds when there is no baseline, so a first run meets the floor alone."""
  return [tfma.PerSliceMetricThreshold(
      slicing_specs=[tfma.SlicingSpec()],
      threshold=tfma.MetricThreshold(
          value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor}),
          change_threshold=tfma.GenericChangeThreshold(
              direction=tfma.MetricDirection.HIGHER_IS_BETTER,
              absolute={"value": -largest_drop})))]


def gate_metric(config: PipelineConfig) -> str:
  """The metric the Evaluator gates on: kappa (ISUP) or AUC (binary)."""
  return metrics.AUC if config.task == "binary" else metrics.KAPPA


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
  """ISUP: quadratic weighted kappa (a custom tf_keras metric; TFMA has none),
  accuracy, and the ROC AUC of cancer (grade >= 1) vs benign, on the class
  probabilities. Binary: ROC AUC and accuracy on
  P(label = 1). Overall and per data provider."""
  gate = config.evaluation
  if config.task == "binary":
    metric_configs = [
        tfma.MetricConfig(class_name="BinaryAccuracy",
                          config=json.dumps({"name": metrics.ACCURACY})),
        tfma.MetricConfig(class_name="AUC", config=json.dumps({"name": metrics.AUC}),
                          per_slice_thresholds=_gate(gate.min_auc, gate.max_auc_drop)),
    ]
  else:
    metric_configs = [
        # The served grade is the ordinal median, not the argmax: score that.
        tfma.MetricConfig(class_name="GradeAccuracy", module=METRICS_MODULE,
                          config=json.dumps({"num_classes": config.num_classes,
                                             "name": metrics.ACCURACY})),
        tfma.MetricConfig(
            class_name="QuadraticWeightedKappa", module=METRICS_MODULE,
            config=json.dumps({"num_classes": config.num_classes, "name": metrics.KAPPA}),
            per_slice_thresholds=_gate(gate.min_kappa, gate.max_kappa_drop)),
        tfma.MetricConfig(class_name="CancerAUC", module=METRICS_MODULE,
                          config=json.dumps({"name": metrics.CANCER_AUC})),
    ]
  # A head on a frozen encoder is evaluated on the TileEmbedder's bags.
  signature = signatures.EMBEDDING_BAGS if config.model.encoder else signatures.SERVING_DEFAULT
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(signature_name=signature,
                                  label_key=features.LABEL_KEY,
                                  prediction_key=signatures.PROBABILITIES)],
      slicing_specs=[tfma.SlicingSpec(),
                     tfma.SlicingSpec(feature_keys=[bag_features.DATA_PROVIDER])],
      metrics_specs=[tfma.MetricsSpec(
          metrics=[tfma.MetricConfig(class_name="ExampleCount")] + metric_configs)])


# The module each step runs, by path (the DAG names them as strings, TFX
# imports them in the step's process); a step's code fingerprint follows their
# imports (pipeline/fingerprints.py).
EXAMPLE_GEN_MODULE = "histopipe.components.slide_example_gen.component"
DRIFT_CHECK_MODULE = "histopipe.components.drift_check.component"
EMBEDDER_MODULE = "histopipe.components.tile_embedder.component"
MODEL_CARD_MODULE = "histopipe.components.model_card.component"


def _module_of(function_path: str) -> str:
  return function_path.rsplit(".", 1)[0]


def trainer_settings(config: PipelineConfig) -> PipelineConfig:
  """The config as the Trainer and Tuner get it: the gate, the drift check,
  the Kubeflow resources and the Beam flags (which they do not read) at their
  defaults, so changing the gate re-runs the Evaluator, not the training. The
  referral targets stay: the Trainer chooses the referral threshold."""
  defaults = PipelineConfig()
  evaluation = dataclasses.replace(
      defaults.evaluation,
      referral_target_kappa=config.evaluation.referral_target_kappa,
      referral_target_auc=config.evaluation.referral_target_auc)
  return dataclasses.replace(config, evaluation=evaluation,
                             kubeflow=defaults.kubeflow,
                             beam_pipeline_args=defaults.beam_pipeline_args)


def create_pipeline(config: PipelineConfig, data_root: str, pipeline_root: str,
                    serving_model_dir: str,
                    metadata_connection_config: Optional[object] = None,
                    enable_cache: bool = True,
                    baseline: str = BASELINE_RESOLVER) -> tfx.dsl.Pipeline:
  """The DAG. With `enable_cache`, a step whose inputs, settings and code are
  those of an earlier execution reuses its outputs: each step gets only the
  settings it depends on, so changing `training.epochs` re-runs the Trainer
  and what follows, not the tiling or the Transform.

  The Evaluator's baseline: TFX's latest-blessed-model Resolver
  (`BASELINE_RESOLVER`, the local runner: it reuses the blessed model's own
  artifact, so an unchanged re-run stays cached), or the model now served
  (`BASELINE_SERVED`, `components/served_model/`: open-source Kubeflow
  Pipelines cannot run resolver tasks)."""
  # "auto" becomes the data folder's format here, once, so every component
  # (and the Trainer's choice of task) sees the same one.
  if isinstance(data_root, str):  # a Kubeflow RuntimeParameter is resolved at run time
    config = with_detected_format(config, data_root)
  check_trainable(config)
  tiling_code = code_fingerprint(EXAMPLE_GEN_MODULE)
  transform_code = code_fingerprint(_module_of(PREPROCESSING_FN))
  model_code = code_fingerprint(_module_of(RUN_FN), _module_of(TUNER_FN))
  # The encoder's digest: a new encoder at the same path retrains.
  config_json = {"config": trainer_settings(config).to_json(), "code": model_code,
                 "encoder": encoder_digest(config.model)}
  example_gen = SlideExampleGen(input_base=data_root, config=config,
                                code_fingerprint=tiling_code)
  # With a frozen encoder, the model's examples are the TileEmbedder's
  # embedding bags: every tile embedded once, the head trained on them.
  embedder = (TileEmbedder(examples=example_gen.outputs["examples"], config=config,
                           encoder_digest=config_json["encoder"],
                           code=code_fingerprint(EMBEDDER_MODULE))
              if config.model.encoder else None)
  model_examples = (embedder.outputs["embeddings"] if embedder
                    else example_gen.outputs["examples"])
  # Slices by provider (TFDV's SQL slicing: a JSON-serializable option, as
  # the component's spec requires), so each scanner site's image statistics
  # show on their own. Of embedding bags, every feature but the embeddings.
  statistics_gen = tfx.components.StatisticsGen(
      examples=model_examples,
      stats_options=tfdv.StatsOptions(
          experimental_slice_sqls=[f"SELECT STRUCT({bag_features.DATA_PROVIDER}) FROM "
                                   f"example.{bag_features.DATA_PROVIDER}"],
          feature_allowlist=list(bag_features.EMBEDDING_BAG_METADATA) if embedder else None))
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"],
      schema=schema_gen.outputs["schema"])
  transform = tfx.components.Transform(
      examples=model_examples,
      schema=schema_gen.outputs["schema"],
      preprocessing_fn=PREPROCESSING_FN,
      # Decoded float tiles would be ~2.3 TB for PANDA: keep bags encoded and
      # apply the transform graph in the Trainer's input pipeline instead.
      materialize=False,
      custom_config={"input_size": config.model.input_size,
                     "embedding_bags": bool(embedder), "code": transform_code})
  training_inputs = dict(
      examples=model_examples,
      transform_graph=transform.outputs["transform_graph"],
      schema=schema_gen.outputs["schema"],
      train_args=tfx.proto.TrainArgs(splits=["train"]),
      # Early stopping (and the Tuner) look at "valid"; "eval" stays unseen
      # for the Evaluator.
      eval_args=tfx.proto.EvalArgs(splits=["valid"]),
      custom_config=config_json)
  tuner = (tfx.components.Tuner(tuner_fn=TUNER_FN, **training_inputs)
           if config.tuning.enabled else None)
  trainer = tfx.components.Trainer(
      run_fn=RUN_FN,
      hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
      **training_inputs)
  if baseline == BASELINE_RESOLVER:
    baseline_step = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=standard_artifacts.Model),
        # The final verdict (the Evaluator's, or withheld for drift).
        model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing,
                                       producer_component_id=DRIFT_CHECK_ID),
    ).with_id("latest_blessed_model_resolver")
  elif baseline == BASELINE_SERVED:
    baseline_step = ServedModel(serving_model_dir=serving_model_dir)
  else:
    raise ValueError(f"unknown baseline {baseline!r}: {BASELINE_RESOLVER} or {BASELINE_SERVED}")
  evaluator = BaselineEvaluator(
      examples=model_examples,
      model=trainer.outputs["model"],
      baseline_model=baseline_step.outputs["model"],
      example_splits=[layout.EVAL_SPLIT],
      eval_config=eval_config(config)).with_id("Evaluator")
  drift_check = DriftCheck(
      examples=example_gen.outputs["examples"],
      baseline_model=baseline_step.outputs["model"],
      model_blessing=evaluator.outputs["blessing"],
      max_jsd=config.evaluation.max_drift_jsd, min_bags=config.evaluation.min_drift_bags,
      block_on_drift=config.evaluation.block_on_drift,
      code=code_fingerprint(DRIFT_CHECK_MODULE)).with_id(DRIFT_CHECK_ID)
  pusher = IdempotentPusher(
      model=trainer.outputs["model"],
      model_blessing=drift_check.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir))).with_id("Pusher")
  model_card = ModelCard(
      examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
      evaluation=evaluator.outputs["evaluation"],
      drift_report=drift_check.outputs["drift_report"],
      blessing=drift_check.outputs["blessing"], pushed_model=pusher.outputs["pushed_model"],
      config=config, data_root=data_root,
      code=code_fingerprint(MODEL_CARD_MODULE)).with_id(MODEL_CARD_ID)
  return tfx.dsl.Pipeline(
      pipeline_name=config.name,
      pipeline_root=pipeline_root,
      components=[example_gen] + ([embedder] if embedder else []) +
                 [statistics_gen, schema_gen, example_validator,
                  transform] + ([tuner] if tuner else []) +
                 [trainer, baseline_step, evaluator, drift_check, pusher, model_card],
      enable_cache=enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=list(config.beam_pipeline_args))
