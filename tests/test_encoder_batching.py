"""In-graph batching of the tile encoder (trainer/encoder_batching.py): what
TensorFlow's BatchFunction op does with our settings, and the export built on it.

The probe encoder below returns, for each row, the size of the batch it ran
in: that is the op's own account of the batches it formed (padding included),
read from outside, so the tests see what TensorFlow did rather than what the
code meant to ask for.
"""

import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from histopipe.core import signatures
from histopipe.core.configs import ModelConfig, PipelineConfig, ServingConfig
from histopipe.core.model_contract import ModelContract
from histopipe.trainer import encoder_batching
from tests.test_warmup import TILE_SIZE, TILES_PER_BAG, _bag, _StandInTransformOutput

# Long enough that every thread's request reaches the queue before the batch closes.
PATIENT = 1_000_000


def _probe(images):
  """Each row: the batch size it ran in, and its own value doubled."""
  rows = tf.shape(images)[0]
  return tf.stack([tf.cast(tf.fill([rows], rows), tf.float32), images[:, 0] * 2.0], axis=1)


def _in_threads(calls):
  """Runs each callable in its own thread, all released at once; their results."""
  results, errors = [None] * len(calls), []
  barrier = threading.Barrier(len(calls))

  def run(index):
    barrier.wait()
    try:
      results[index] = calls[index]()
    except Exception as e:  # noqa: BLE001 -- reported below, in the test's thread
      errors.append(e)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors, errors
  return results


def _traced(encode):
  """As a signature calls the encoder: in a graph, batch dimension unknown."""
  return tf.function(encode, input_signature=[tf.TensorSpec([None, 1])])


def _rows(count, start=0.0):
  return tf.reshape(tf.range(start, start + count, dtype=tf.float32), [count, 1])


def test_two_functions_feed_one_queue_and_batches_are_padded_to_an_allowed_size():
  """Six requests of 3-5 rows from two different functions (as two signatures
  call the encoder) run as one batch of their 24 rows, padded to 32."""
  settings = ServingConfig(max_batch_size=32, allowed_batch_sizes=(8, 16, 32),
                           batch_timeout_micros=PATIENT, num_batch_threads=1,
                           max_enqueued_batches=8, max_request_tiles=256)
  encode = encoder_batching.batched(_probe, settings, [2], encoder_batching.queue_name())
  first = tf.function(lambda x: encode(x), input_signature=[tf.TensorSpec([None, 1])])
  second = tf.function(lambda x: encode(x) + 0.0, input_signature=[tf.TensorSpec([None, 1])])
  sizes = [3, 4, 5, 3, 4, 5]
  inputs = [_rows(n, 100.0 * i) for i, n in enumerate(sizes)]
  results = _in_threads([lambda f=(first if i % 2 else second), x=x: f(x).numpy()
                         for i, x in enumerate(inputs)])
  for x, result in zip(inputs, results):
    assert result.shape == (len(x), 2)
    np.testing.assert_array_equal(result[:, 1], x.numpy()[:, 0] * 2.0)  # its own rows back
  assert {float(v) for result in results for v in result[:, 0]} == {32.0}


def test_two_exports_in_one_process_never_run_each_others_encoder():
  """As the Evaluator holds the candidate and the baseline: each its own queue."""
  settings = ServingConfig(max_batch_size=32, allowed_batch_sizes=(),
                           batch_timeout_micros=PATIENT // 10, num_batch_threads=1,
                           max_enqueued_batches=8, max_request_tiles=256)
  doubled = _traced(encoder_batching.batched(_probe, settings, [2],
                                             encoder_batching.queue_name()))
  tripled = _traced(encoder_batching.batched(lambda x: _probe(x) * [1.0, 1.5], settings, [2],
                                             encoder_batching.queue_name()))
  x = _rows(4, 1.0)
  results = _in_threads([lambda: doubled(x).numpy(), lambda: tripled(x).numpy()])
  np.testing.assert_array_equal(results[0][:, 1], x.numpy()[:, 0] * 2.0)
  np.testing.assert_array_equal(results[1][:, 1], x.numpy()[:, 0] * 3.0)
  assert set(results[0][:, 0]) == set(results[1][:, 0]) == {4.0}  # each batch its own


def test_a_lone_request_waits_at_most_the_timeout_and_is_padded_alone():
  settings = ServingConfig(max_batch_size=32, allowed_batch_sizes=(8, 16, 32),
                           batch_timeout_micros=1000, num_batch_threads=1,
                           max_enqueued_batches=8, max_request_tiles=256)
  result = _traced(encoder_batching.batched(_probe, settings, [2], encoder_batching.queue_name()))(_rows(5)).numpy()
  assert set(result[:, 0]) == {8.0}


@pytest.mark.parametrize("allowed,batches", [((8, 16, 32), {32.0, 8.0}),
                                             ((), {32.0, 6.0})])
