"""Beam RunInference's model handler for the tile embedding model.

Beam's own TensorFlow handler (`apache_beam.ml.inference.tensorflow_inference`,
TFModelHandlerTensor) cannot be imported beside TFX 1.16: that module imports
tensorflow_hub, and the tensorflow-hub TFX 1.16 pins (>=0.15,<0.16) fails to
import under TF 2.16 (it imports tf.compat.v1.estimator, which 2.16
removed). Its handler would also load with `tf.keras.models.load_model`,
which needs a Keras model, and call it. This handler is what that one does
with an inference function that calls a signature: it loads the
TileEmbedding SavedModel (encoders/tile_embedding.py) once per worker with
TensorFlow's own loader, calls its `embed_tiles` signature on each batch
RunInference forms (BatchElements, between the configured sizes), and
returns one PredictionResult a tile. Wrapped in KeyedModelHandler, the keys
(slide, tile index) travel with the tiles.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from histopipe.encoders.tile_embedding import EMBED_SIGNATURE, EMBEDDINGS, TILES_INPUT


class TileEmbeddingHandler(ModelHandler[bytes, PredictionResult, Any]):
  """Encoded tiles (bytes) -> PredictionResult(tile, its [D] float32 embedding)."""

  def __init__(self, model_path: str, min_batch_size: int, max_batch_size: int):
    self._model_path = model_path
    self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

  def load_model(self):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel (in the worker)
    return tf.saved_model.load(self._model_path).signatures[EMBED_SIGNATURE]

  def run_inference(self, batch: Sequence[bytes], model,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[PredictionResult]:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    embeddings = model(**{TILES_INPUT: tf.constant(list(batch), tf.string)})[EMBEDDINGS].numpy()
    return [PredictionResult(tile, embedding) for tile, embedding in zip(batch, embeddings)]

  def get_num_bytes(self, batch: Sequence[bytes]) -> int:
    return sum(len(tile) for tile in batch)

  def get_metrics_namespace(self) -> str:
    return "TileEmbedder"

  def batch_elements_kwargs(self) -> Dict[str, int]:
    return self._batching
