"""`histopipe predict` and `serve-dev`: TF Serving's Predict API over gRPC and REST.

The served model here is a small SavedModel with the pushed model's
`serving_default` interface (serialized bags in; grade, probabilities,
attention out) whose answers are known: grade = number of real tiles mod 6.
The end-to-end test runs `predict` against the pipeline's own pushed model.
"""

import csv
import glob
import io
import json
import os
import shutil
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from histopipe.bags import bag_features
from histopipe import cli
from histopipe.slides.tiling import cut_bag
from histopipe.core.configs import load_config
from histopipe.serving import client as serving_client
from histopipe.serving import slide_predictions
from histopipe.serving.dev_server import DevServer
from tests.conftest import TINY_LEVEL0

TILES = 4
TILING = {"tiles_per_slide": TILES, "tile_size": 32}
# The tiny slides' tiles: 32 px at the middle level (downsample 1024 / 256 = 4),
# 128 px at level 0, on the grid of the 1024 x 768 level 0.
LEVEL0_TILE = 32 * 4


class _CountingModel(tf.Module):
  """grade = real tiles mod 6, probabilities one-hot, attention uniform over real tiles."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve(self, examples):
    parsed = tf.io.parse_example(examples, {
        bag_features.TILES: tf.io.FixedLenFeature([TILES], tf.string),
        bag_features.TILE_VALID: tf.io.FixedLenFeature([TILES], tf.int64)})
    valid = tf.cast(parsed[bag_features.TILE_VALID], tf.float32)
    real = tf.reduce_sum(valid, -1)
    grade = tf.math.floormod(tf.cast(real, tf.int64), 6)
    return {"grade": grade, "probabilities": tf.one_hot(grade, 6),
            "attention": valid / real[:, None]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  base = tmp_path_factory.mktemp("serving_base")
  module = _CountingModel()
  for version in (1, 2):  # the dev server, like TF Serving, serves the latest
    tf.saved_model.save(module, str(base / str(version)),
                        signatures={"serving_default": module.serve})
  return str(base)


@pytest.fixture(scope="module")
def server(model_dir):
  with DevServer(model_dir, "histopipe", rest_port=0) as running:
    yield running


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("predict_config") / "config.json"
  path.write_text(json.dumps({"preset": "demo", "tiling": TILING}))
  return str(path)


def _bag_example(real_tiles: int) -> bytes:
  bag = bag_features.SlideBag(
      tiles=[b"x"] * TILES, tile_valid=[1] * real_tiles + [0] * (TILES - real_tiles),
      tile_x=[0] * TILES, tile_y=[0] * TILES, tile_tissue=[1.0] * TILES, level=1,
      level_downsample=4.0, tile_size=32, mpp=0.0, slide_width=1, slide_height=1)
  return bag_features.serialize_request(bag, "s")


def test_dev_server_answers_a_plain_tensorflow_serving_predict_stub(server):
  """Only tensorflow-serving-api's protos and generated stub, as any TF Serving client."""
  channel = grpc.insecure_channel(f"localhost:{server.port}")
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = "histopipe"
  request.model_spec.signature_name = "serving_default"
  request.inputs["examples"].CopyFrom(
      tf.make_tensor_proto([_bag_example(3), _bag_example(1)], dtype=tf.string))
  response = stub.Predict(request, timeout=10)
  assert response.model_spec.version.value == 2
  assert tf.make_ndarray(response.outputs["grade"]).tolist() == [3, 1]
  np.testing.assert_allclose(tf.make_ndarray(response.outputs["attention"])[0],
                             [1 / 3, 1 / 3, 1 / 3, 0])
  request.model_spec.name = "other"
  with pytest.raises(grpc.RpcError) as error:
    stub.Predict(request, timeout=10)
  assert error.value.code() == grpc.StatusCode.NOT_FOUND
  channel.close()


