"""`run_fn` for the TFX Trainer: input pipeline, training, SavedModel export.

Examples stay encoded on disk (`Transform(materialize=False)`); the transform
graph is applied here in the input pipeline, and again inside the serving
signature, so training and serving share one preprocessing.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, NamedTuple, Optional, Sequence

import keras_tuner
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from histopipe.components import bag_features, drift
from histopipe.core import referral, signatures
from histopipe.core.model_contract import CONTRACT_FILE, ModelContract, contract_of
from histopipe.core.configs import PipelineConfig, TrainingConfig, with_tuned_values
from histopipe.trainer import features, warmup
from histopipe.trainer.augmentation import BagAugmenter
from histopipe.trainer.metrics import QuadraticWeightedKappa
from histopipe.trainer.model import build_mil_model, ordinal_targets


def _dataset(file_pattern, data_accessor, tf_transform_output: tft.TFTransformOutput,
             config: PipelineConfig, training: bool) -> tf.data.Dataset:
  training_config = config.training
  options = tfxio.TensorFlowDatasetOptions(
      batch_size=training_config.batch_size if training else training_config.eval_batch_size,
      shuffle=training,
      shuffle_seed=training_config.seed,
      num_epochs=1,  # Keras re-iterates the finite dataset every epoch
  )
  raw = data_accessor.tf_dataset_factory(file_pattern, options,
                                         tf_transform_output.raw_metadata.schema)
  return model_batches(raw, tf_transform_output, config, training)


def model_batches(raw: tf.data.Dataset, tf_transform_output: tft.TFTransformOutput,
                  config: PipelineConfig, training: bool) -> tf.data.Dataset:
  """Batches of parsed raw bags -> (inputs, targets[, sample weights]) for Keras:
  the transform graph, then, for training, balancing and augmentation."""
  training_config = config.training
  tft_layer = tf_transform_output.transform_features_layer()
  num_classes = config.num_classes
  augment = BagAugmenter(config.augmentation, seed=training_config.seed) if training else None
  balance = training_config.class_balance if training else "none"
  if balance not in ("none", "class_weights", "balanced_sampling"):
    raise ValueError(f"unknown class_balance {balance!r}")
  # Label counts are needed only to balance training batches.
  counts = label_counts(tf_transform_output) if balance != "none" else {}
  weights = tf.constant(class_weights(counts, num_classes), tf.float32)
  if balance == "balanced_sampling":
    raw = _balanced(raw, sorted(counts), training_config)

  def to_model_io(raw_batch) -> tuple:  # (inputs, targets[, sample weights])
    transformed = tft_layer(raw_batch)
    if augment is not None:
      transformed = augment(transformed)
    inputs = {features.TILES_XF: transformed[features.TILES_XF],
              features.TILE_VALID_XF: transformed[features.TILE_VALID_XF]}
    labels = transformed[features.LABEL_KEY]
    targets = {features.ORDINAL_LOGITS: ordinal_targets(labels, num_classes),
               features.PROBABILITIES: tf.reshape(labels, [-1, 1])}
    if balance != "class_weights":
      return inputs, targets
    sample_weights = tf.gather(weights, tf.reshape(tf.cast(labels, tf.int32), [-1]))
    return inputs, targets, {features.ORDINAL_LOGITS: sample_weights}

  return raw.map(to_model_io, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
      tf.data.AUTOTUNE)


def label_counts(tf_transform_output: tft.TFTransformOutput) -> Dict[int, int]:
  """Training-split label counts, from the Transform's vocabulary analyzer."""
  path = tf_transform_output.vocabulary_file_by_name(features.LABEL_COUNTS_VOCABULARY)
  counts = {}
  with tf.io.gfile.GFile(path) as f:
    for line in f:
      count, label = line.split()
      counts[int(label)] = int(float(count))
  return counts


def class_weights(counts: Dict[int, int], num_classes: int) -> List[float]:
  """total / (classes present * count): each present class weighs the same."""
  total = sum(counts.values())
  return [total / (len(counts) * counts[k]) if counts.get(k) else 1.0
          for k in range(num_classes)]


