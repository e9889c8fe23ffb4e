"""Frozen tile encoders (`model.encoder`, encoders/frozen.py): each kind loads
and answers as its own reference does (TF's SavedModel loader, Keras' own
model), its digest follows its bytes, and a MIL model on one trains only its
head and exports encoder-then-head.

The SavedModel encoders are saved here in Path Foundation's layout
(`serving_default`, one float image input in [0, 1], output `output_0`), small."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from histopipe.bags import bag_features
from histopipe.core import signatures
from histopipe.core.configs import EncoderSpec, ModelConfig, PipelineConfig
from histopipe.encoders import frozen
from histopipe.trainer import features
from histopipe.trainer.preprocessing import decode_tiles
from tests.test_warmup import TILE_SIZE, TILES_PER_BAG, _bag, _StandInTransformOutput

FEATURES = 8


class _PathFoundationLike(tf.Module):
  """A conv, ReLU, average pooling and a projection, in Path Foundation's signature."""

  def __init__(self, seed: int):
    super().__init__()
    rng = np.random.default_rng(seed)
    self.kernel = tf.Variable(rng.normal(size=(3, 3, 3, 12)).astype(np.float32))
    self.projection = tf.Variable(rng.normal(size=(12, FEATURES)).astype(np.float32))

  @tf.function(input_signature=[tf.TensorSpec([None, TILE_SIZE, TILE_SIZE, 3], tf.float32,
                                              name="input_1")])
  def serve(self, images):
    hidden = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 1, "SAME"))
    return {"output_0": tf.reduce_mean(hidden, [1, 2]) @ self.projection}


def _save_encoder(path, seed: int = 0) -> str:
  module = _PathFoundationLike(seed)
  tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
  return str(path)


def _model(encoder: str, **fields) -> ModelConfig:
  return ModelConfig(encoder=encoder, input_size=TILE_SIZE, dense_units=8, attention_units=4,
                     dropout=0.0, encoder_spec=EncoderSpec(input_size=TILE_SIZE, **fields))


def _pixels(count: int = 5, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(0, 255, (count, TILE_SIZE, TILE_SIZE, 3)).astype(
      np.float32)


def test_a_saved_model_encoder_answers_as_its_signature_on_unit_scaled_pixels(tmp_path):
  path = _save_encoder(tmp_path / "encoder")
  encoder = frozen.build_frozen_encoder(_model(path))
  pixels = _pixels()
  reference = tf.saved_model.load(path).signatures["serving_default"](
      input_1=tf.constant(pixels / 255.0))["output_0"].numpy()
  np.testing.assert_allclose(encoder(pixels).numpy(), reference, rtol=1e-5, atol=1e-5)
  assert encoder.output_shape == (None, FEATURES)
  assert not encoder.trainable_weights


def test_a_keras_file_encoder_takes_torch_scaled_pixels(tmp_path):
  inputs = keras.Input((TILE_SIZE, TILE_SIZE, 3))
  outputs = keras.layers.Dense(FEATURES)(keras.layers.GlobalAveragePooling2D()(
      keras.layers.Conv2D(6, 3, activation="relu")(inputs)))
  original = keras.Model(inputs, outputs)
  path = str(tmp_path / "encoder.keras")
  original.save(path)
  pixels = _pixels()
  torch_scaled = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
      [0.229, 0.224, 0.225])
  encoder = frozen.build_frozen_encoder(_model(path, pixel_scaling="imagenet_torch"))
  np.testing.assert_allclose(encoder(pixels).numpy(),
                             original(torch_scaled.astype(np.float32)).numpy(),
                             rtol=1e-4, atol=1e-5)


def test_resnet50_trunc_is_resnet50_cut_after_conv4_then_averaged(tmp_path):
  """Against Keras' own ResNet50 on the same weights file: its conv4_block6_out,
  averaged over the tile, on Keras' ResNet50 preprocessing."""
  size = 32
  weights = str(tmp_path / "resnet50_notop.h5")
  keras.applications.ResNet50(include_top=False, weights=None,
                              input_shape=(size, size, 3)).save_weights(weights)
  encoder = frozen.build_frozen_encoder(ModelConfig(encoder=frozen.RESNET50_TRUNC,
                                                    input_size=size, imagenet_weights=weights))
  reference_net = keras.applications.ResNet50(include_top=False, weights=weights,
                                              input_shape=(size, size, 3))
  conv4 = keras.Model(reference_net.input, reference_net.get_layer("conv4_block6_out").output)
  pixels = np.random.default_rng(1).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
  reference = conv4(keras.applications.resnet50.preprocess_input(pixels.copy()),
                    training=False).numpy().mean(axis=(1, 2))
  assert encoder.output_shape == (None, 1024)
  np.testing.assert_allclose(encoder(pixels).numpy(), reference, rtol=1e-4, atol=1e-4)


