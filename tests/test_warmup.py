"""TF Serving's warm-up requests: real bags as serving_default Predict requests,
written where TF Serving reads them (assets.extra/tf_serving_warmup_requests)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from histopipe.bags import bag_features
from histopipe.bags.bag_features import SlideBag
from histopipe.core.configs import ModelConfig, PipelineConfig
from histopipe.trainer import features, warmup
from histopipe.trainer.preprocessing import decode_tiles

TILES_PER_BAG = 4
TILE_SIZE = 16


def _bag(seed: int, real_tiles: int) -> bytes:
  """A serialized bag as the SlideExampleGen writes it, with decodable PNG tiles."""
  rng = np.random.default_rng(seed)
  tiles = [tf.io.encode_png(rng.integers(0, 256, (TILE_SIZE, TILE_SIZE, 3), np.uint8)).numpy()
           for _ in range(TILES_PER_BAG)]
  valid = [1] * real_tiles + [0] * (TILES_PER_BAG - real_tiles)
  bag = SlideBag(tiles=tiles, tile_valid=valid, tile_x=list(range(TILES_PER_BAG)),
                 tile_y=[0] * TILES_PER_BAG, tile_tissue=[0.5] * TILES_PER_BAG, level=1,
                 level_downsample=4.0, tile_size=TILE_SIZE, mpp=0.5, slide_width=640,
                 slide_height=480)
  return bag_features.serialize_bag(bag, image_id=f"slide{seed}", patient_id=f"patient{seed}",
                                    data_provider="radboud", label=seed % 6,
                                    gleason_score="3+4")


def _read_logs(path):
  return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(path)]


def test_each_bag_becomes_one_serving_default_request_of_batch_one(tmp_path):
  bags = [_bag(1, 4), _bag(2, 2)]
  path = warmup.write_warmup_requests(str(tmp_path), bags, PipelineConfig().name)
  assert path == os.path.join(str(tmp_path), "assets.extra", "tf_serving_warmup_requests")
  logs = _read_logs(path)
  assert len(logs) == len(bags)
  for log, bag in zip(logs, bags):
    request = log.predict_log.request
    assert request.model_spec.name == "histopipe"  # the name models.config serves
    assert request.model_spec.signature_name == "serving_default"
    assert set(request.inputs) == {"examples"}
    tensor = request.inputs["examples"]
    assert tensor.dtype == tf.string.as_datatype_enum
    assert [d.size for d in tensor.tensor_shape.dim] == [1]
    assert tf.make_ndarray(tensor).tolist() == [bag]


def test_no_bags_or_more_than_tf_serving_reads_are_refused(tmp_path):
  with pytest.raises(ValueError, match="no bags"):
    warmup.write_warmup_requests(str(tmp_path), [], "histopipe")
  with pytest.raises(ValueError, match="at most 1000"):
    warmup.write_warmup_requests(str(tmp_path), [b""] * 1001, "histopipe")
  assert not os.path.exists(os.path.join(str(tmp_path), "assets.extra"))


@pytest.mark.parametrize("suffix,compression", [("", ""), (".gz", "GZIP")])
def test_first_bags_reads_the_split_files_and_keeps_only_the_model_inputs(
    tmp_path, suffix, compression):
  bags = [_bag(seed, 3) for seed in range(3)]
  split = tmp_path / "Split-eval"
  split.mkdir()
  for shard, shard_bags in enumerate((bags[:2], bags[2:])):
    with tf.io.TFRecordWriter(str(split / f"data_tfrecord-0000{shard}-of-00002{suffix}"),
                              compression) as writer:
      for bag in shard_bags:
        writer.write(bag)
  # A Trainer's eval_files: a list of patterns.
  chosen = warmup.first_bags([str(split / "*")], count=2)
  assert len(chosen) == 2
  spec = {"tiles": tf.io.FixedLenFeature([TILES_PER_BAG], tf.string),
          "tile_valid": tf.io.FixedLenFeature([TILES_PER_BAG], tf.int64)}
  for request, bag in zip(chosen, bags):
    kept = tf.train.Example.FromString(request).features.feature
    # What a client must send: the encoded tiles and which of them are real;
    # no image or patient id, provider, label, Gleason score, coordinates or statistics.
    assert set(kept) == {"tiles", "tile_valid"}
    original = tf.train.Example.FromString(bag).features.feature
    assert {"image_id", "patient_id", "label", "gleason_score"} <= set(original)
    for key in ("tiles", "tile_valid"):
      assert kept[key] == original[key], key
    assert {key: value.numpy().tolist() for key, value in
            tf.io.parse_single_example(request, spec).items()} == \
        {key: value.numpy().tolist() for key, value in
         tf.io.parse_single_example(bag, spec).items()}
  assert len(warmup.first_bags(str(split / "*"), count=10)) == 3


class _StandInTransformLayer(tf.Module):
  """The Transform's layer without a Transform run: decode and scale to 0..1."""

  def __call__(self, raw):
    # The real layer returns static shapes whatever its input's (predict_tiles pads).
    encoded = tf.ensure_shape(raw[bag_features.TILES], [None, TILES_PER_BAG])
    return {features.TILES_XF: decode_tiles(encoded, TILE_SIZE) / 255.0,
            features.TILE_VALID_XF: tf.cast(raw[bag_features.TILE_VALID], tf.float32)}


class _StandInTransformOutput:
  """What export() asks of a TFTransformOutput."""

  def transform_features_layer(self):
    return _StandInTransformLayer()

  def raw_feature_spec(self):
    return {bag_features.TILES: tf.io.FixedLenFeature([TILES_PER_BAG], tf.string),
            bag_features.TILE_VALID: tf.io.FixedLenFeature([TILES_PER_BAG], tf.int64)}


def test_exported_model_carries_warmup_requests_its_serving_default_answers(tmp_path):
  """What TF Serving does at load: replay each request against the signature."""
  from histopipe.trainer.model import build_mil_model
  from histopipe.trainer.export import export
  model_config = ModelConfig(backbone="small_cnn", input_size=TILE_SIZE, dense_units=8,
                             attention_units=4, dropout=0.0)
  config = PipelineConfig(model=model_config)
  model = build_mil_model(model_config, tiles_per_slide=TILES_PER_BAG,
                          num_classes=config.num_classes)
  export_dir = str(tmp_path / "1")
  bags = [warmup.model_inputs_only(_bag(seed, seed + 1)) for seed in range(2)]
  export(model, _StandInTransformOutput(), config, export_dir, warmup_bags=bags)

  logs = _read_logs(os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests"))
  assert len(logs) == 2
  serve = tf.saved_model.load(export_dir).signatures["serving_default"]
  for log, bag in zip(logs, bags):
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["examples"]).tolist() == [bag]
    outputs = serve(**{name: tf.constant(tf.make_ndarray(tensor))
                       for name, tensor in request.inputs.items()})
    assert outputs["grade"].shape == [1]
    assert outputs["attention"].shape == [1, TILES_PER_BAG]
