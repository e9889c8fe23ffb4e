"""Frozen tile encoders: `model.encoder` as a Keras model over tiles in pixels.

Pixels in ([n, s, s, 3] floats in 0..255, as the Transform leaves them when an
encoder is set), features out ([n, D] float32), weights never trained. The
encoder scales the pixels itself, as it was trained (`encoder_spec`), so the
pipeline's own normalisation never reaches it.

- "resnet50_trunc": Keras' ResNet50 up to `conv4_block6_out`, then global
  average pooling: 1,024 features (CLAM's default), weights from
  `model.imagenet_weights`, Keras' own (caffe) pixel scaling.
- a SavedModel folder (local or in a bucket: TensorFlow's filesystems): its
  `encoder_spec.signature`, its one input, its `encoder_spec.output_key`, as
  Google's Path Foundation is called.
- a Keras file (`.keras`, `.h5`): the model, loaded without its training
  configuration; a dict output gives `encoder_spec.output_key`.

The SavedModel layer is written here rather than taken from tensorflow_hub's
KerasLayer: the tensorflow-hub that TFX 1.16 pins (0.15) fails to import
under TF 2.16 (it imports tf.compat.v1.estimator, which 2.16 removed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import tensorflow as tf
import tf_keras as keras

from histopipe.core.configs import ModelConfig
from histopipe.core.errors import UserError
from histopipe.encoders import imagenet_weights

RESNET50_TRUNC = "resnet50_trunc"
# ImageNet's channel means and deviations, RGB (torchvision's normalisation).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_KERAS_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


class EncoderNotFound(UserError):
  """`model.encoder` names nothing an encoder can be loaded from."""


def scale_pixels(pixels: tf.Tensor, scaling: str) -> tf.Tensor:
  """0..255 RGB pixels -> what an encoder trained with `scaling` takes
  (core.configs.PIXEL_SCALINGS)."""
  if scaling == "unit":
    return pixels / 255.0
  if scaling == "symmetric":
    return pixels / 127.5 - 1.0
  if scaling == "imagenet_caffe":
    return keras.applications.resnet50.preprocess_input(pixels)
  if scaling == "imagenet_torch":
    return (pixels / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
  raise ValueError(f"unknown pixel scaling {scaling!r}")


def _is_saved_model(path: str) -> bool:
  return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def _check_exists(path: str) -> None:
  if not (_is_saved_model(path) or
          (path.endswith(_KERAS_FILE_SUFFIXES) and tf.io.gfile.exists(path))):
    raise EncoderNotFound(
        f"model.encoder {path!r}: no SavedModel folder (saved_model.pb) or Keras file "
        f"({', '.join(_KERAS_FILE_SUFFIXES)}) there; or use {RESNET50_TRUNC!r}, or \"\"")


class SavedModelEncoder(keras.layers.Layer):
  """One signature of a SavedModel as a frozen Keras layer. The loaded object
  is an attribute, so its variables are saved with a model holding the layer."""

  def __init__(self, path: str, signature: str, output_key: str, **kwargs):
    super().__init__(trainable=False, dtype="float32", **kwargs)
    self.path, self.output_key = path, output_key
    self.saved_model = tf.saved_model.load(path)
    if signature not in self.saved_model.signatures:
      raise EncoderNotFound(f"encoder {path}: no signature {signature!r} (it has "
                            f"{sorted(self.saved_model.signatures)})")
    self.signature = self.saved_model.signatures[signature]
    inputs = self.signature.structured_input_signature[1]
    if len(inputs) != 1:
      raise EncoderNotFound(f"encoder {path}: signature {signature!r} takes "
                            f"{sorted(inputs)}, not one image input")
    (self.input_name,) = inputs
    if output_key not in self.signature.structured_outputs:
      raise EncoderNotFound(f"encoder {path}: signature {signature!r} has no output "
                            f"{output_key!r} (it has {sorted(self.signature.structured_outputs)})")

  def call(self, images):
    return self.signature(**{self.input_name: images})[self.output_key]

  def compute_output_shape(self, input_shape):
    return tf.TensorShape([input_shape[0]]).concatenate(
        self.signature.structured_outputs[self.output_key].shape[1:])


def loaded_saved_models(encoder: keras.Model) -> list:
  """The loaded SavedModels inside a frozen encoder (SavedModelEncoder
  layers), for a SavedModel that must hold their objects."""
  return [layer.saved_model for layer in encoder.layers if isinstance(layer, SavedModelEncoder)]


def _keras_file_encoder(path: str) -> keras.Model:
  if not os.path.exists(path):  # a bucket: Keras reads local files only
    local = os.path.join(tempfile.mkdtemp(prefix="encoder-"), os.path.basename(path))
    tf.io.gfile.copy(path, local)
    path = local
  return keras.models.load_model(path, compile=False)


# The seed of resnet50_trunc's weights when no weights file is given.
RANDOM_WEIGHTS_SEED = 20261207


def _resnet50_trunc(model: ModelConfig, input_shape) -> keras.Model:
  weights = imagenet_weights.resolve("resnet50", model.imagenet_weights) or None
  full = keras.applications.ResNet50(include_top=False, input_shape=input_shape,
                                     weights=weights)
  if weights is None:
    _draw_seeded_weights(full, RANDOM_WEIGHTS_SEED)
  trunk = full.get_layer("conv4_block6_out").output
  return keras.Model(full.input, keras.layers.GlobalAveragePooling2D()(trunk),
                     name=RESNET50_TRUNC)


def _draw_seeded_weights(network: keras.Model, seed: int) -> None:
  """Every weight drawn again by its own initializer, seeded by `seed` and
  its position. The encoder is built in the TileEmbedder's workers and again
  in the Trainer's export: unseeded random weights (Keras' default) would
  give the served model another encoder than the one that computed the
  embeddings its head was trained on, under the same digest."""
  position = 0
  for layer in network.layers:
    for variable in layer.weights:
      name = variable.name.split("/")[-1].split(":")[0]  # kernel, bias, gamma, moving_mean...
      initializer = getattr(layer, f"{name}_initializer", None)
      if initializer is None:
        raise ValueError(f"{layer.name}: no initializer for its weight {name}")
      config = initializer.get_config()
      if "seed" in config:
        config["seed"] = seed + position
      variable.assign(type(initializer).from_config(config)(variable.shape, variable.dtype))
      position += 1


def build_frozen_encoder(model: ModelConfig, name: str = "frozen_encoder") -> keras.Model:
  """model.encoder as a frozen Keras model: [n, s, s, 3] pixels (0..255,
  s = model.input_size) -> [n, D] float32 features."""
  size = model.input_size
  pixels = keras.Input((size, size, 3), name="pixels")
  if model.encoder == RESNET50_TRUNC:
    encoder = _resnet50_trunc(model, (size, size, 3))
    features = encoder(scale_pixels(pixels, "imagenet_caffe"), training=False)
  else:
    _check_exists(model.encoder)
    spec = model.encoder_spec
    scaled = scale_pixels(pixels, spec.pixel_scaling)
    if _is_saved_model(model.encoder):
      features = SavedModelEncoder(model.encoder, spec.signature, spec.output_key)(scaled)
    else:
      encoder = _keras_file_encoder(model.encoder)
      encoder.trainable = False
      features = encoder(scaled, training=False)
      if isinstance(features, dict):
        features = features[spec.output_key]
  built = keras.Model(pixels, tf.cast(features, tf.float32), name=name)
  built.trainable = False
  return built


def _file_digest(path: str, digest) -> None:
  with tf.io.gfile.GFile(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)


def encoder_digest(model: ModelConfig) -> str:
  """SHA-256 of what the encoder computes with: every file of a SavedModel
  (relative path and bytes), a Keras file, or resnet50_trunc's weights file;
  "" without an encoder. A copy elsewhere has the same digest; a changed
  weight, another. In the steps' cache keys, so a new encoder at the same
  path reruns them."""
  if not model.encoder:
    return ""
  digest = hashlib.sha256()
  if model.encoder == RESNET50_TRUNC:
    weights = imagenet_weights.resolve("resnet50", model.imagenet_weights)
    digest.update(f"{RESNET50_TRUNC}\n".encode())
    if weights:
      _file_digest(weights, digest)
    return digest.hexdigest()
  _check_exists(model.encoder)
  if not _is_saved_model(model.encoder):
    _file_digest(model.encoder, digest)
    return digest.hexdigest()
  files = []
  for folder, _, names in tf.io.gfile.walk(model.encoder):
    files += [os.path.join(folder, name) for name in names]
  root = model.encoder.rstrip("/")
  for path in sorted(files):
    digest.update(os.path.relpath(path, root).encode() + b"\n")
    _file_digest(path, digest)
  return digest.hexdigest()