def test_the_digest_follows_the_encoders_bytes_not_its_path(tmp_path):
  path = _save_encoder(tmp_path / "encoder")
  copy = str(tmp_path / "copy")
  shutil.copytree(path, copy)
  other = _save_encoder(tmp_path / "other", seed=1)
  digest = frozen.encoder_digest(_model(path))
  assert len(digest) == 64
  assert frozen.encoder_digest(_model(copy)) == digest
  assert frozen.encoder_digest(_model(other)) != digest
  assert frozen.encoder_digest(ModelConfig()) == ""


def test_an_encoder_that_is_not_there_is_one_error_naming_it(tmp_path):
  missing = str(tmp_path / "nothing")
  with pytest.raises(frozen.EncoderNotFound, match="nothing.*no SavedModel"):
    frozen.encoder_digest(_model(missing))
  path = _save_encoder(tmp_path / "encoder")
  with pytest.raises(frozen.EncoderNotFound, match="no output 'embedding'"):
    frozen.build_frozen_encoder(_model(path, output_key="embedding"))


@pytest.mark.parametrize("fields,message", [
    ({"pooling": "concat_tile"}, "concat_tile"),
    ({"input_size": TILE_SIZE * 2}, "encoder takes 16 px tiles"),
])
def test_settings_a_frozen_encoder_cannot_work_with_are_refused(fields, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**{"encoder": "/models/path_foundation", "encoder_spec": EncoderSpec(
        input_size=TILE_SIZE), "input_size": TILE_SIZE, **fields})


class _PixelTransformLayer(tf.Module):
  """The Transform's graph with an encoder set: tiles decoded, left in pixels."""

  def __call__(self, raw):
    # The real layer returns static shapes whatever its input's (predict_tiles pads).
    encoded = tf.ensure_shape(raw[bag_features.TILES], [None, TILES_PER_BAG])
    return {features.TILES_XF: decode_tiles(encoded, TILE_SIZE),
            features.TILE_VALID_XF: tf.cast(raw[bag_features.TILE_VALID], tf.float32)}


class _PixelTransformOutput(_StandInTransformOutput):
  def transform_features_layer(self):
    return _PixelTransformLayer()


def test_a_mil_model_on_a_frozen_encoder_trains_its_head_only_and_serves_encoder_then_head(
    tmp_path):
  from histopipe.trainer import fit
  from histopipe.trainer.export import export
  from histopipe.trainer.model import HEAD, build_mil_model
  path = _save_encoder(tmp_path / "encoder")
  config = PipelineConfig(model=_model(path))
  model = build_mil_model(config.model, tiles_per_slide=TILES_PER_BAG,
                          num_classes=config.num_classes)
  fit.set_backbone_trainable(model, True)  # as after a frozen phase: it stays frozen
  fit.compile_model(model, config)
  bags = [_bag(seed, 1 + seed % TILES_PER_BAG) for seed in range(6)]
  parsed = tf.io.parse_example(bags, _StandInTransformOutput().raw_feature_spec())
  inputs = _PixelTransformLayer()(parsed)
  labels = np.arange(6) % config.num_classes
  targets = {features.ORDINAL_LOGITS: tf.cast(
      labels[:, None] >= np.arange(1, config.num_classes)[None, :], tf.float32),
      features.PROBABILITIES: labels}
  head_before = [w.copy() for w in model.get_layer(HEAD).get_weights()]
  pixels = _pixels()
  encoded_before = model.get_layer("tile_encoder")(pixels).numpy()
  model.fit(inputs, targets, epochs=2, batch_size=3, verbose=0)
  np.testing.assert_array_equal(model.get_layer("tile_encoder")(pixels).numpy(), encoded_before)
  assert any(np.abs(a - b).max() > 0 for a, b in
             zip(model.get_layer(HEAD).get_weights(), head_before))

  export_dir = str(tmp_path / "1")
  export(model, _PixelTransformOutput(), config, export_dir)
  served = tf.saved_model.load(export_dir).signatures[signatures.SERVING_DEFAULT](
      **{signatures.EXAMPLES: tf.constant(bags)})
  # Encoder then head, each on its own: TF's loader on the saved encoder, the
  # trained head on its features.
  tiles = inputs[features.TILES_XF].numpy().reshape(-1, TILE_SIZE, TILE_SIZE, 3)
  tile_features = tf.saved_model.load(path).signatures["serving_default"](
      input_1=tf.constant(tiles / 255.0))["output_0"]
  separately = model.get_layer(HEAD)(
      {"tile_features": tf.reshape(tile_features, [len(bags), TILES_PER_BAG, FEATURES]),
       features.TILE_VALID_XF: inputs[features.TILE_VALID_XF]}, training=False)
  for key in signatures.OUTPUTS:
    np.testing.assert_allclose(served[key].numpy(), np.asarray(separately[key]),
                               rtol=1e-4, atol=1e-5, err_msg=key)