def test_the_dev_server_runs_sixteen_requests_in_the_model_at_once(model_dir, monkeypatch):
  """Sixteen requests in flight are in the model together, as in TF Serving:
  the model's in-graph batching can only batch what runs at once. Each call
  waits at a barrier of sixteen; a server running fewer at a time never
  fills it, and every call would time out."""
  import threading
  from concurrent import futures
  from histopipe.serving.saved_model import LoadedModel
  together = threading.Barrier(16, timeout=20)
  original = LoadedModel.run

  def run_together(model, signature, inputs):
    together.wait()
    return original(model, signature, inputs)

  monkeypatch.setattr(LoadedModel, "run", run_together)
  with DevServer(model_dir, "histopipe") as running:
    client = serving_client.GrpcPredictClient(f"localhost:{running.port}", "histopipe",
                                              deadline_s=30, retries=1)
    with futures.ThreadPoolExecutor(16) as pool:
      answers = list(pool.map(lambda grade: client.predict(
          {"examples": np.array([_bag_example(grade)], dtype=object)}), [1, 2] * 8))
    client.close()
  assert [int(a["grade"][0]) for a in answers] == [1, 2] * 8


def test_client_reads_metadata_and_names_a_missing_signature(server):
  client = serving_client.GrpcPredictClient(f"localhost:{server.port}", "histopipe")
  assert "serving_default" in client.signatures()
  missing = serving_client.GrpcPredictClient(f"localhost:{server.port}", "histopipe",
                                             signature="predict_tiles")
  with pytest.raises(serving_client.ServingError, match="no signature 'predict_tiles'"):
    missing.signatures()
  wrong_model = serving_client.GrpcPredictClient(f"localhost:{server.port}", "nope")
  with pytest.raises(serving_client.ServingError, match="NOT_FOUND"):
    wrong_model.signatures()


@pytest.mark.parametrize("client_class", [serving_client.GrpcPredictClient,
                                          serving_client.RestPredictClient])
def test_grpc_and_rest_clients_give_the_same_outputs(server, client_class):
  port = server.port if client_class is serving_client.GrpcPredictClient else server.rest_port
  client = client_class(f"localhost:{port}", "histopipe")
  outputs = client.predict({"examples": np.array([_bag_example(2), _bag_example(4)],
                                                 dtype=object)})
  assert outputs["grade"].tolist() == [2, 4]
  np.testing.assert_allclose(outputs["probabilities"], np.eye(6)[[2, 4]])
  client.close()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_retries_with_backoff_then_a_clear_error():
  waits = []
  calls = []

  def flaky():
    calls.append(1)
    if len(calls) < 3:
      raise serving_client._Retryable("UNAVAILABLE: connection refused")
    return "ok"

  assert serving_client.call_with_retries(flaky, "predict", retries=3, backoff_s=0.5,
                                          sleep=waits.append) == "ok"
  assert waits == [0.5, 1.0]
  with pytest.raises(serving_client.ServingError, match="gave up after 3 tries"):
    serving_client.call_with_retries(
        lambda: (_ for _ in ()).throw(serving_client._Retryable("down")), "predict",
        retries=2, backoff_s=0.0, sleep=waits.append)


@pytest.mark.parametrize("rest", [False, True])
def test_predict_says_when_the_server_is_unreachable(tiny_dataset, config_file, capsys, rest):
  _, slides = tiny_dataset
  argv = ["predict", "--server", f"localhost:{_free_port()}", "--config", config_file,
          "--retries", "1", "--deadline", "2", slides[0].path]
  assert cli.main(argv + (["--rest"] if rest else [])) == 2
  error = capsys.readouterr().err
  assert "histopipe predict: error:" in error and "gave up after 2 tries" in error