def _balanced(raw: tf.data.Dataset, labels: List[int],
              training: TrainingConfig) -> tf.data.Dataset:
  """Every present class drawn equally often (each class's bags repeat)."""
  bags = raw.unbatch()
  per_class = [bags.filter(lambda bag, k=k: tf.equal(
      tf.reshape(tf.cast(bag[features.LABEL_KEY], tf.int32), []), k)).repeat()
               for k in labels]
  return tf.data.Dataset.sample_from_datasets(
      per_class, weights=[1.0 / len(labels)] * len(labels), seed=training.seed,
  ).batch(training.batch_size)


def learning_rate_at_epoch(epoch: int, training: TrainingConfig) -> float:
  """Linear warm-up over `warmup_epochs`, then cosine decay to 1% by the end."""
  peak = training.learning_rate
  if epoch < training.warmup_epochs:
    return peak * (epoch + 1) / (training.warmup_epochs + 1)
  span = max(training.epochs - training.warmup_epochs, 1)
  progress = (epoch - training.warmup_epochs) / span
  return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def _ordinal_loss(targets, logits):
  return keras.losses.binary_crossentropy(targets, logits, from_logits=True)


def selection_metric(config: PipelineConfig) -> str:
  """The validation metric early stopping keeps the best model by."""
  name = "auc" if config.task == "binary" else "kappa"
  return f"val_{features.PROBABILITIES}_{name}"


def compile_model(model: keras.Model, config: PipelineConfig) -> None:
  metric = (keras.metrics.AUC(name="auc") if config.task == "binary"
            else QuadraticWeightedKappa(config.num_classes))
  model.compile(
      optimizer=keras.optimizers.Adam(config.training.learning_rate),
      # Binary: the single logit "label >= 1" is the two-class ordinal logit.
      loss={features.ORDINAL_LOGITS: _ordinal_loss},
      metrics={features.PROBABILITIES: [metric]},
  )


