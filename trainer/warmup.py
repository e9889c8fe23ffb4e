"""TF Serving's warm-up requests, written into the exported model.

A freshly loaded model answers its first requests slowly: TF Serving
optimises the graph and sets up kernels and memory pools on first use. TF
Serving replays the PredictionLog records of
`<version>/assets.extra/tf_serving_warmup_requests` before it marks a version
available, so no client pays for that; a request that fails fails the load
(https://www.tensorflow.org/tfx/serving/saved_model_warmup). The Pusher copies
the whole model folder, so every pushed version carries its own warm-up.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Union

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from tfx_bsl.tfxio import dataset_util

from histopipe.bags import bag_features
from histopipe.core import signatures
from histopipe.core.configs import PipelineConfig
from histopipe.trainer import features

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"  # the names TF Serving looks for
MAX_WARMUP_REQUESTS = 1000  # TF Serving fails the load with more
# A few bags, one request each: the first run does the one-time set-up, and
# every request is a full model run at every load on every replica (about
# 1.2 s a bag on 2 CPU cores, full preset), so a few cost seconds, not minutes.
WARMUP_BAGS = 5


def warmup_requests(serialized_bags: Sequence[bytes],
                    model_name: str) -> List[prediction_log_pb2.PredictionLog]:
  """One `serving_default` Predict request per bag, each a batch of one, as
  `histopipe predict` sends a slide."""
  logs = []
  for bag in serialized_bags:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signatures.SERVING_DEFAULT
    request.inputs[signatures.EXAMPLES].CopyFrom(
        tf.make_tensor_proto([bag], dtype=tf.string, shape=[1]))
    logs.append(prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)))
  return logs


def write_warmup_requests(export_dir: str, serialized_bags: Sequence[bytes],
                          model_name: str) -> str:
  """Writes the warm-up file of the SavedModel in `export_dir`; returns its path."""
  if not serialized_bags:
    raise ValueError(f"{export_dir}: no bags to write warm-up requests from")
  if len(serialized_bags) > MAX_WARMUP_REQUESTS:
    raise ValueError(f"{export_dir}: {len(serialized_bags)} warm-up requests; "
                     f"TF Serving loads a model with at most {MAX_WARMUP_REQUESTS}")
  return _write_logs(export_dir, warmup_requests(serialized_bags, model_name))


def _write_logs(export_dir: str, logs) -> str:
  warmup_dir = os.path.join(export_dir, WARMUP_DIR)
  tf.io.gfile.makedirs(warmup_dir)
  path = os.path.join(warmup_dir, WARMUP_FILE)
  with tf.io.TFRecordWriter(path) as writer:
    for log in logs:
      writer.write(log.SerializeToString())
  return path


def model_inputs_only(serialized_bag: bytes,
                      keys: Sequence[str] = features.MODEL_INPUT_KEYS) -> bytes:
  """The bag as a serving client sends it: only the features the model reads.
  The warm-up file ships with every pushed model, so it should not carry the
  slide's patient id, label or grading."""
  bag = tf.train.Example.FromString(serialized_bag)
  request = tf.train.Example()
  for key in keys:
    if key in bag.features.feature:
      request.features.feature[key].CopyFrom(bag.features.feature[key])
  return request.SerializeToString()


def first_bags(file_patterns: Union[str, List[str]], count: int = WARMUP_BAGS,
               keys: Sequence[str] = features.MODEL_INPUT_KEYS) -> List[bytes]:
  """Up to `count` bags from the Trainer's record files (e.g. `fn_args.eval_files`),
  cut to the model's inputs (`keys`). Read as the Trainer's data accessor reads them
  (same file matching, compression told by the `.gz` name)."""
  records = dataset_util.make_tf_record_dataset(
      file_patterns if isinstance(file_patterns, list) else [file_patterns],
      batch_size=count, drop_final_batch=False, num_epochs=1, shuffle=False,
      shuffle_buffer_size=1, shuffle_seed=None)
  for batch in records.take(1):
    return [model_inputs_only(record, keys) for record in batch.numpy()]
  return []


# A model on a frozen encoder trains on embedding bags: its Trainer has no
# tile bags, so serving_default and embed_tiles warm up on tiles of one grey,
# cut as the contract says (their content does not matter to the kernels).
SYNTHETIC_WARMUP_TILES = 4


def _grey_tiles(config: PipelineConfig) -> List[bytes]:
  size = config.tiling.resize_to or config.tiling.tile_size
  grey = tf.fill([size, size, 3], tf.constant(200, tf.uint8))
  encoded = (tf.io.encode_jpeg(grey, quality=config.tiling.jpeg_quality)
             if config.tiling.tile_format == "jpeg" else tf.io.encode_png(grey))
  return [encoded.numpy()] * SYNTHETIC_WARMUP_TILES


def _predict_log(model_name: str, signature: str, inputs: Dict[str, tf.Tensor]):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  return prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))


def embedding_model_warmup(embedding_bags: Sequence[bytes],
                           config: PipelineConfig) -> List[prediction_log_pb2.PredictionLog]:
  """predict_embeddings on each of the embedding bags given, then
  serving_default on a bag of grey tiles and embed_tiles on its tiles."""
  logs = []
  for serialized in embedding_bags:
    feature = tf.train.Example.FromString(serialized).features.feature
    size = feature[bag_features.EMBEDDING_SIZE].int64_list.value[0]
    embeddings = np.array(feature[bag_features.EMBEDDINGS].float_list.value,
                          np.float32).reshape(-1, size)
    logs.append(_predict_log(config.name, signatures.PREDICT_EMBEDDINGS,
                             {signatures.EMBEDDINGS: embeddings}))
  tiles = _grey_tiles(config)
  bag = bag_features.serialize_request(bag_features.SlideBag(
      tiles=tiles, tile_valid=[1] * len(tiles), tile_x=[], tile_y=[], tile_tissue=[], level=0,
      level_downsample=1.0, tile_size=0, mpp=0.0, slide_width=0, slide_height=0), "warm-up")
  logs.append(_predict_log(config.name, signatures.SERVING_DEFAULT,
                           {signatures.EXAMPLES: np.array([bag], dtype=object)}))
  logs.append(_predict_log(config.name, signatures.EMBED_TILES,
                           {signatures.TILES: np.array(tiles, dtype=object)}))
  return logs


def write_embedding_model_warmup(export_dir: str, embedding_bags: Sequence[bytes],
                                 config: PipelineConfig) -> str:
  """The warm-up file of a model on a frozen encoder; returns its path."""
  return _write_logs(export_dir, embedding_model_warmup(embedding_bags, config))