def test_predict_command_prints_json_lines_and_a_submission_csv(
    server, tiny_dataset, config_file, tmp_path, capsys):
  data, slides = tiny_dataset
  broken = tmp_path / "broken.tiff"
  broken.write_bytes(b"II*\x00not a slide")
  out_csv = tmp_path / "submission.csv"
  assert cli.main(["predict", "--server", f"localhost:{server.port}", "--config", config_file,
                   "--csv", str(out_csv), str(data / "train_images"), str(broken)]) == 0
  captured = capsys.readouterr()
  records = [json.loads(line) for line in captured.out.splitlines()]
  assert len(records) == len(slides) + 1  # every input accounted for
  (rejected,) = [r for r in records if "rejected" in r]
  assert rejected["image_id"] == "broken" and rejected["path"] == str(broken)
  predicted = {r["image_id"]: r for r in records if "rejected" not in r}
  assert set(predicted) == {s.image_id for s in slides}
  for record in predicted.values():
    # The counting model answers with the real tiles it parsed from the request
    # (at most 4, so no wrap at 6) and a uniform attention over them: the
    # record's tiles are those the server was sent.
    grade, tiles = record["grade"], record["attention"]
    assert 1 <= grade <= TILES and len(tiles) == grade, record
    assert all(t["weight"] == pytest.approx(1 / grade, abs=1e-6) for t in tiles)
    # Level-0 positions on the slide's 128 px grid, inside it, each tile once.
    assert all(t["size"] == LEVEL0_TILE for t in tiles)
    assert all(t["x"] % LEVEL0_TILE == 0 and 0 <= t["x"] <= TINY_LEVEL0[0] - LEVEL0_TILE and
               t["y"] % LEVEL0_TILE == 0 and 0 <= t["y"] <= TINY_LEVEL0[1] - LEVEL0_TILE
               for t in tiles), tiles
    assert len({(t["x"], t["y"]) for t in tiles}) == len(tiles)
  rows = list(csv.reader(io.StringIO(out_csv.read_text())))
  assert rows[0] == ["image_id", "isup_grade"]
  assert {r[0]: int(r[1]) for r in rows[1:]} == {k: r["grade"] for k, r in predicted.items()}
  assert f"{len(slides)} predicted, 1 rejected of {len(slides) + 1}" in captured.err


def test_predict_exits_1_when_nothing_was_predicted(server, config_file, tmp_path, capsys):
  """Every slide rejected: the records are written, and the exit status says
  the run produced nothing (a scheduler must not take it for success)."""
  broken = tmp_path / "broken.tiff"
  broken.write_bytes(b"II*\x00not a slide")
  assert cli.main(["predict", "--server", f"localhost:{server.port}", "--config", config_file,
                   str(broken)]) == 1
  captured = capsys.readouterr()
  assert json.loads(captured.out)["rejected"]
  assert "0 predicted, 1 rejected of 1" in captured.err


class _GoneServer:
  """A client whose every call fails as a server gone for good does."""

  def __init__(self):
    self.calls = 0

  def predict(self, inputs):
    self.calls += 1
    raise serving_client.ServingError("predict: gave up after 2 tries (unavailable)")


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_breaker_stops_sending_after_three_failures_in_a_row(tiny_dataset, config_file,
                                                                 concurrency):
  """Every slide is a record, in order; once three slides in a row got no
  answer, no more are sent (with N in flight, at most N - 1 more were
  already on their way)."""
  _, slides = tiny_dataset
  gone = _GoneServer()
  records = list(slide_predictions.predict_slides(
      [s.path for s in slides], gone, load_config(config_file), concurrency=concurrency))
  assert [r["image_id"] for r in records] == [s.image_id for s in slides]
  assert all(r["rejected"].startswith("server: ") for r in records)
  limit = slide_predictions.BREAKER_FAILURES
  assert limit <= gone.calls <= limit + concurrency - 1
  assert sum("not sent" in r["rejected"] for r in records) == len(slides) - gone.calls


