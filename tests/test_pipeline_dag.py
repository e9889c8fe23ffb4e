"""The DAG: every component, wired in data-flow order, from one config."""

import json

import pytest

from histopipe.core.configs import PipelineConfig

import tensorflow_model_analysis as tfma

from histopipe.pipeline import pipeline as pipeline_dag
from histopipe.core.configs import demo_config
from histopipe.trainer import metrics

EXPECTED_UPSTREAM = {
    "SlideExampleGen": set(),
    "StatisticsGen": {"SlideExampleGen"},
    "SchemaGen": {"StatisticsGen"},
    "ExampleValidator": {"StatisticsGen", "SchemaGen"},
    "Transform": {"SlideExampleGen", "SchemaGen"},
    "Trainer": {"SlideExampleGen", "Transform", "SchemaGen"},
    "latest_blessed_model_resolver": set(),
    "Evaluator": {"SlideExampleGen", "Trainer", "latest_blessed_model_resolver"},
    "DriftCheck": {"SlideExampleGen", "Evaluator", "latest_blessed_model_resolver"},
    "Pusher": {"Trainer", "DriftCheck"},
    "ModelCard": {"SlideExampleGen", "Trainer", "Evaluator", "DriftCheck", "Pusher"},
}


def _dag(tmp_path, config=None):
  return pipeline_dag.create_pipeline(
      config or demo_config(), data_root=str(tmp_path / "data"),
      pipeline_root=str(tmp_path / "root"), serving_model_dir=str(tmp_path / "serving"))


def test_every_component_with_its_upstream(tmp_path):
  dag = _dag(tmp_path)
  upstream = {c.id: {u.id for u in c.upstream_nodes} for c in dag.components}
  assert upstream == EXPECTED_UPSTREAM


def test_components_get_the_config(tmp_path):
  config = demo_config()
  components = {c.id: c for c in _dag(tmp_path, config).components}
  trainer = components["Trainer"]
  trained_with = PipelineConfig.from_json(
      json.loads(trainer.exec_properties["custom_config"])["config"])
  assert (trained_with.data, trained_with.tiling, trained_with.model, trained_with.training,
          trained_with.augmentation, trained_with.tuning) == (
              config.data, config.tiling, config.model, config.training, config.augmentation,
              config.tuning)
  assert trainer.exec_properties["run_fn"] == pipeline_dag.RUN_FN
  transform = components["Transform"]
  assert transform.exec_properties["preprocessing_fn"] == pipeline_dag.PREPROCESSING_FN
  # Keep bags encoded on disk: the transform graph runs in the Trainer.
  assert not transform.spec.outputs.get("transformed_examples")
  from histopipe.components.slide_example_gen.custom_config import config_from_exec_properties
  example_gen = components["SlideExampleGen"]
  tiling_config = config_from_exec_properties(
      {"custom_config": example_gen.exec_properties["custom_config"]})
  assert (tiling_config.data, tiling_config.tiling) == (config.data, config.tiling)
  assert json.loads(transform.exec_properties["custom_config"])["input_size"] == \
      config.model.input_size
  output = json.loads(example_gen.exec_properties["output_config"])
  assert output["split_config"]["partition_feature_name"] == "patient_id"
  assert [s["name"] for s in output["split_config"]["splits"]] == ["train", "valid", "eval"]
  assert json.loads(trainer.exec_properties["eval_args"])["splits"] == ["valid"]
  assert components["Evaluator"].exec_properties["example_splits"] == '["eval"]'
  assert list(config.beam_pipeline_args) == _dag(tmp_path, config).beam_pipeline_args


def test_each_step_gets_only_the_settings_it_depends_on(tmp_path):
  """What the cache keys on: a training setting changes the Trainer's execution
  properties, not the ExampleGen's or the Transform's; a tiling setting changes
  the ExampleGen's."""
  import dataclasses

  def properties(config):
    return {c.id: dict(c.exec_properties) for c in _dag(tmp_path, config).components}

  base = properties(demo_config())
  longer = properties(dataclasses.replace(demo_config(), training=dataclasses.replace(
      demo_config().training, epochs=99)))
  retiled = properties(dataclasses.replace(demo_config(), tiling=dataclasses.replace(
      demo_config().tiling, tile_size=128)))
  stricter = properties(dataclasses.replace(demo_config(), evaluation=dataclasses.replace(
      demo_config().evaluation, min_kappa=0.9)))
  for step in ("SlideExampleGen", "StatisticsGen", "SchemaGen", "Transform"):
    assert longer[step] == base[step], step
  assert longer["Trainer"] != base["Trainer"]
  # The gate is the Evaluator's alone.
  for step in ("SlideExampleGen", "Transform", "Trainer"):
    assert stricter[step] == base[step], step
  assert stricter["Evaluator"] != base["Evaluator"]
  assert retiled["SlideExampleGen"] != base["SlideExampleGen"]
  assert _dag(tmp_path).enable_cache


