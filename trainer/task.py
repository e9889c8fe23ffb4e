"""`run_fn` for the TFX Trainer (the DAG names it by this module's path):
input pipeline (`inputs.py`), training (`fit.py`), SavedModel export (`export.py`).

Examples stay encoded on disk (`Transform(materialize=False)`); the transform
graph is applied here in the input pipeline, and again inside the serving
signature, so training and serving share one preprocessing.
"""

from __future__ import annotations

import logging
import os

import keras_tuner
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from histopipe.core.configs import PipelineConfig, with_tuned_values
from histopipe.trainer import warmup
from histopipe.trainer.inputs import training_inputs
from histopipe.trainer.fit import build_model, fit_in_phases, selection_metric, training_strategy
from histopipe.trainer.export import export, referral_settings


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  config = PipelineConfig.from_json(fn_args.custom_config["config"])
  if fn_args.hyperparameters:  # the Tuner's best values, when it ran
    values = keras_tuner.HyperParameters.from_config(fn_args.hyperparameters).values
    logging.info("training with the Tuner's best hyperparameters: %s", values)
    config = with_tuned_values(config, values)
  keras.utils.set_random_seed(config.training.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  train, validation, steps_per_epoch = training_inputs(fn_args, tf_transform_output, config)
  strategy = training_strategy(config.training)
  model = build_model(config, strategy)
  best = fit_in_phases(model, config, strategy, train, validation, steps_per_epoch,
                       log_dir=os.path.join(fn_args.model_run_dir, "logs"))
  logging.info("best %s during training: %.3f", selection_metric(config), best)
  # Real bags warm up what clients will send: the same tile format, size and count.
  export(model, tf_transform_output, config, fn_args.serving_model_dir,
         warmup_bags=warmup.first_bags(fn_args.eval_files),
         training_bags=fn_args.train_files,
         referral_choice=referral_settings(model, validation, config))
