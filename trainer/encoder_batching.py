"""The exported model's tile encoder inside TensorFlow's BatchFunction op.

TF Serving's own batching (`--enable_batching`) wraps the whole session: it
batches every signature, and `metadata` (no batch dimension) and
`predict_tiles` (one bag's tiles as rows) cannot be batched. So the batching
is in the graph, around the one expensive part: the encoder's pass over
decoded tiles, `[n, H, W, 3] -> [n, F]`. Each request decodes, pads and pools
in its own thread; its tiles wait in the op's queue (at most
`batch_timeout_micros`) and run with those of other requests.

What TF 2.16's BatchFunction does, checked in tests/test_encoder_batching.py:
- every BatchFunction op with the same `shared_name` in one process (or one
  TF Serving session) feeds one queue, run by the function of the op that
  created it; `tf.nondifferentiable_batch_function` names it after the name
  scope it is called in. So each export calls it in a scope of its own
  (queue_name: QUEUE_SCOPE and a random token), which every signature of
  that export shares: the tiles of `serving_default` and `predict_tiles`
  requests run in one batch, and two models in one process (the Evaluator's
  candidate and baseline) never run each other's encoder.
- with large-batch splitting (the decorator's default) the op's
  `max_batch_size` is the largest *request*; the largest *batch* is the last
  of `allowed_batch_sizes`, and a batch is padded up to the next allowed
  size. So `max_batch_size` here (the largest batch) becomes the op's last
  allowed size, `max_request_tiles` its `max_batch_size`; "no padding"
  (empty `allowed_batch_sizes`) is every size from 1 to max_batch_size.
- only the first dimension may vary: the op traces the function at the
  shape of the caller's tensor, so that dimension is made unknown first
  (call it inside a tf.function, as the signatures do: an eager call has a
  known shape and fails as soon as its batch holds other rows).
"""

from __future__ import annotations

import uuid
from typing import Callable, Sequence

import tensorflow as tf

from histopipe.core.configs import ServingConfig

# The queue's shared name is "<queue_name>/batch/", queue_name this and a token.
QUEUE_SCOPE = "tile_encoder_queue"


def queue_name() -> str:
  """A name for one export's queue, unlike any other export's."""
  return f"{QUEUE_SCOPE}_{uuid.uuid4().hex[:12]}"


def op_allowed_batch_sizes(settings: ServingConfig) -> list:
  """The op's allowed batch sizes: the configured ones, or every size up to
  max_batch_size (batches capped at it, none padded)."""
  return (list(settings.allowed_batch_sizes) or
          list(range(1, settings.max_batch_size + 1)))


def batched(encode: Callable[[tf.Tensor], tf.Tensor], settings: ServingConfig,
            feature_shape: Sequence[int], name: str) -> Callable[[tf.Tensor], tf.Tensor]:
  """`encode` (images [n, H, W, 3] -> features [n, *feature_shape]) run
  through the BatchFunction queue `name` (queue_name()), shared by every caller."""
  batch_function = tf.nondifferentiable_batch_function(
      num_batch_threads=settings.num_batch_threads,
      max_batch_size=settings.max_request_tiles,
      batch_timeout_micros=settings.batch_timeout_micros,
      allowed_batch_sizes=op_allowed_batch_sizes(settings),
      max_enqueued_batches=settings.max_enqueued_batches,
      autograph=False)
  encode_in_batches = batch_function(encode)

  def call(images: tf.Tensor) -> tf.Tensor:
    # The op traces `encode` at the caller's static shape, and a batch of
    # other requests' rows has another first dimension: it must be unknown.
    # predict_tiles' images have a static count (its bag is padded to N).
    rows = images.shape[0]  # given back to the output: the signatures keep their shapes
    images = tf.compat.v1.placeholder_with_default(images, [None, *images.shape[1:]])
    with tf.name_scope(name):
      features = encode_in_batches(images)
    # The op's outputs have no static shape; the encoder's is known.
    return tf.ensure_shape(features, [rows, *feature_shape])

  return call
