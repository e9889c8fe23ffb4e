"""The SavedModel the Pusher ships: its serving signatures (tf.Example bags,
encoded tiles, transformed features, metadata), the model contract, the
referral threshold chosen on the valid split, training statistics and warm-up
requests."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from histopipe.bags import bag_features
from histopipe.monitoring import drift, slide_skew
from histopipe.core import referral, signatures
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract, contract_of
from histopipe.core.configs import PipelineConfig
from histopipe.encoders import frozen
from histopipe.trainer import embedding_export, encoder_batching, features, warmup
from histopipe.trainer.contract_signature import metadata_signature
from histopipe.trainer import model as mil_model

def serving_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                       config: PipelineConfig, contract: ModelContract):
  """The signatures, every one running the model's encoder through one
  BatchFunction queue when `config.serving.batching` (encoder_batching.py)."""
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  serving_spec = {key: raw_spec[key] for key in features.MODEL_INPUT_KEYS}
  encoder, head = model.get_layer(mil_model.ENCODER), model.get_layer(mil_model.HEAD)
  tiles_per_bag = serving_spec[bag_features.TILES].shape[0]

  def encode(images):
    return encoder(images, training=False)

  if config.serving.batching:
    encode = encoder_batching.batched(encode, config.serving, encoder.output_shape[1:],
                                      encoder_batching.queue_name())

  def predict(raw_bags):
    transformed = model.tft_layer(raw_bags)
    outputs = mil_model.mil_outputs(
        config.model, encode, lambda inputs: head(inputs, training=False),
        transformed[features.TILES_XF], transformed[features.TILE_VALID_XF], tiles_per_bag)
    return {key: outputs[key] for key in signatures.OUTPUTS}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES)])
  def serve_tf_examples(serialized):
    return predict(tf.io.parse_example(serialized, serving_spec))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signatures.TILES)])
  def predict_tiles(encoded_tiles):
    """One bag of up to N encoded tiles, for clients that tile slides themselves."""
    count = tf.minimum(tf.shape(encoded_tiles)[0], tiles_per_bag)
    encoded_tiles = encoded_tiles[:count]
    # Padding repeats the first tile; it is masked out, so its content is moot.
    padding = tf.fill([tiles_per_bag - count], encoded_tiles[0])
    bag = {bag_features.TILES: tf.concat([encoded_tiles, padding], 0)[None],
           bag_features.TILE_VALID: tf.concat(
               [tf.ones([count], tf.int64), tf.zeros([tiles_per_bag - count], tf.int64)],
               0)[None]}
    return predict(bag)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES)])
  def transform_features(serialized):
    return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

  return {signatures.SERVING_DEFAULT: serve_tf_examples,
          signatures.PREDICT_TILES: predict_tiles,
          signatures.TRANSFORM_FEATURES: transform_features,
          signatures.METADATA: metadata_signature(contract)}


def encoder_entry(model: keras.Model, config: PipelineConfig,
                  encoder_digest: str = "") -> Optional[dict]:
  """The contract's `encoder`: what a model on a frozen encoder was trained
  on (ModelContract.encoder); None for a backbone trained end to end.
  `encoder_digest`: the one the pipeline computed for the cache keys, so the
  encoder's files are not read again; "" computes it here."""
  if not config.model.encoder:
    return None
  return {"encoder": config.model.encoder,
          "digest": encoder_digest or frozen.encoder_digest(config.model),
          "embedding_size": int(model.input[mil_model.TILE_FEATURES].shape[-1]),
          "spec": dataclasses.asdict(config.model.encoder_spec)}


def referral_settings(model: keras.Model, validation: tf.data.Dataset,
                      config: PipelineConfig) -> Optional[dict]:
  """The referral threshold (core/referral.py) chosen on the validation bags'
  predictions; None when there are none."""
  labels, grades, probabilities = [], [], []
  for batch in validation:
    inputs, targets = batch[0], batch[1]
    outputs = model(inputs, training=False)
    labels.append(np.asarray(targets[features.PROBABILITIES]).reshape(-1))
    grades.append(np.asarray(outputs[features.GRADE]).reshape(-1))
    probabilities.append(np.asarray(outputs[features.PROBABILITIES]))
  if not labels:
    return None
  target = (config.evaluation.referral_target_auc if config.task == "binary"
            else config.evaluation.referral_target_kappa)
  settings = referral.choose_threshold(np.concatenate(labels), np.concatenate(grades),
                                       np.concatenate(probabilities), config.task, target)
  logging.info(referral.describe(settings))
  return settings


def export(model: keras.Model, tf_transform_output: tft.TFTransformOutput,
           config: PipelineConfig, export_dir: str,
           warmup_bags: Sequence[bytes] = (),
           training_bags: Sequence[str] = (),
           referral_choice: Optional[dict] = None,
           encoder_digest: str = "") -> None:
  """The SavedModel with its signatures, its contract as a file as well,
  TF Serving's warm-up requests, one per bag of `warmup_bags` (serialized bag
  examples; none, no warm-up file), and the image statistics of the bags in
  `training_bags` (file patterns; the drift checks' baseline). The contract
  carries `referral_choice` (referral_settings). assets.extra/
  travels with the model: the Pusher copies the whole folder; TF Serving
  reads only the warm-up file."""
  # From the train split's bag statistics table, not its bags (the GPUs wait).
  training_statistics = (drift.statistics_of_frame(drift.frame_of_split_files(training_bags))
                         if training_bags else None)
  # The per-slide ranges travel in the contract: Predict servers serve no files.
  contract = contract_of(config, referral_choice,
                         slide_skew.training_ranges(training_statistics),
                         encoder=encoder_entry(model, config, encoder_digest))
  if config.model.encoder:  # the head alone was trained: compose it with the encoder
    model_signatures = embedding_export.serving_signatures(model, config, contract)
  else:
    model_signatures = serving_signatures(model, tf_transform_output, config, contract)
  model.save(export_dir, save_format="tf", signatures=model_signatures)
  extra = os.path.join(export_dir, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.gfile.GFile(os.path.join(extra, CONTRACT_FILE), "w") as f:
    f.write(contract.to_json())
  if training_statistics is not None:
    drift.write_statistics(training_statistics,
                           os.path.join(extra, drift.TRAINING_STATISTICS_FILE))
  if warmup_bags and config.model.encoder:
    warmup.write_embedding_model_warmup(export_dir, warmup_bags, config)
  elif warmup_bags:
    warmup.write_warmup_requests(export_dir, warmup_bags, config.name)
  else:
    logging.warning("no bags for TF Serving's warm-up requests: the first requests "
                    "to each loaded version will be slow")
