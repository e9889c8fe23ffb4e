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

from histopipe.core import signatures
from histopipe.core.configs import PipelineConfig, with_tuned_values
from histopipe.core.layout import EVAL_SPLIT
from histopipe.trainer import embedding_bags, eval_predictions, features, resume, warmup
from histopipe.trainer.inputs import training_inputs
from histopipe.trainer.devices import (FLOAT32_POLICY, precision_policy, training_policy,
                                       training_strategy)
from histopipe.trainer.fit import build_model, fit_in_phases, float32_copy, selection_metric
from histopipe.trainer.export import export, referral_settings


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  config = PipelineConfig.from_json(fn_args.custom_config["config"])
  if fn_args.hyperparameters:  # the Tuner's best values, when it ran
    values = keras_tuner.HyperParameters.from_config(fn_args.hyperparameters).values
    logging.info("training with the Tuner's best hyperparameters: %s", values)
    config = with_tuned_values(config, values)
  # Devices first: TensorFlow fixes them when it runs its first op.
  strategy = training_strategy(config.training)
  replicas = strategy.num_replicas_in_sync
  logging.info("global batch: %d bags (training.batch_size %d on each of %d replica(s))",
               config.training.batch_size * replicas, config.training.batch_size, replicas)
  keras.utils.set_random_seed(config.training.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  # A head on a frozen encoder trains on the TileEmbedder's embedding bags.
  embedding_size = (embedding_bags.embedding_size_of(fn_args.train_files)
                    if config.model.encoder else None)
  train, validation, steps_per_epoch = training_inputs(fn_args, tf_transform_output, config,
                                                       replicas=replicas,
                                                       embedding_size=embedding_size)
  policy = training_policy(config.training)
  logging.info("training step precision: %s", policy)
  with precision_policy(policy):
    model = build_model(config, strategy, embedding_size)
    state_dir = resume.training_state_dir(fn_args)
    best = fit_in_phases(model, config, strategy, train, validation, steps_per_epoch,
                         log_dir=os.path.join(fn_args.model_run_dir, "logs"),
                         state_dir=state_dir)
  logging.info("best %s during training: %.3f", selection_metric(config), best)
  # The export is float32 whatever the training step was: its consumers may be CPUs.
  exported = (model if policy == FLOAT32_POLICY else
              float32_copy(model, config, embedding_size))
  # Real bags warm up what clients will send: the same tile format, size and count.
  export(exported, tf_transform_output, config, fn_args.serving_model_dir,
         warmup_bags=warmup.first_bags(fn_args.eval_files, keys=(
             embedding_bags.WARMUP_KEYS if config.model.encoder else features.MODEL_INPUT_KEYS)),
         training_bags=fn_args.train_files,
         referral_choice=referral_settings(exported, validation, config),
         # The DAG put the encoder's digest beside the config (its cache key).
         encoder_digest=fn_args.custom_config.get("encoder", ""))
  # Once per model, here, so that `histopipe report` need not run the model again.
  eval_files = eval_predictions.eval_split_files(fn_args.train_files)
  if eval_files:
    eval_predictions.save(
        eval_predictions.predict(fn_args.serving_model_dir, eval_files,
                                 config.training.eval_batch_size,
                                 signature=(signatures.EMBEDDING_BAGS if config.model.encoder
                                            else signatures.SERVING_DEFAULT)),
        eval_predictions.path_in_model(os.path.dirname(fn_args.serving_model_dir)))
  else:
    logging.warning("no %s split beside %s: no eval predictions for the report",
                    EVAL_SPLIT, fn_args.train_files)
  resume.remove(state_dir)  # exported: a retry from here on starts afresh
