"""The whole pipeline with a frozen encoder (model.encoder), through the CLI,
on every tissue tile of a dozen tiny slides: SlideExampleGen -> TileEmbedder
-> statistics -> Transform (label counts) -> Trainer (the head alone) ->
Evaluator (on embedding bags) -> DriftCheck -> Pusher -> ModelCard.

Two runs on one output folder, made once: `fresh`, then `head_changed` (the
head's width changed: the tiling and the embeddings come from the cache,
the Trainer runs again). The pushed model is checked against its parts
computed separately: the saved encoder through TF's own loader and decoder,
the embedding bags the TileEmbedder wrote."""

import contextlib
import glob
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from histopipe import cli
from histopipe.bags import bag_features
from histopipe.core import signatures
from histopipe.core.layout import RunPaths
from histopipe.reports import lineage
from tests.test_frozen_encoders import FEATURES, _save_encoder

ENCODER_INPUT = 16  # _PathFoundationLike's input size


def _records(examples_uri: str, split: str):
  files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def _feature(serialized: bytes):
  return tf.train.Example.FromString(serialized).features.feature


class _EncoderRuns:
  def __init__(self, work, encoder):
    self.work, self.out = work, work / "out"
    self.config = {
        "preset": "demo",
        "data": {"train_buckets": 2, "valid_buckets": 1, "eval_buckets": 1},
        "tiling": {"tiles_per_slide": 0, "tile_size": 32, "level": 1,
                   "min_tissue_fraction": 0.25, "max_tiles": 24},
        "model": {"encoder": encoder, "encoder_spec": {"input_size": ENCODER_INPUT},
                  "input_size": ENCODER_INPUT, "dense_units": 16, "attention_units": 8},
        "training": {"epochs": 3, "batch_size": 4, "eval_batch_size": 4},
        "embedding": {"min_batch_size": 4, "max_batch_size": 32},
        # Bless whatever trains, so that the Pusher and the model card run.
        "evaluation": {"min_kappa": -1.0, "max_kappa_drop": 2.0},
    }
    self.done = {}

  def run(self, name: str):
    if name not in self.done:
      if name == "head_changed":
        self.run("fresh")
        self.config["model"]["dense_units"] = 8
      path = self.work / f"{name}.json"
      path.write_text(json.dumps(self.config))
      stdout, stderr = io.StringIO(), io.StringIO()
      with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["run", "--data", str(self.work / "data"), "--out", str(self.out),
                         "--config", str(path)])
      self.done[name] = (code, stdout.getvalue(), stderr.getvalue(),
                         lineage.latest_run(RunPaths(str(self.out)).metadata_path))
    return self.done[name]


@pytest.fixture(scope="module")
def encoder_runs(tiny_dataset, tmp_path_factory):
  source, _ = tiny_dataset
  work = tmp_path_factory.mktemp("encoder_e2e")
  shutil.copytree(source, work / "data")
  return _EncoderRuns(work, _save_encoder(work / "encoder"))


def test_a_frozen_encoder_run_embeds_trains_the_head_and_pushes(encoder_runs):
  code, stdout, stderr, run = encoder_runs.run("fresh")
  assert code == 0, stderr[-3000:]
  assert run.complete and not run.failed_steps
  assert "TileEmbedder" in run.executed_steps
  assert "blessed: yes" in stdout and "pushed to:" in stdout
  embeddings = run.output("TileEmbedder", "embeddings")
  assert embeddings.custom_properties["embedding_size"].int_value == FEATURES


def _served(encoder_runs):
  """The pushed version (the first run's: the second pushes its own beside it)."""
  version = sorted(glob.glob(str(encoder_runs.out / "serving_model" / "*")))[0]
  return tf.saved_model.load(version), version


def test_the_pushed_model_serves_tile_bags_as_the_encoder_then_its_head(encoder_runs):
  """serving_default on the SlideExampleGen's train bags (every tile, of
  different sizes, in one batch) equals: the saved encoder through TF's own
  loader on TF's decoding and area resize of each real tile, then the
  pushed head (predict_embeddings) on those features."""
  _, _, _, run = encoder_runs.run("fresh")
  served, _ = _served(encoder_runs)
  tile_bags = _records(run.output("SlideExampleGen", "examples").uri, "train")
  assert len({len(_feature(b)[bag_features.TILES].bytes_list.value) for b in tile_bags}) > 1
  requests = [bag_features.serialize_request(bag_features.SlideBag(
      tiles=list(_feature(b)[bag_features.TILES].bytes_list.value),
      tile_valid=list(_feature(b)[bag_features.TILE_VALID].int64_list.value), tile_x=[],
      tile_y=[], tile_tissue=[], level=0, level_downsample=1.0, tile_size=0, mpp=0.0,
      slide_width=0, slide_height=0), "eval") for b in tile_bags]
  answers = served.signatures[signatures.SERVING_DEFAULT](examples=tf.constant(requests))
  encoder = tf.saved_model.load(encoder_runs.config["model"]["encoder"]).signatures[
      "serving_default"]
  for index, bag in enumerate(tile_bags):
    tiles = _feature(bag)[bag_features.TILES].bytes_list.value
    pixels = tf.stack([tf.image.resize(tf.cast(tf.io.decode_png(t, channels=3), tf.float32),
                                       [ENCODER_INPUT, ENCODER_INPUT], method="area")
                       for t in tiles])
    tile_features = encoder(input_1=pixels / 255.0)["output_0"]
    separately = served.signatures[signatures.PREDICT_EMBEDDINGS](embeddings=tile_features)
    np.testing.assert_allclose(answers[signatures.PROBABILITIES].numpy()[index],
                               separately[signatures.PROBABILITIES].numpy()[0],
                               rtol=1e-4, atol=1e-5)
    assert answers[signatures.GRADE].numpy()[index] == separately[signatures.GRADE].numpy()[0]