def test_gate_thresholds_come_from_the_config():
  config = demo_config()
  eval_config = pipeline_dag.eval_config(config)
  kappa = [m for m in eval_config.metrics_specs[0].metrics
           if m.class_name == "QuadraticWeightedKappa"][0]
  assert kappa.module == "histopipe.trainer.metrics"
  cancer_auc = [m for m in eval_config.metrics_specs[0].metrics if m.class_name == "CancerAUC"][0]
  assert json.loads(cancer_auc.config)["name"] == metrics.CANCER_AUC
  assert not cancer_auc.per_slice_thresholds  # reported, not gated
  (per_slice,) = kappa.per_slice_thresholds
  assert list(per_slice.slicing_specs) == [tfma.SlicingSpec()]  # overall slice only
  threshold = per_slice.threshold
  assert threshold.value_threshold.lower_bound.value == config.evaluation.min_kappa
  assert threshold.change_threshold.absolute.value == -config.evaluation.max_kappa_drop
  assert [s.feature_keys for s in eval_config.slicing_specs] == [[], ["data_provider"]]


def test_binary_datasets_are_gated_on_auc():
  import dataclasses
  config = demo_config()
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, format="pcam"))
  assert config.task == "binary" and config.num_classes == 2 and config.tiles_per_bag == 1
  eval_config = pipeline_dag.eval_config(config)
  by_class = {m.class_name: m for m in eval_config.metrics_specs[0].metrics}
  assert "QuadraticWeightedKappa" not in by_class and "BinaryAccuracy" in by_class
  assert json.loads(by_class["AUC"].config)["name"] == metrics.AUC
  threshold = by_class["AUC"].per_slice_thresholds[0].threshold
  assert threshold.value_threshold.lower_bound.value == config.evaluation.min_auc
  assert threshold.change_threshold.absolute.value == -config.evaluation.max_auc_drop
  assert pipeline_dag.gate_metric(config) == "auc"


def test_auto_format_is_resolved_from_the_data_folder(tmp_path):
  import dataclasses
  from histopipe.data import synthetic
  synthetic.write_patch_dataset(str(tmp_path / "data"), 4)
  config = demo_config()
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, format="auto"))
  trainer = {c.id: c for c in _dag(tmp_path, config).components}["Trainer"]
  trainer_config = json.loads(json.loads(trainer.exec_properties["custom_config"])["config"])
  assert trainer_config["data"]["format"] == "pcam"


def test_the_tuner_runs_before_the_trainer_only_when_enabled(tmp_path):
  import dataclasses
  config = demo_config()
  assert "Tuner" not in {c.id for c in _dag(tmp_path, config).components}
  config = dataclasses.replace(config, tuning=dataclasses.replace(config.tuning, enabled=True))
  dag = _dag(tmp_path, config)
  upstream = {c.id: {u.id for u in c.upstream_nodes} for c in dag.components}
  assert upstream["Tuner"] == {"SlideExampleGen", "Transform", "SchemaGen"}
  assert upstream["Trainer"] == EXPECTED_UPSTREAM["Trainer"] | {"Tuner"}
  tuner = {c.id: c for c in dag.components}["Tuner"]
  assert tuner.exec_properties["tuner_fn"] == pipeline_dag.TUNER_FN
  assert json.loads(tuner.exec_properties["eval_args"])["splits"] == ["valid"]


def test_a_frozen_encoder_adds_the_tile_embedder_whose_key_is_the_encoders_bytes(tmp_path):
  """With model.encoder the TileEmbedder follows the SlideExampleGen and the
  statistics, Transform, Trainer and Evaluator take its embedding bags; its
  parameters (and the Trainer's) hold the encoder's digest, so new weights at
  the same path re-embed and retrain, and a new head width re-embeds nothing."""
  import dataclasses
  from tests.test_frozen_encoders import _model, _save_encoder
  path = _save_encoder(tmp_path / "encoder")
  config = dataclasses.replace(demo_config(), model=_model(path))

  def components(config):
    return {c.id: c for c in _dag(tmp_path, config).components}

  dag = components(config)
  upstream = {c.id: {u.id for u in c.upstream_nodes} for c in dag.values()}
  assert upstream["TileEmbedder"] == {"SlideExampleGen"}
  for step in ("StatisticsGen", "Transform", "Trainer", "Evaluator"):
    assert "TileEmbedder" in upstream[step], step
  embedder = dag["TileEmbedder"].exec_properties
  trainer = json.loads(dag["Trainer"].exec_properties["custom_config"])
  assert len(embedder["encoder_digest"]) == 64 == len(trainer["encoder"])
  assert embedder["encoder_digest"] == trainer["encoder"]
  assert json.loads(dag["Transform"].exec_properties["custom_config"])["embedding_bags"] is True
  wider = dataclasses.replace(config, model=dataclasses.replace(config.model, dense_units=64))
  assert components(wider)["TileEmbedder"].exec_properties == embedder
  _save_encoder(tmp_path / "encoder", seed=1)  # new weights, same path
  again = components(config)
  assert again["TileEmbedder"].exec_properties["encoder_digest"] != embedder["encoder_digest"]
  assert json.loads(again["Trainer"].exec_properties["custom_config"])["encoder"] != trainer[
      "encoder"]
  without = components(demo_config())
  assert "TileEmbedder" not in without
  assert json.loads(without["Transform"].exec_properties["custom_config"])[
      "embedding_bags"] is False


def test_bags_of_any_size_without_a_frozen_encoder_are_refused_as_one_line(tmp_path):
  import dataclasses
  from histopipe.core.configs import ConfigError
  config = demo_config()
  every_tile = dataclasses.replace(config, tiling=dataclasses.replace(config.tiling,
                                                                      tiles_per_slide=0))
  with pytest.raises(ConfigError, match="tiles_per_slide 0 .* set model.encoder"):
    _dag(tmp_path, every_tile)