def test_a_request_larger_than_a_batch_is_split_and_padding_only_to_allowed_sizes(
    allowed, batches):
  """70 rows with batches of at most 32: 32 + 32 + 6, the 6 padded to 8 when
  sizes are given; with none, no padding."""
  settings = ServingConfig(max_batch_size=32, allowed_batch_sizes=allowed,
                           batch_timeout_micros=1000, num_batch_threads=1,
                           max_enqueued_batches=8, max_request_tiles=256)
  x = _rows(70)
  result = _traced(encoder_batching.batched(_probe, settings, [2], encoder_batching.queue_name()))(x).numpy()
  np.testing.assert_array_equal(result[:, 1], x.numpy()[:, 0] * 2.0)
  assert set(result[:, 0]) == batches


def test_a_request_above_max_request_tiles_fails_with_tensorflows_reason():
  settings = ServingConfig(max_batch_size=32, allowed_batch_sizes=(), batch_timeout_micros=0,
                           num_batch_threads=1, max_enqueued_batches=8, max_request_tiles=64)
  with pytest.raises(tf.errors.InvalidArgumentError, match="larger than maximum"):
    _traced(encoder_batching.batched(_probe, settings, [2], encoder_batching.queue_name()))(_rows(65))


def _config(batching: bool) -> PipelineConfig:
  model = ModelConfig(backbone="small_cnn", input_size=TILE_SIZE, dense_units=8,
                      attention_units=4, dropout=0.0)
  return PipelineConfig(model=model, serving=ServingConfig(
      batching=batching, max_batch_size=16, allowed_batch_sizes=(4, 8, 16),
      batch_timeout_micros=20_000, num_batch_threads=1, max_enqueued_batches=64,
      max_request_tiles=1024))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """One model exported twice: its encoder batched, and not."""
  from histopipe.trainer.export import export
  from histopipe.trainer.model import build_mil_model
  tf.keras.utils.set_random_seed(1)
  config = _config(batching=True)
  model = build_mil_model(config.model, tiles_per_slide=TILES_PER_BAG,
                          num_classes=config.num_classes)
  dirs = {}
  for batching in (True, False):
    dirs[batching] = str(tmp_path_factory.mktemp("export") / "1")
    export(model, _StandInTransformOutput(), _config(batching), dirs[batching])
  return dirs


def _batch_function_nodes(export_dir):
  saved = saved_model_pb2.SavedModel.FromString(
      open(f"{export_dir}/saved_model.pb", "rb").read())
  return {function.signature.name: [node for node in function.node_def
                                    if node.op == "BatchFunction"]
          for function in saved.meta_graphs[0].graph_def.library.function}


def test_the_export_runs_its_encoder_in_one_queue_with_the_configured_settings(exports):
  by_function = _batch_function_nodes(exports[True])
  nodes = [node for found in by_function.values() for node in found]
  # serving_default and predict_tiles; not metadata, not transform_features.
  assert len([name for name, found in by_function.items() if found]) >= 2
  (queue,) = {node.attr["shared_name"].s.decode() for node in nodes}
  assert queue.startswith(encoder_batching.QUEUE_SCOPE + "_") and queue.endswith("/batch/")
  settings = _config(True).serving
  for node in nodes:
    assert list(node.attr["allowed_batch_sizes"].list.i) == [4, 8, 16]
    assert node.attr["max_batch_size"].i == settings.max_request_tiles
    assert node.attr["batch_timeout_micros"].i == settings.batch_timeout_micros
    assert node.attr["num_batch_threads"].i == settings.num_batch_threads
    assert node.attr["max_enqueued_batches"].i == settings.max_enqueued_batches
  assert not [node for found in _batch_function_nodes(exports[False]).values()
              for node in found]
  contracts = {batching: ModelContract.from_json(
      tf.saved_model.load(path).signatures[signatures.METADATA](
          **{signatures.METADATA_REQUEST: tf.constant([b""])})[signatures.CONTRACT]
      .numpy().decode()) for batching, path in exports.items()}
  assert contracts[True].serving_batching["allowed_batch_sizes"] == [4, 8, 16]
  assert contracts[False].serving_batching is None


def test_concurrent_requests_through_both_signatures_answer_as_the_unbatched_export(exports):
  """Bags through serving_default and tiles through predict_tiles, from eight
  threads at once on the batched export: each request gets what the
  unbatched export answers it alone."""
  bags = [_bag(seed, 1 + seed % TILES_PER_BAG) for seed in range(8)]
  loaded = {batching: tf.saved_model.load(path) for batching, path in exports.items()}

  def request(model, i):
    if i % 2:
      return model.signatures[signatures.SERVING_DEFAULT](
          **{signatures.EXAMPLES: tf.constant(bags[i:i + 1])})
    tiles = tf.train.Example.FromString(bags[i]).features.feature["tiles"].bytes_list.value
    return model.signatures[signatures.PREDICT_TILES](
        **{signatures.TILES: tf.constant(list(tiles[:1 + i % TILES_PER_BAG]))})

  batched = _in_threads([lambda i=i: request(loaded[True], i) for i in range(len(bags))])
  for i, outputs in enumerate(batched):
    alone = request(loaded[False], i)
    assert sorted(outputs) == sorted(alone)
    for key in alone:
      np.testing.assert_allclose(outputs[key].numpy(), alone[key].numpy(), rtol=0,
                                 atol=1e-5, err_msg=f"request {i}, {key}")
