"""Frozen tile encoders (`model.encoder`, encoders/frozen.py): each kind loads
and answers as its own reference does (TF's SavedModel loader, Keras' own
model), its digest follows its bytes, and a head exported with one serves
tile bags, tiles and embeddings as encoder-then-head (trainer/embedding_export.py).

The SavedModel encoders are saved here in Path Foundation's layout
(`serving_default`, one float image input in [0, 1], output `output_0`), small."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from histopipe.bags import bag_features
from histopipe.core import signatures
from histopipe.core.configs import EncoderSpec, ModelConfig, PipelineConfig, TilingConfig
from histopipe.encoders import frozen
from tests.test_warmup import TILE_SIZE

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


def test_resnet50_trunc_without_weights_is_the_same_encoder_wherever_it_is_built():
  """The TileEmbedder and the Trainer's export each build it: without a weights
  file its random weights must not depend on the process's random state."""
  config = ModelConfig(encoder=frozen.RESNET50_TRUNC, input_size=32)
  pixels = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  features = []
  for global_seed in (1, 2):
    tf.random.set_seed(global_seed)
    features.append(frozen.build_frozen_encoder(config)(pixels).numpy())
  np.testing.assert_array_equal(features[0], features[1])
  assert np.abs(features[0]).mean() > 0


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


def _tile_bag(tiles, valid) -> bytes:
  return bag_features.serialize_request(bag_features.SlideBag(
      tiles=tiles, tile_valid=valid, tile_x=[], tile_y=[], tile_tissue=[], level=0,
      level_downsample=1.0, tile_size=TILE_SIZE, mpp=0.0, slide_width=0, slide_height=0), "b")


def _png(pixels: np.ndarray) -> bytes:
  return tf.io.encode_png(pixels.astype(np.uint8)).numpy()


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
  """A head (random weights: any weights compose) exported with a saved
  encoder, and the pieces to check it with."""
  from histopipe.trainer.export import export
  from histopipe.trainer.model import build_embedding_model
  tmp = tmp_path_factory.mktemp("composed")
  path = _save_encoder(tmp / "encoder")
  config = PipelineConfig(model=_model(path), tiling=TilingConfig(tiles_per_slide=0,
                                                                  tile_size=TILE_SIZE))
  head = build_embedding_model(config.model, FEATURES, config.num_classes)
  export_dir = str(tmp / "1")
  export(head, None, config, export_dir)
  rng = np.random.default_rng(3)
  tiles = [_png(rng.uniform(0, 255, (TILE_SIZE, TILE_SIZE, 3))) for _ in range(7)]
  return {"served": tf.saved_model.load(export_dir), "encoder": path, "head": head,
          "tiles": tiles, "export_dir": export_dir}


def _encoder_then_head(composed, tiles):
  """The saved encoder (TF's loader) on TF's decoding of the tiles, then the
  served head on its features: each part on its own."""
  pixels = tf.stack([tf.cast(tf.io.decode_png(t, channels=3), tf.float32) for t in tiles])
  tile_features = tf.saved_model.load(composed["encoder"]).signatures["serving_default"](
      input_1=pixels / 255.0)["output_0"]
  return tile_features, composed["served"].signatures[signatures.PREDICT_EMBEDDINGS](
      embeddings=tile_features)


def test_the_composed_model_serves_tile_bags_as_encoder_then_head(composed):
  """serving_default on bags of different sizes, one padded with tiles it
  must not look at, equals encoder-then-head on each bag's real tiles."""
  tiles = composed["tiles"]
  bags = [_tile_bag(tiles[:3], [1, 1, 1]), _tile_bag(tiles[3:] + tiles[:2], [1, 1, 1, 1, 0, 0]),
          _tile_bag(tiles[:1], [1])]
  served = composed["served"].signatures[signatures.SERVING_DEFAULT](
      examples=tf.constant(bags))
  for index, real in enumerate([tiles[:3], tiles[3:], tiles[:1]]):
    _, separately = _encoder_then_head(composed, real)
    for key in (signatures.PROBABILITIES, signatures.GRADE):
      np.testing.assert_allclose(served[key].numpy()[index], separately[key].numpy()[0],
                                 rtol=1e-5, atol=1e-6, err_msg=key)
    attention = served[signatures.ATTENTION].numpy()[index]
    np.testing.assert_allclose(attention[:len(real)], separately[signatures.ATTENTION][0],
                               rtol=1e-5, atol=1e-6)
    assert not attention[len(real):].any()


def test_embed_tiles_and_predict_tiles_answer_as_the_encoder_and_the_bag(composed):
  tiles = composed["tiles"]
  model = composed["served"].signatures
  tile_features, separately = _encoder_then_head(composed, tiles)
  np.testing.assert_allclose(model[signatures.EMBED_TILES](tiles=tf.constant(tiles))[
      signatures.EMBEDDINGS].numpy(), tile_features.numpy(), rtol=1e-5, atol=1e-5)
  whole = model[signatures.PREDICT_TILES](tiles=tf.constant(tiles))
  np.testing.assert_allclose(whole[signatures.PROBABILITIES].numpy(),
                             separately[signatures.PROBABILITIES].numpy(), rtol=1e-5, atol=1e-6)


def test_the_composed_models_contract_names_its_encoder(composed):
  from histopipe.core.model_contract import ModelContract
  contract = ModelContract.from_json(composed["served"].signatures[signatures.METADATA](
      request=tf.constant([""]))[signatures.CONTRACT].numpy().decode())
  assert contract.encoder == {"encoder": composed["encoder"],
                              "digest": frozen.encoder_digest(_model(composed["encoder"])),
                              "embedding_size": FEATURES,
                              "spec": {"input_size": TILE_SIZE, "pixel_scaling": "unit",
                                       "signature": "serving_default", "output_key": "output_0"}}
  assert contract.tiles_per_bag == 0 and "every tissue tile" in contract.describe()


def test_the_tuner_leaves_out_what_a_head_on_embeddings_cannot_take():
  import dataclasses
  from histopipe.core.configs import full_config
  from histopipe.trainer.tuning import search_space
  config = full_config()
  tuning = dataclasses.replace(config.tuning, poolings=("gated_attention", "concat_tile"))
  plain = search_space(dataclasses.replace(config, tuning=tuning))
  assert plain.get("tiles_used") is not None
  on_embeddings = search_space(dataclasses.replace(
      config, tuning=tuning, model=dataclasses.replace(config.model, encoder="resnet50_trunc")))
  assert "tiles_used" not in on_embeddings.values
  (pooling,) = [choice for choice in on_embeddings.space if choice.name == "pooling"]
  assert pooling.values == ["gated_attention"]