def test_predict_exits_1_when_a_slide_got_no_answer(monkeypatch, server, tiny_dataset,
                                                    config_file, capsys):
  from histopipe.serving import slide_predictions as predictions
  _, slides = tiny_dataset
  monkeypatch.setattr(predictions, "predict_to", lambda *a, **k: {
      "predicted": 11, "rejected": 1, "server_failed": 1, "referred": 0})
  assert cli.main(["predict", "--server", f"localhost:{server.port}", "--config", config_file,
                   slides[0].path]) == 1
  assert "1 slide(s) got no answer from the server" in capsys.readouterr().err


def test_rest_predict_command_matches_grpc(server, tiny_dataset, config_file, capsys):
  _, slides = tiny_dataset
  outputs = []
  for flags in ([f"localhost:{server.port}"], [f"localhost:{server.rest_port}", "--rest"]):
    assert cli.main(["predict", "--server", *flags, "--config", config_file,
                     slides[0].path, slides[1].path]) == 0
    outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
  assert outputs[0] == outputs[1]



def test_score_writes_predict_records_for_every_slide_with_beam(
    server, model_dir, tiny_dataset, config_file, tmp_path, capsys):
  data, slides = tiny_dataset
  folder = tmp_path / "slides"
  folder.mkdir()
  for slide in slides[:4]:
    (folder / os.path.basename(slide.path)).symlink_to(slide.path)
  (folder / "broken.tiff").write_bytes(b"II*\x00not a slide")
  out, out_csv = tmp_path / "scores.jsonl", tmp_path / "scores.csv"
  # The model carries training statistics (of all twelve slides' bags), and
  # the config compares even four bags: score writes skew.json beside the records.
  from histopipe.monitoring import drift
  scored_model = tmp_path / "model"
  shutil.copytree(os.path.join(model_dir, "2"), scored_model / "2")
  tiling = load_config(config_file).tiling
  drift.write_statistics(
      drift.statistics_of_frame(drift.frame_of_bags(
          [cut_bag(s.path, "slide", tiling).bag for s in slides])),
      str(scored_model / "2" / "assets.extra" / drift.TRAINING_STATISTICS_FILE))
  config = json.loads(open(config_file).read())
  config["evaluation"] = {"min_drift_bags": 1}
  score_config = tmp_path / "score_config.json"
  score_config.write_text(json.dumps(config))
  assert cli.main(["score", "--model-dir", str(scored_model), "--data", str(folder),
                   "--out", str(out), "--csv", str(out_csv),
                   "--config", str(score_config)]) == 0
  captured = capsys.readouterr()
  assert "4 scored, 1 rejected of 5" in captured.out
  skew = json.loads((tmp_path / "skew.json").read_text())
  assert skew["compared"] and skew["slices"]["All Examples"]["bags"] == 4
  assert skew["slices"]["All Examples"]["baseline_bags"] == len(slides)
  assert f"serving skew: " in captured.out and str(tmp_path / "skew.json") in captured.out
  assert "tiling slides for scoring: 5/5" in captured.err  # progress with a rate
  scored = {r["image_id"]: r for r in map(json.loads, out.read_text().splitlines())}
  assert scored["broken"]["rejected"]
  # The same records as `histopipe predict` gives through the server.
  assert cli.main(["predict", "--server", f"localhost:{server.port}", "--config", config_file,
                   str(folder)]) == 0
  predicted = {r["image_id"]: r for r in map(json.loads,
                                              capsys.readouterr().out.splitlines())}
  # score reads the model folder's training statistics and checks each slide
  # against them; a Predict server serves no such statistics.
  assert all(r["out_of_range"] is None for r in predicted.values() if "rejected" not in r)
  assert all(isinstance(r["out_of_range"], dict) for r in scored.values() if "rejected" not in r)

  def without_range(record):
    return {k: v for k, v in record.items() if k != "out_of_range"}
  assert ({k: without_range(r) for k, r in scored.items()}
          == {k: without_range(r) for k, r in predicted.items()})
  rows = list(csv.reader(io.StringIO(out_csv.read_text())))
  assert rows[0] == ["image_id", "isup_grade"]
  assert sorted(rows[1:]) == sorted([k, str(r["grade"])] for k, r in scored.items()
                                    if "rejected" not in r)