def _serving_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                        contract: ModelContract):
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  serving_spec = {key: raw_spec[key] for key in features.MODEL_INPUT_KEYS}

  def predict(raw_bags):
    transformed = model.tft_layer(raw_bags)
    outputs = model({features.TILES_XF: transformed[features.TILES_XF],
                     features.TILE_VALID_XF: transformed[features.TILE_VALID_XF]},
                    training=False)
    return {key: outputs[key] for key in signatures.OUTPUTS}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES)])
  def serve_tf_examples(serialized):
    return predict(tf.io.parse_example(serialized, serving_spec))

  tiles_per_slide = serving_spec[bag_features.TILES].shape[0]

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signatures.TILES)])
  def predict_tiles(encoded_tiles):
    """One bag of up to N encoded tiles, for clients that tile slides themselves."""
    count = tf.minimum(tf.shape(encoded_tiles)[0], tiles_per_slide)
    encoded_tiles = encoded_tiles[:count]
    # Padding repeats the first tile; it is masked out, so its content is moot.
    padding = tf.fill([tiles_per_slide - count], encoded_tiles[0])
    bag = {bag_features.TILES: tf.concat([encoded_tiles, padding], 0)[None],
           bag_features.TILE_VALID: tf.concat(
               [tf.ones([count], tf.int64), tf.zeros([tiles_per_slide - count], tf.int64)],
               0)[None]}
    return predict(bag)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=signatures.EXAMPLES)])
  def transform_features(serialized):
    return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

  contract_json = contract.to_json()

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name=signatures.METADATA_REQUEST)])
  def metadata(request):
    del request  # see signatures.METADATA
    return {signatures.CONTRACT: tf.constant(contract_json)}

  return {signatures.SERVING_DEFAULT: serve_tf_examples,
          signatures.PREDICT_TILES: predict_tiles,
          signatures.TRANSFORM_FEATURES: transform_features,
          signatures.METADATA: metadata}


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
           referral_choice: Optional[dict] = None) -> None:
  """The SavedModel with its signatures, its contract as a file as well,
  TF Serving's warm-up requests, one per bag of `warmup_bags` (serialized bag
  examples; none, no warm-up file), and the image statistics of the bags in
  `training_bags` (file patterns; the drift checks' baseline). The contract
  carries `referral_choice` (referral_settings). assets.extra/
  travels with the model: the Pusher copies the whole folder; TF Serving
  reads only the warm-up file."""
  contract = contract_of(config, referral_choice)
  model.save(export_dir, save_format="tf",
             signatures=_serving_signatures(model, tf_transform_output, contract))
  extra = os.path.join(export_dir, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.gfile.GFile(os.path.join(extra, CONTRACT_FILE), "w") as f:
    f.write(contract.to_json())
  if training_bags:
    frame = drift.frame_of_examples(drift.read_serialized_bags(training_bags))
    drift.write_statistics(drift.statistics_of_frame(frame),
                           os.path.join(extra, drift.TRAINING_STATISTICS_FILE))
  if warmup_bags:
    warmup.write_warmup_requests(export_dir, warmup_bags, config.name)
  else:
    logging.warning("no bags for TF Serving's warm-up requests: the first requests "
                    "to each loaded version will be slow")


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
  """Freezes or unfreezes the CNN backbone(s): the Models nested in the MIL model."""
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      layer.trainable = trainable


def fit_in_phases(model: keras.Model, config: PipelineConfig, strategy: tf.distribute.Strategy,
                  train: tf.data.Dataset, evaluation: Optional[tf.data.Dataset],
                  steps_per_epoch,
                  log_dir: str = "") -> float:
  """Trains `model`: first `frozen_backbone_epochs` with the backbone frozen,
  then the rest of `epochs` with everything trainable; one learning-rate
  schedule runs across both. Each phase stops early on validation kappa (AUC
  for binary tasks), and the model ends with the best weights seen in either
  phase. Returns that kappa (AUC).
  """
  training = config.training
  frozen = min(max(training.frozen_backbone_epochs, 0), training.epochs)
  if frozen and not config.model.imagenet_weights:
    logging.warning("frozen_backbone_epochs=%d with a randomly initialised backbone: "
                    "the head trains on random features first", frozen)
  best_value, best = -math.inf, None
  for first, last, backbone_trainable in ((0, frozen, False),
                                          (frozen, training.epochs, True)):
    if last <= first:
      continue
    set_backbone_trainable(model, backbone_trainable)
    with strategy.scope():
      compile_model(model, config)  # a change of `trainable` takes effect on compile
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=selection_metric(config), mode="max",
        patience=max((last - first) // 3, 3), restore_best_weights=True)
    callbacks = [keras.callbacks.LearningRateScheduler(
        lambda epoch: learning_rate_at_epoch(epoch, training)), early_stopping]
    if log_dir:
      callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    model.fit(train, validation_data=evaluation, initial_epoch=first, epochs=last,
              steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=2)
    if early_stopping.best_weights is not None and early_stopping.best > best_value:
      best_value = early_stopping.best
      best = WeightsSnapshot(early_stopping.best_weights, backbone_trainable)
  if best is not None:
    best.restore(model)
  set_backbone_trainable(model, True)
  return best_value


class WeightsSnapshot(NamedTuple):
  """`model.get_weights()` and whether the backbone was trainable then.

  Keras orders a layer's weights trainable first, so freezing the backbone
  reorders `get_weights()`: a snapshot goes back under the same setting.
  """
  weights: List[np.ndarray]
  backbone_trainable: bool

  def restore(self, model: keras.Model) -> None:
    set_backbone_trainable(model, self.backbone_trainable)
    model.set_weights(self.weights)
    set_backbone_trainable(model, True)


def training_strategy(training: TrainingConfig) -> tf.distribute.Strategy:
  """MirroredStrategy over a node's GPUs (mixed precision if asked); CPU: default."""
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    return tf.distribute.get_strategy()
  if training.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  logging.info("training on %d GPU(s), mixed precision %s", len(gpus),
               training.mixed_precision)
  return tf.distribute.MirroredStrategy()


def training_inputs(fn_args, tf_transform_output: tft.TFTransformOutput,
                    config: PipelineConfig):
  """(train, validation, steps_per_epoch) for `fit`, from the Trainer's or
  the Tuner's fn_args."""
  train = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                   config, training=True)
  validation = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                        config, training=False)
  steps_per_epoch = config.training.steps_per_epoch or None
  if config.training.class_balance == "balanced_sampling":
    # An endless stream: an epoch is as many bags as the training split has.
    train_bags = sum(label_counts(tf_transform_output).values())
    steps_per_epoch = steps_per_epoch or math.ceil(train_bags / config.training.batch_size)
  elif steps_per_epoch:
    train = train.repeat()
  return train, validation, steps_per_epoch


def build_model(config: PipelineConfig, strategy: tf.distribute.Strategy) -> keras.Model:
  with strategy.scope():
    return build_mil_model(config.model, config.tiles_per_bag, config.num_classes)


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
