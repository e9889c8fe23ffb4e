"""`tuner_fn` for the optional TFX Tuner: a random search over learning rate,
dropout, pooling and tiles per bag, each trial trained like the Trainer trains.

keras-tuner's model-building tuners (`RandomSearch`, `Hyperband`) check that a
trial's model is a Keras 3 `keras.Model`, and keras-tuner binds to Keras 3
because TFX imports it before any code of ours runs; our models are tf_keras
(Keras 2, which Transform and TFMA need). So the search is a `BaseTuner` with
its own `run_trial`: keras-tuner's oracle picks the values and keeps the
results, our code builds and trains the tf_keras model.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from histopipe.core.configs import TUNED_FIELDS, PipelineConfig, with_tuned_values
from histopipe.trainer import devices, embedding_bags, fit, inputs


def search_space(config: PipelineConfig) -> keras_tuner.HyperParameters:
  """The tuning choices; a head on a frozen encoder's embeddings (model.encoder)
  takes every tile, one embedding each, so neither `tiles_used` nor the
  `concat_tile` pooling (a grid of tiles as one image) is among its choices."""
  hyperparameters = keras_tuner.HyperParameters()
  for name, (_, _, choices) in TUNED_FIELDS.items():
    values = list(getattr(config.tuning, choices))
    if config.model.encoder:
      if name == "tiles_used":
        continue
      if name == "pooling":
        values = [value for value in values if value != "concat_tile"] or [config.model.pooling]
    hyperparameters.Choice(name, values)
  return hyperparameters


class MilRandomSearch(keras_tuner.engine.base_tuner.BaseTuner):
  """Each trial: the MIL model with the trial's values, trained for
  `tuning.epochs` on "train", scored by the best validation kappa (AUC)."""

  def __init__(self, config: PipelineConfig, strategy: tf.distribute.Strategy,
               embedding_size: Optional[int] = None, **kwargs):
    self._config = config
    self._embedding_size = embedding_size  # with model.encoder: the head's input
    self._strategy = strategy  # one for every trial: it holds the devices
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective(fit.selection_metric(config), direction="max"),
        max_trials=config.tuning.max_trials, hyperparameters=search_space(config),
        seed=config.training.seed)
    super().__init__(oracle, **kwargs)

  def run_trial(self, trial, train, validation, steps_per_epoch):
    config = with_tuned_values(self._config, trial.hyperparameters.values)
    config = dataclasses.replace(config, training=dataclasses.replace(
        config.training, epochs=config.tuning.epochs))
    # The last trial's model, optimizer and graph state go before the next is
    # built: on a GPU each trial's ResNet50 would otherwise stay allocated.
    keras.backend.clear_session()
    with devices.precision_policy(devices.training_policy(config.training)):
      model = fit.build_model(config, self._strategy, self._embedding_size)
      best = fit.fit_in_phases(model, config, self._strategy, train, validation,
                               steps_per_epoch)
    return {fit.selection_metric(config): best}


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
  config = PipelineConfig.from_json(fn_args.custom_config["config"])
  strategy = devices.training_strategy(config.training)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
  embedding_size = (embedding_bags.embedding_size_of(fn_args.train_files)
                    if config.model.encoder else None)
  train, validation, steps_per_epoch = inputs.training_inputs(
      fn_args, tf_transform_output, config, replicas=strategy.num_replicas_in_sync,
      embedding_size=embedding_size)
  tuner = MilRandomSearch(config, strategy, embedding_size, directory=fn_args.working_dir,
                          project_name="mil_search")
  return tfx.components.TunerFnResult(
      tuner=tuner,
      fit_kwargs={"train": train, "validation": validation,
                  "steps_per_epoch": steps_per_epoch})