def test_concurrent_predict_keeps_the_input_order_and_the_records(
    server, tiny_dataset, config_file):
  from histopipe.serving.slide_predictions import predict_slides
  _, slides = tiny_dataset
  config = load_config(config_file)
  paths = [slide.path for slide in slides] + ["/no/such/slide.tiff"]
  with serving_client.GrpcPredictClient(f"localhost:{server.port}", "histopipe") as client:
    one_at_a_time = list(predict_slides(paths, client, config))
    counting = _InFlight(client)
    four_at_once = list(predict_slides(paths, counting, config, concurrency=4))
  assert four_at_once == one_at_a_time
  assert [r["image_id"] for r in four_at_once] == [s.image_id for s in slides] + ["slide"]
  assert counting.most > 1, "the requests were not in flight together"


class _InFlight:
  """A client that counts its predict calls in flight at once (each held
  50 ms, so calls made together overlap)."""

  def __init__(self, client):
    import threading
    self.client, self.now, self.most, self.lock = client, 0, 0, threading.Lock()

  def predict(self, inputs):
    import time
    with self.lock:
      self.now += 1
      self.most = max(self.most, self.now)
    try:
      time.sleep(0.05)
      return self.client.predict(inputs)
    finally:
      with self.lock:
        self.now -= 1


