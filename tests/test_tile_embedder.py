"""The TileEmbedder (components/tile_embedder/): every real tile of every bag
embedded once through Beam's RunInference, each embedding bag holding what
the encoder itself gives on its tiles (TF's SavedModel loader and image
decoder as the reference), in the tile bag's order, with the bag's labels,
coordinates and statistics, in the same splits."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from histopipe.bags import bag_features
from histopipe.core.configs import EmbeddingConfig, PipelineConfig, TilingConfig
from histopipe.core.layout import SLIDE_REPORT_DIR
from histopipe.slides.tiling import tile_slide
from tests.test_frozen_encoders import FEATURES, TILE_SIZE, _model, _save_encoder

FIXED = TilingConfig(tiles_per_slide=40, tile_size=TILE_SIZE, level=1, min_tissue_fraction=0.5)


def _examples_artifact(uri, bags_by_split):
  from tfx.types import standard_artifacts
  examples = standard_artifacts.Examples()
  examples.uri = str(uri)
  examples.split_names = json.dumps(sorted(bags_by_split))
  for split, bags in bags_by_split.items():
    os.makedirs(uri / f"Split-{split}")
    with tf.io.TFRecordWriter(str(uri / f"Split-{split}" / "data_tfrecord-00000-of-00001")) as w:
      for bag in bags:
        w.write(bag)
  os.makedirs(uri / SLIDE_REPORT_DIR)
  (uri / SLIDE_REPORT_DIR / "slides.csv").write_text("image_id,path,status,reason,tiles\n")
  return examples


def _parse(serialized):
  return tf.train.Example.FromString(serialized).features.feature


@pytest.fixture(scope="module")
def embedded(tiny_dataset, tmp_path_factory):
  """Tile bags of 6 slides, fixed-size (padded) in train and every-tile in
  eval, through the executor with batches of 4 to 8 tiles."""
  from tfx.types import standard_artifacts
  from histopipe.components.tile_embedder.component import embedder_settings
  from histopipe.components.tile_embedder.executor import TileEmbedderExecutor
  tmp = tmp_path_factory.mktemp("embedder")
  _, slides = tiny_dataset
  every_tile = dataclasses.replace(FIXED, tiles_per_slide=0)

  def bags(tiling, chosen):
    return [bag_features.serialize_bag(tile_slide(s.path, tiling).bag, s.image_id,
                                       f"p-{s.image_id}", s.data_provider, s.isup_grade,
                                       s.gleason_score)
            for s in chosen]

  tile_bags = {"train": bags(FIXED, slides[:3]), "eval": bags(every_tile, slides[3:6])}
  examples = _examples_artifact(tmp / "examples", tile_bags)
  encoder = _save_encoder(tmp / "encoder")
  config = PipelineConfig(model=_model(encoder),
                          embedding=EmbeddingConfig(min_batch_size=4, max_batch_size=8))
  embeddings = standard_artifacts.Examples()
  embeddings.uri = str(tmp / "embeddings")
  TileEmbedderExecutor().Do({"examples": [examples]}, {"embeddings": [embeddings]},
                            {"config": embedder_settings(config).to_json(),
                             "encoder_digest": "d" * 64})
  written = {split: [r.numpy() for r in tf.data.TFRecordDataset(
      tf.io.gfile.glob(str(tmp / "embeddings" / f"Split-{split}" / "*")))]
      for split in tile_bags}
  return {"tile_bags": tile_bags, "written": written, "artifact": embeddings,
          "encoder": encoder, "uri": tmp / "embeddings"}


def test_each_embedding_is_the_encoders_own_answer_on_its_decoded_tile(embedded):
  signature = tf.saved_model.load(embedded["encoder"]).signatures["serving_default"]
  for split, tile_bags in embedded["tile_bags"].items():
    by_id = {_parse(b)[bag_features.IMAGE_ID].bytes_list.value[0]: _parse(b)
             for b in embedded["written"][split]}
    assert len(by_id) == len(tile_bags)
    for tile_bag in tile_bags:
      source = _parse(tile_bag)
      bag = by_id[source[bag_features.IMAGE_ID].bytes_list.value[0]]
      valid = np.array(source[bag_features.TILE_VALID].int64_list.value, bool)
      tiles = np.array(source[bag_features.TILES].bytes_list.value, object)[valid]
      pixels = tf.stack([tf.cast(tf.io.decode_png(t, channels=3), tf.float32) for t in tiles])
      reference = signature(input_1=pixels / 255.0)["output_0"].numpy()
      assert bag[bag_features.EMBEDDING_SIZE].int64_list.value == [FEATURES]
      embeddings = np.array(bag[bag_features.EMBEDDINGS].float_list.value).reshape(-1, FEATURES)
      np.testing.assert_allclose(embeddings, reference, rtol=1e-5, atol=1e-5)
      for key in (bag_features.TILE_X, bag_features.TILE_Y):
        assert list(bag[key].int64_list.value) == list(
            np.array(source[key].int64_list.value)[valid])
      for key in (bag_features.LABEL, bag_features.PATIENT_ID, bag_features.DATA_PROVIDER,
                  bag_features.GLEASON_SCORE, *bag_features.IMAGE_STATISTICS):
        assert bag[key] == source[key], key
      assert bag_features.TILES not in bag and bag_features.TILE_VALID not in bag


def test_padding_is_dropped_and_every_tile_bags_keep_their_size(embedded):
  sizes = {split: sorted(len(_parse(b)[bag_features.TILE_X].int64_list.value)
                         for b in bags) for split, bags in embedded["written"].items()}
  real = {split: sorted(sum(_parse(b)[bag_features.TILE_VALID].int64_list.value)
                        for b in bags) for split, bags in embedded["tile_bags"].items()}
  assert sizes == real
  assert any(size < FIXED.tiles_per_slide for size in real["train"]), "no padded bag"
  assert len(set(real["eval"])) > 1  # every-tile bags: as many as the slide has


def test_the_output_says_its_encoder_and_keeps_the_slide_report(embedded):
  artifact = embedded["artifact"]
  assert json.loads(artifact.split_names) == ["eval", "train"]
  assert artifact.get_int_custom_property("embedding_size") == FEATURES
  assert artifact.get_string_custom_property("encoder_digest") == "d" * 64
  assert (embedded["uri"] / SLIDE_REPORT_DIR / "slides.csv").exists()
  loaded = tf.saved_model.load(str(embedded["uri"] / "tile_embedding_model"))
  assert list(loaded.signatures) == ["embed_tiles"]