def test_embed_tiles_gives_the_embeddings_the_head_was_trained_on(encoder_runs):
  _, _, _, run = encoder_runs.run("fresh")
  served, _ = _served(encoder_runs)
  tile_bags = {_feature(b)[bag_features.IMAGE_ID].bytes_list.value[0]: b for b in
               _records(run.output("SlideExampleGen", "examples").uri, "train")}
  for embedding_bag in _records(run.output("TileEmbedder", "embeddings").uri, "train")[:3]:
    feature = _feature(embedding_bag)
    tiles = _feature(tile_bags[feature[bag_features.IMAGE_ID].bytes_list.value[0]])[
        bag_features.TILES].bytes_list.value
    embedded = served.signatures[signatures.EMBED_TILES](tiles=tf.constant(list(tiles)))[
        signatures.EMBEDDINGS].numpy()
    np.testing.assert_allclose(
        embedded, np.array(feature[bag_features.EMBEDDINGS].float_list.value).reshape(
            -1, FEATURES), rtol=1e-5, atol=1e-5)


def test_the_evaluator_and_the_card_work_on_the_embeddings(encoder_runs):
  """The Evaluator scored the eval split's embedding bags (TFMA's kappa
  equals sklearn's on the Trainer's kept predictions) and the model card
  names the encoder and its digest."""
  from sklearn.metrics import cohen_kappa_score
  from histopipe.trainer import eval_predictions
  _, stdout, _, run = encoder_runs.run("fresh")
  kept = eval_predictions.load(eval_predictions.path_in_model(run.output("Trainer", "model").uri))
  assert len(kept.image_ids) == len(_records(run.output("TileEmbedder", "embeddings").uri,
                                             "eval"))
  kappa = float(stdout.split("eval quadratic weighted kappa: ")[1].split()[0])
  assert kappa == pytest.approx(cohen_kappa_score(kept.labels, kept.grades, weights="quadratic",
                                                  labels=list(range(6))), abs=1e-3)
  _, version = _served(encoder_runs)
  card = json.loads(open(os.path.join(version, "model_card.json")).read())
  architecture = card["model_parameters"]["model_architecture"]
  contract = json.loads(open(os.path.join(version, "assets.extra",
                                          "histopipe_contract.json")).read())
  assert encoder_runs.config["model"]["encoder"] in architecture
  assert contract["encoder"]["digest"] in architecture


def test_a_new_head_reuses_the_tiles_and_their_embeddings(encoder_runs):
  code, _, stderr, run = encoder_runs.run("head_changed")
  assert code == 0, stderr[-3000:]
  assert {"SlideExampleGen", "TileEmbedder"} <= set(run.cached_steps)
  assert "Trainer" in run.executed_steps


@pytest.mark.parametrize("rest", [False, True])
def test_predict_sends_large_bags_in_chunks_and_gets_the_whole_bags_answer(
    encoder_runs, tmp_path, capsys, rest):
  """`histopipe predict` against the development server: bags over
  serving.chunk_tiles go as embed_tiles chunks then predict_embeddings, and
  each record equals the one for the whole bag in one serving_default call."""
  from unittest import mock
  from histopipe.serving.dev_server import DevServer
  from histopipe.serving.saved_model import LoadedModel
  encoder_runs.run("fresh")
  _, version = _served(encoder_runs)
  slides = sorted(glob.glob(str(encoder_runs.work / "data" / "train_images" / "*")))[:3]
  records, called = {}, {}
  for chunk_tiles in (5, 10 ** 6):
    config = tmp_path / f"chunks-{chunk_tiles}.json"
    config.write_text(json.dumps({"serving": {"chunk_tiles": chunk_tiles}}))
    calls = []
    original = LoadedModel.run

    def counted(model, signature, inputs):
      calls.append(signature)
      return original(model, signature, inputs)

    with DevServer(version, "histopipe", rest_port=0) as server, \
        mock.patch.object(LoadedModel, "run", counted):
      port = server.rest_port if rest else server.port
      assert cli.main(["predict", "--server", f"localhost:{port}", "--config", str(config),
                       *slides] + (["--rest"] if rest else [])) == 0
    records[chunk_tiles] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    called[chunk_tiles] = calls
  sizes = [len(record["attention"]) for record in records[5]]
  chunked_sizes = [size for size in sizes if size > 5]  # smaller bags go whole
  assert chunked_sizes
  assert called[5].count(signatures.EMBED_TILES) == sum(-(-size // 5) for size in chunked_sizes)
  assert called[5].count(signatures.PREDICT_EMBEDDINGS) == len(chunked_sizes)
  assert called[5].count(signatures.SERVING_DEFAULT) == len(sizes) - len(chunked_sizes)
  assert called[10 ** 6].count(signatures.SERVING_DEFAULT) == len(slides)
  for chunked, whole in zip(records[5], records[10 ** 6]):
    assert chunked["grade"] == whole["grade"]
    np.testing.assert_allclose(chunked["probabilities"], whole["probabilities"], atol=1e-5)
    assert [(t["x"], t["y"]) for t in chunked["attention"]] == [
        (t["x"], t["y"]) for t in whole["attention"]]
    np.testing.assert_allclose([t["weight"] for t in chunked["attention"]],
                               [t["weight"] for t in whole["attention"]], atol=1e-5)