def _start_dev_server(model_dir: str, port: int):
  import subprocess
  import sys
  return subprocess.Popen(
      [sys.executable, "-m", "histopipe", "serve-dev", "--model-dir", model_dir,
       "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_predict_survives_a_server_restart_and_loses_no_slide(model_dir, server, tiny_dataset,
                                                             config_file):
  """A real `serve-dev` process is killed (SIGKILL) after the third slide and
  started again on the same port: the client's retries carry the run over,
  and every slide ends as a correct prediction. Then the server is killed
  for good: the remaining slides end as rejected records naming the server,
  and the run still ends."""
  from histopipe.serving.slide_predictions import predict_slides
  _, slides = tiny_dataset
  config = load_config(config_file)
  port = _free_port()
  first = _start_dev_server(model_dir, port)
  second = None
  try:
    patient = serving_client.GrpcPredictClient(f"localhost:{port}", "histopipe",
                                               deadline_s=10, retries=8, backoff_s=0.5)
    patient.signatures()  # waits (retrying) until the server is up
    records = []
    for record in predict_slides([s.path for s in slides], patient, config):
      records.append(record)
      if len(records) == 3:
        first.kill()
        assert first.wait(timeout=30) == -9
        second = _start_dev_server(model_dir, port)
    assert second is not None and second.poll() is None
    assert [r["image_id"] for r in records] == [s.image_id for s in slides]
    assert not [r for r in records if "rejected" in r]
    # The records of a run that no restart disturbed (the module's own server).
    with serving_client.GrpcPredictClient(f"localhost:{server.port}", "histopipe") as steady:
      assert records == list(predict_slides([s.path for s in slides], steady, config))
    # Gone for good: the first BREAKER_FAILURES slides cost their retries,
    # the rest are rejected unsent; every slide is a record.
    second.kill()
    second.wait(timeout=30)
    hasty = serving_client.GrpcPredictClient(f"localhost:{port}", "histopipe",
                                             deadline_s=2, retries=1, backoff_s=0.1)
    tried = slide_predictions.BREAKER_FAILURES
    lost = list(predict_slides([s.path for s in slides[:tried + 2]], hasty, config))
    patient.close()
    hasty.close()
    assert [r["image_id"] for r in lost] == [s.image_id for s in slides[:tried + 2]]
    assert all(r["rejected"].startswith("server: predict") and "gave up after 2 tries"
               in r["rejected"] for r in lost[:tried]), lost
    assert all(r["rejected"].startswith(f"server: not sent: the last {tried} slides got no "
                                        "answer") for r in lost[tried:]), lost
  finally:
    for process in (first, second):
      if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def _written_bags(run_out) -> dict:
  """image_id -> tf.train.Example of every bag SlideExampleGen wrote in a
  `histopipe run` (all splits of its Examples artifact), read with TF's own
  record reader and proto."""
  (examples_uri,) = glob.glob(os.path.join(str(run_out), "pipeline_root", "SlideExampleGen",
                                           "examples", "*"))
  files = sorted(glob.glob(os.path.join(examples_uri, "Split-*", "*")))
  assert files, examples_uri
  bags = {}
  for path in files:
    for record in tf.data.TFRecordDataset(path, "GZIP" if path.endswith(".gz") else ""):
      example = tf.train.Example.FromString(record.numpy())
      (image_id,) = example.features.feature["image_id"].bytes_list.value
      assert image_id.decode() not in bags, image_id
      bags[image_id.decode()] = example
  return bags


def _values(feature):
  return list(getattr(feature, feature.WhichOneof("kind")).value)


def test_the_client_tiles_each_slide_as_slide_example_gen_wrote_it(pcam_run, monkeypatch,
                                                                   capsys):
  """`histopipe predict` against the shared PCam run's pushed model, with the
  settings the model carries: for every patch, the request the client sends
  holds the tiles and tile_valid of the bag SlideExampleGen wrote for it, byte
  for byte; the record's tile positions, size and image statistics are that
  bag's; the answer is the model's own answer to that bag."""
  assert pcam_run.exit_code == 0
  written = _written_bags(pcam_run.out)
  patches = sorted(glob.glob(str(pcam_run.data / "train" / "*.tif")))
  assert len(patches) == len(written) == 40
  sent = {}
  predict = serving_client.GrpcPredictClient.predict

  def recording(self, inputs, signature=None):
    if "examples" in inputs:
      for example in inputs["examples"].tolist():
        request = tf.train.Example.FromString(example)
        (image_id,) = request.features.feature["image_id"].bytes_list.value
        sent[image_id.decode()] = request
    return predict(self, inputs, signature)

  monkeypatch.setattr(serving_client.GrpcPredictClient, "predict", recording)
  with DevServer(str(pcam_run.out / "serving_model"), "histopipe") as running:
    assert cli.main(["predict", "--server", f"localhost:{running.port}",
                     str(pcam_run.data / "train")]) == 0
  records = {r["image_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
  assert set(records) == set(sent) == set(written)
  for image_id, bag in written.items():
    features, request = bag.features.feature, sent[image_id].features.feature
    assert set(request) == {"image_id", "tiles", "tile_valid"}
    assert request["tiles"] == features["tiles"], image_id
    assert request["tile_valid"] == features["tile_valid"], image_id
    valid = _values(features["tile_valid"])
    side = round(_values(features["tile_size"])[0] * _values(features["level_downsample"])[0])
    assert [(t["x"], t["y"], t["size"]) for t in records[image_id]["attention"]] == [
        (x, y, side) for x, y, v in zip(_values(features["tile_x"]), _values(features["tile_y"]),
                                        valid) if v]
    statistics = {name: _values(feature)[0] for name, feature in features.items()
                  if name.startswith("img_")}
    assert statistics and records[image_id]["image_stats"] == {
        name: pytest.approx(value, rel=1e-6, abs=1e-4) for name, value in statistics.items()}
  # The model's own answers to the bags SlideExampleGen wrote.
  (model_dir,) = glob.glob(str(pcam_run.out / "serving_model" / "*"))
  order = sorted(written)
  answers = tf.saved_model.load(model_dir).signatures["serving_default"](
      examples=tf.constant([written[i].SerializeToString() for i in order]))
  for image_id, grade, probabilities in zip(order, answers["grade"].numpy(),
                                            answers["probabilities"].numpy()):
    assert records[image_id]["grade"] == int(grade), image_id
    assert records[image_id]["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-5)
