"""The exported model's predictions on the Evaluator's split, made once per
model, by the Trainer, and kept beside the SavedModel in the Model artifact.

`histopipe report` draws its confusion matrix, ROC curves, referral curve,
slice table and attention heatmaps from these. Before, it ran the model over
the whole eval split itself, every time it was asked: at PANDA scale 1,592
bags of 36 tiles, about 30 minutes on two cores with the `full` model,
repeating the Evaluator's work. Here the pass is made once, on the Trainer's
node (a GPU on Kubeflow), through the exported `serving_default` signature:
what TF Serving and TFMA run, not the Keras model in training.

TFMA's Evaluator keeps no per-example predictions (its writers write metrics,
plots and validations only), so its own pass cannot be reused.

What is kept per bag: image id, provider, label, grade, probabilities,
attention per tile, and the tile geometry the heatmaps need (no tiles: an
eval split's tiles are GBs). An `.npz` of plain arrays, read without pickle.
"""

from __future__ import annotations

import io
import os
from typing import Dict, List, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from histopipe.bags import bag_features
from histopipe.core import layout, signatures

# Per-bag tile geometry kept for the heatmaps: feature -> (numpy dtype, per tile).
_GEOMETRY = {bag_features.TILE_VALID: ("int64", True), bag_features.TILE_X: ("int64", True),
             bag_features.TILE_Y: ("int64", True), bag_features.TILE_TISSUE: ("float32", True),
             bag_features.LEVEL: ("int64", False),
             bag_features.LEVEL_DOWNSAMPLE: ("float32", False),
             bag_features.TILE_SIZE: ("int64", False), bag_features.MPP: ("float32", False),
             bag_features.SLIDE_WIDTH: ("int64", False),
             bag_features.SLIDE_HEIGHT: ("int64", False)}


class EvalPredictions(NamedTuple):
  """The model's outputs on every eval bag, row-aligned with the bags."""
  image_ids: List[str]
  providers: List[str]
  labels: np.ndarray  # [B] int
  grades: np.ndarray  # [B] int
  probabilities: np.ndarray  # [B, 6] or [B, 1]
  attention: np.ndarray  # [B, N]
  bags: List[bag_features.SlideBag]  # tile geometry only: no tiles


def path_in_model(model_uri: str) -> str:
  """Where a Model artifact keeps them: beside its `Format-Serving` folder,
  outside what the Pusher copies to serving."""
  return "/".join([model_uri.rstrip("/"), layout.EVAL_PREDICTIONS_FILE])


def _values(feature, name: str, dtype: str):
  kind = feature[name].float_list if dtype == "float32" else feature[name].int64_list
  return list(kind.value)


def _bag(geometry: Dict[str, object]) -> bag_features.SlideBag:
  return bag_features.SlideBag(
      tiles=[], tile_valid=list(geometry[bag_features.TILE_VALID]),
      tile_x=list(geometry[bag_features.TILE_X]), tile_y=list(geometry[bag_features.TILE_Y]),
      tile_tissue=[float(v) for v in geometry[bag_features.TILE_TISSUE]],
      level=int(geometry[bag_features.LEVEL]),
      level_downsample=float(geometry[bag_features.LEVEL_DOWNSAMPLE]),
      tile_size=int(geometry[bag_features.TILE_SIZE]), mpp=float(geometry[bag_features.MPP]),
      slide_width=int(geometry[bag_features.SLIDE_WIDTH]),
      slide_height=int(geometry[bag_features.SLIDE_HEIGHT]))


# Padding of a per-tile geometry feature, as a tile bag pads (bags/bag_features.py).
_PADDING = {bag_features.TILE_VALID: 0, bag_features.TILE_X: -1, bag_features.TILE_Y: -1,
            bag_features.TILE_TISSUE: 0.0}


def _padded(rows: List[list], width: int, value) -> List[list]:
  return [list(row) + [value] * (width - len(row)) for row in rows]


def predict(model_dir: str, files: Sequence[str], batch_size: int = 16,
            signature: str = signatures.SERVING_DEFAULT) -> EvalPredictions:
  """`signature` of the SavedModel in `model_dir` over the bags in `files`:
  `serving_default` on tile bags, `embedding_bags` on a frozen encoder's
  embedding bags. Bags of different sizes (every-tile bags) come back padded
  to the largest, as tile bags are: attention 0 and tile_valid 0 there."""
  function = tf.saved_model.load(model_dir).signatures[signature]
  outputs: Dict[str, List[np.ndarray]] = {}
  image_ids, providers, labels = [], [], []
  geometry: Dict[str, list] = {name: [] for name in _GEOMETRY}
  # TFX's own ExampleGens gzip their records, ours does not: told by the name.
  compression = "GZIP" if files and files[0].endswith(".gz") else ""
  for batch in tf.data.TFRecordDataset(list(files), compression_type=compression).batch(
      batch_size):
    for key, value in function(**{signatures.EXAMPLES: batch}).items():
      outputs.setdefault(key, []).append(value.numpy())
    for record in batch.numpy():
      feature = tf.train.Example.FromString(record).features.feature
      image_ids.append(feature[bag_features.IMAGE_ID].bytes_list.value[0].decode())
      providers.append(feature[bag_features.DATA_PROVIDER].bytes_list.value[0].decode())
      labels.append(feature[bag_features.LABEL].int64_list.value[0])
      for name, (dtype, per_tile) in _GEOMETRY.items():
        values = _values(feature, name, dtype)
        if name == bag_features.TILE_VALID and bag_features.TILE_VALID not in feature:
          values = [1] * len(feature[bag_features.TILE_X].int64_list.value)  # embedding bag
        geometry[name].append(values if per_tile else values[0])
  if not image_ids:
    raise ValueError(f"no bags in {list(files)}")
  width = max(a.shape[1] for a in outputs[signatures.ATTENTION])
  outputs[signatures.ATTENTION] = [np.pad(a, [(0, 0), (0, width - a.shape[1])])
                                   for a in outputs[signatures.ATTENTION]]
  for name, value in _PADDING.items():
    geometry[name] = _padded(geometry[name], width, value)
  return EvalPredictions(
      image_ids=image_ids, providers=providers, labels=np.array(labels, np.int64),
      grades=np.concatenate(outputs[signatures.GRADE]).astype(int),
      probabilities=np.concatenate(outputs[signatures.PROBABILITIES]),
      attention=np.concatenate(outputs[signatures.ATTENTION]),
      bags=[_bag({name: values[i] for name, values in geometry.items()})
            for i in range(len(image_ids))])


def save(predictions: EvalPredictions, path: str) -> None:
  arrays = {"image_ids": np.array(predictions.image_ids, dtype=str),
            "providers": np.array(predictions.providers, dtype=str),
            "labels": predictions.labels, "grades": predictions.grades,
            "probabilities": predictions.probabilities, "attention": predictions.attention}
  for name, (dtype, _) in _GEOMETRY.items():
    arrays["geometry_" + name] = np.array([getattr(bag, name) for bag in predictions.bags],
                                          dtype=dtype)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())


def load(path: str) -> EvalPredictions:
  with tf.io.gfile.GFile(path, "rb") as f:
    arrays = np.load(io.BytesIO(f.read()), allow_pickle=False)
    geometry = {name: arrays["geometry_" + name] for name in _GEOMETRY}
    count = len(arrays["image_ids"])
    return EvalPredictions(
        image_ids=[str(v) for v in arrays["image_ids"]],
        providers=[str(v) for v in arrays["providers"]],
        labels=arrays["labels"], grades=arrays["grades"],
        probabilities=arrays["probabilities"], attention=arrays["attention"],
        bags=[_bag({name: values[i] for name, values in geometry.items()})
              for i in range(count)])


def eval_split_files(train_files: Sequence[str]) -> List[str]:
  """The files of the Evaluator's split beside the train split's: TFX gives
  the Trainer only the splits it trains and validates on
  (`<examples>/Split-train/*`), and the Examples artifact is the same."""
  patterns = [pattern.replace(f"/{layout.SPLIT_PREFIX}train/",
                              f"/{layout.SPLIT_PREFIX}{layout.EVAL_SPLIT}/")
              for pattern in train_files]
  return sorted(path for pattern in patterns for path in tf.io.gfile.glob(pattern))
