"""Whole pipeline runs on a handful of tiny slides, through the CLI.

The slow tests of the suite. One output folder sees five runs, made once
(each when a test first needs it, in this order) and shared by the tests:

  fresh          every component runs; the model is blessed and pushed
  strict_gate    a kappa floor no model reaches: only the Evaluator and the
                 Pusher run, nothing is pushed
  unchanged      the same settings again: no component runs
  epochs_failed  `training.epochs` changed and the Evaluator made to fail:
                 the tiling, statistics and Transform come from the cache,
                 the Trainer runs, the run fails
  label_edited   one label of train.csv changed and the Trainer made to fail:
                 the SlideExampleGen and every step below it run again

What ran is read from ML Metadata (lineage), never from timings.
"""

import contextlib
import dataclasses
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from histopipe import cli
from histopipe.bags import bag_features
from histopipe.core import storage
from histopipe.core.layout import RunPaths
from histopipe.reports import lineage
from tests.conftest import upload

TILING_AND_STATISTICS = ["SlideExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                         "Transform"]


@dataclasses.dataclass
class Ran:
  """One `histopipe run`: what it printed and what ML Metadata says ran."""
  exit_code: int
  stdout: str
  stderr: str
  run: lineage.Run


def _eval_bags(examples_uri: str, split: str = "eval") -> List[tf.Tensor]:
  """The serialized bags of one split (uncompressed TFRecord files)."""
  files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
  assert files and not any(f.endswith(".gz") for f in files)
  return list(tf.data.TFRecordDataset(files))


class _Runs:
  ORDER = ["fresh", "strict_gate", "unchanged", "epochs_failed", "label_edited"]

  def __init__(self, work, data_url, slides):
    self.work, self.slides = work, slides
    self.data, self.out = data_url, work / "out"
    self.config: Dict = {
        "preset": "demo",
        "data": {"train_buckets": 2, "valid_buckets": 1, "eval_buckets": 1},
        "tiling": {"tiles_per_slide": 4, "tile_size": 32},
        "model": {"input_size": 32, "dense_units": 16, "attention_units": 8},
        "training": {"epochs": 1, "batch_size": 4, "eval_batch_size": 4},
        # Bless whatever trains, so the first run exercises the Pusher.
        "evaluation": {"min_kappa": -1.0, "max_kappa_drop": 2.0},
    }
    self.config_path = work / "config.json"
    self.done: Dict[str, Ran] = {}

  def get(self, name: str) -> Ran:
    for step in self.ORDER[:self.ORDER.index(name) + 1]:
      if step not in self.done:
        self.done[step] = getattr(self, "_" + step)()
    return self.done[name]

  def _run(self) -> Ran:
    self.config_path.write_text(json.dumps(self.config))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      code = cli.main(["run", "--data", self.data, "--out", str(self.out),
                       "--config", str(self.config_path)])
    return Ran(code, stdout.getvalue(), stderr.getvalue(),
               lineage.latest_run(RunPaths(str(self.out)).metadata_path))

  def _fresh(self) -> Ran:
    return self._run()

  def _strict_gate(self) -> Ran:
    # Drift compared even on these few bags (against the first run's model).
    self.config["evaluation"] = {"min_kappa": 2.0, "max_kappa_drop": 2.0,
                                 "min_drift_bags": 1}
    return self._run()

  def _unchanged(self) -> Ran:
    return self._run()

  def _epochs_failed(self) -> Ran:
    from tfx.components.evaluator import executor as evaluator_executor
    self.config["training"]["epochs"] = 2
    with mock.patch.object(evaluator_executor.Executor, "Do",
                           side_effect=RuntimeError("injected: the Evaluator fails")):
      return self._run()

  def _label_edited(self) -> Ran:
    from tfx.components.trainer import executor as trainer_executor
    labels_url = f"{self.data}/train.csv"
    labels = storage.read_bytes(labels_url).decode().splitlines()
    image_id, provider, grade, gleason = labels[1].split(",")
    labels[1] = ",".join([image_id, provider, str((int(grade) + 1) % 6), gleason])
    storage.write_text(labels_url, "\n".join(labels) + "\n")
    with mock.patch.object(trainer_executor.GenericExecutor, "Do",
                           side_effect=RuntimeError("injected: the Trainer fails")):
      return self._run()


@pytest.fixture(scope="module")
def runs(tiny_dataset, gcs_bucket, tmp_path_factory):
  """The slides and labels are in a bucket (a GCS API server on localhost);
  the run's outputs are local."""
  source, slides = tiny_dataset
  work = tmp_path_factory.mktemp("e2e")
  shutil.copytree(source, work / "data")
  (work / "data" / "train_images" / "corrupt.tiff").write_bytes(b"II*\x00garbage")
  with open(work / "data" / "train.csv", "a") as f:
    f.write("corrupt,radboud,2,3+4\n")
  return _Runs(work, upload(work / "data", f"{gcs_bucket}/e2e-data"), slides)


def _in_bucket(runs, slide) -> str:
  return f"{runs.data}/train_images/{os.path.basename(slide.path)}"


def test_pipeline_runs_end_to_end_and_pushes_a_servable_model(runs):
  fresh = runs.get("fresh")
  assert fresh.exit_code == 0, fresh.stderr
  printed, slides, out = fresh.stdout, runs.slides, runs.out
  assert f"slides: {len(slides)} tiled, 1 rejected of {len(slides) + 1}" in printed
  assert "eval quadratic weighted kappa:" in printed
  assert "eval cancer vs benign ROC AUC:" in printed
  assert "blessed: yes" in printed
  assert "input drift: not checked (no earlier model's training statistics)" in printed
  assert "\nreferral: " in printed
  assert "from the cache" not in printed
  assert fresh.run.complete and not fresh.run.cached_steps
  # The model carries the image statistics of its training bags, by provider.
  from histopipe.monitoring import drift
  model_uri = fresh.run.output("Trainer", "model").uri
  training = drift.model_training_statistics(os.path.join(model_uri, "Format-Serving"))
  assert training.datasets[0].name == drift.ALL_BAGS
  assert {d.name for d in training.datasets[1:]} <= {drift.slice_name(p)
                                                     for p in ("radboud", "karolinska")}
  assert training.datasets[0].num_examples == len(_eval_bags(
      fresh.run.output("SlideExampleGen", "examples").uri, "train"))
  # The model card, next to the pushed version: model-card-toolkit's schema,
  # this run's slides, rejects, metrics and ML Metadata ids, and the data's
  # synthetic origin said plainly.
  import jsonschema
  from histopipe.components.model_card import card as model_card
  (pushed_dir,) = glob.glob(str(out / "serving_model" / "*"))
  card = json.loads(open(os.path.join(pushed_dir, "model_card.json")).read())
  with open(model_card.SCHEMA_FILE) as f:
    jsonschema.validate(card, json.load(f))
  assert card["model_details"]["version"]["name"] == os.path.basename(pushed_dir)
  examples = fresh.run.output("SlideExampleGen", "examples")
  assert sum(sum(per.values()) for per in card["model_parameters"]["slides_per_split"].values()
             ) == len(slides)
  assert card["model_parameters"]["slides_per_split"]["eval"] and sum(
      card["model_parameters"]["slides_per_split"]["eval"].values()) == len(
          _eval_bags(examples.uri))
  assert sum(card["model_parameters"]["rejected_slides"].values()) == 1
  kappa = [m for m in card["quantitative_analysis"]["performance_metrics"]
           if m["slice"] == "overall" and m["type"] == "kappa"]
  assert kappa and f"eval quadratic weighted kappa: {float(kappa[0]['value']):.3f}" in printed
  lineage = card["model_details"]["lineage"]
  assert lineage["examples artifact id"] == examples.id
  assert lineage["model artifact id"] == fresh.run.output("Trainer", "model").id
  assert any("SYNTHETIC" in l["description"] for l in card["considerations"]["limitations"])
  assert card["quantitative_analysis"]["referral"]["metric"] == "kappa"
  page = open(os.path.join(pushed_dir, "model_card.html")).read()
  assert "SYNTHETIC" in page and "referral" in page.lower()
  assert f"model card: {os.path.join(pushed_dir, 'model_card.html')}" in printed
  # StatisticsGen sees the image statistics, sliced by provider.
  statistics_uri = fresh.run.output("StatisticsGen", "statistics").uri
  import tensorflow_data_validation as tfdv
  statistics = tfdv.load_stats_binary(os.path.join(statistics_uri, "Split-train",
                                                   "FeatureStats.pb"))
  assert {d.name for d in statistics.datasets} >= {"All Examples"}
  assert len(statistics.datasets) > 1
  names = {f.path.step[0] for f in statistics.datasets[0].features}
  assert set(drift.bag_features.IMAGE_STATISTICS) <= names
  # A person sees one line per component; the libraries' logs are in run.log.
  # First, the one listing of the data folder (in the bucket): how many files, how long.
  listed, *progress = fresh.stderr.splitlines()
  assert re.fullmatch(rf"listed \d+ files in {re.escape(runs.data)} in [\d.]+ s", listed), listed
  assert progress[0] == "[1/11] SlideExampleGen ..." and "[1/11] SlideExampleGen: done in" in progress[1]
  assert all(line.startswith("[") for line in progress), progress
  assert "Trainer" in (out / "run.log").read_text()

  pushed = glob.glob(str(out / "serving_model" / "*" / "saved_model.pb"))
  assert len(pushed) == 1, "TF Serving layout: <base>/<version>/saved_model.pb"
  model_dir = os.path.dirname(pushed[0])
  assert f"pushed to: {model_dir}" in printed
  assert os.path.basename(model_dir).isdigit()

  examples_uri = fresh.run.output("SlideExampleGen", "examples").uri
  rejects = os.path.join(examples_uri, "slide_report", "rejects.csv")
  assert "corrupt," in open(rejects).read()

  cli_show = subprocess.run(
      [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show",
       "--dir", model_dir, "--tag_set", "serve", "--signature_def", "serving_default"],
      capture_output=True, text=True, check=True).stdout
  assert "inputs['examples'] tensor_info:" in cli_show and "DT_STRING" in cli_show
  for output in ("grade", "probabilities", "attention"):
    assert f"outputs['{output}']" in cli_show

  serialized = _eval_bags(examples_uri)[:2]
  loaded = tf.saved_model.load(model_dir)
  outputs = loaded.signatures["serving_default"](examples=tf.stack(serialized))
  probabilities = outputs["probabilities"].numpy()
  assert probabilities.shape == (len(serialized), 6)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
  assert outputs["attention"].shape == (len(serialized), 4)
  assert set(outputs["grade"].numpy().tolist()) <= set(range(6))
  # No augmentation or dropout at serving: the same bags give the same answer.
  repeat = loaded.signatures["serving_default"](examples=tf.stack(serialized))
  np.testing.assert_array_equal(repeat["probabilities"].numpy(), probabilities)

  # predict_tiles: a client sends the valid tiles of one bag, no tf.Example.
  features = tf.train.Example.FromString(serialized[0].numpy()).features.feature
  valid_tiles = [t for t, v in zip(features[bag_features.TILES].bytes_list.value,
                                   features[bag_features.TILE_VALID].int64_list.value) if v]
  by_tiles = loaded.signatures["predict_tiles"](tiles=tf.constant(valid_tiles))
  np.testing.assert_allclose(by_tiles["probabilities"].numpy()[0], probabilities[0],
                             atol=1e-5)

  # TF's own tool runs both user-facing signatures from files.
  inputs = os.path.join(model_dir, "..", "inputs.npz")
  np.savez(inputs, examples=np.array([s.numpy() for s in serialized], dtype=object),
           tiles=np.array(valid_tiles, dtype=object))
  for signature, key in (("serving_default", "examples"), ("predict_tiles", "tiles")):
    ran = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "run",
         "--dir", model_dir, "--tag_set", "serve", "--signature_def", signature,
         "--inputs", f"{key}={inputs}[{key}]"],
        capture_output=True, text=True, check=True).stdout
    assert "Result for output key probabilities:" in ran
  os.remove(inputs)

  # Serving needs only the tiles: a client's bag without label or metadata works.
  bare = tf.train.Example()
  for key in (bag_features.TILES, bag_features.TILE_VALID):
    bare.features.feature[key].CopyFrom(features[key])
  again = loaded.signatures["serving_default"](
      examples=tf.constant([bare.SerializeToString()]))
  np.testing.assert_allclose(again["probabilities"].numpy()[0], probabilities[0], atol=1e-5)


def test_predict_against_the_pushed_model_on_the_dev_server(runs, capsys):
  """`histopipe predict` tiles the slides itself and gets what the model gives
  for the SlideExampleGen's bag of the same slide."""
  from histopipe.serving.dev_server import DevServer
  fresh = runs.get("fresh")
  bags = {}
  examples_uri = fresh.run.output("SlideExampleGen", "examples").uri
  for split in ("train", "valid", "eval"):
    for record in _eval_bags(examples_uri, split):
      example = tf.train.Example.FromString(record.numpy())
      bags[example.features.feature[bag_features.IMAGE_ID].bytes_list.value[0].decode()] = record
  chosen = [s for s in runs.slides if s.image_id in bags][:3]
  with DevServer(str(runs.out / "serving_model"), "histopipe", rest_port=0) as server:
    # No --preset/--config/--format: the model says how it was trained.
    assert cli.main(["predict", "--server", f"localhost:{server.port}",
                     *[_in_bucket(runs, s) for s in chosen]]) == 0
    printed = capsys.readouterr()
    records = [json.loads(line) for line in printed.out.splitlines()]
    # Each slide checked against the training ranges the served contract carries:
    # the ranges, from the statistics of the model's training bags, and the verdict.
    from histopipe.monitoring import drift, slide_skew
    model_uri = fresh.run.output("Trainer", "model").uri
    ranges = slide_skew.training_ranges(drift.model_training_statistics(
        os.path.join(model_uri, "Format-Serving")))
    assert ranges and set(ranges) == set(bag_features.IMAGE_STATISTICS)
    for record in records:
      assert record["out_of_range"] == slide_skew.out_of_range(record["image_stats"], ranges)
    assert re.search(rf"per-slide skew: \d+ of {len(chosen)} slides outside the training range",
                     printed.err), printed.err
    # A flag that contradicts the model stops the command, saying why.
    assert cli.main(["predict", "--server", f"localhost:{server.port}", "--preset", "full",
                     chosen[0].path]) == 2
    error = capsys.readouterr().err
    assert "tiling.tile_size: the model was trained with 32, the flags give 256" in error
    # Any TF Serving client reads the contract with one Predict call (gRPC and REST).
    from histopipe.serving.client import GrpcPredictClient, RestPredictClient
    with GrpcPredictClient(f"localhost:{server.port}", "histopipe") as grpc_client:
      served = grpc_client.contract()
    with RestPredictClient(f"localhost:{server.rest_port}", "histopipe") as rest_client:
      assert rest_client.contract() == served
    model = tf.saved_model.load(server.model.path)
  assert served.tiles_per_bag == 4 and served.tiling.tile_size == 32
  assert served.format == "panda" and served.task == "isup" and served.input_size == 32
  from histopipe.serving.saved_model import read_contract
  assert read_contract(str(runs.out / "serving_model")) == served
  assert [r["image_id"] for r in records] == [s.image_id for s in chosen]
  expected = model.signatures["serving_default"](
      examples=tf.stack([bags[s.image_id] for s in chosen]))
  for record, grade, probabilities in zip(records, expected["grade"].numpy(),
                                          expected["probabilities"].numpy()):
    assert record["grade"] == grade
    np.testing.assert_allclose(record["probabilities"], probabilities, atol=1e-5)
    assert abs(sum(t["weight"] for t in record["attention"]) - 1.0) < 1e-4
    # Referral: the mass off the predicted grade, against the contract's threshold.
    assert record["uncertainty"] == pytest.approx(1 - probabilities[grade], abs=1e-5)
    assert record["refer"] == (record["uncertainty"] > served.referral["threshold"])


def test_explain_draws_one_slide_and_gives_predicts_record(runs, tmp_path, capsys):
  runs.get("fresh")
  png = tmp_path / "heatmap.png"
  slide = runs.slides[0]
  assert cli.main(["explain", _in_bucket(runs, slide), "--run", str(runs.out),
                   "--out", str(png)]) == 0
  record = json.loads(capsys.readouterr().out)
  assert record["image_id"] == slide.image_id and 0 <= record["grade"] <= 5
  assert len(record["attention"]) >= 1
  import matplotlib.image
  image = matplotlib.image.imread(str(png))
  assert image.ndim == 3 and image.shape[0] > 100


def test_score_reads_the_bucket_and_agrees_with_predict(runs, tmp_path, capsys):
  """Beam scoring of every slide in the bucket with the pushed model, no flags."""
  runs.get("fresh")
  out = tmp_path / "scores.jsonl"
  assert cli.main(["score", "--model-dir", str(runs.out / "serving_model"),
                   "--data", f"{runs.data}/train_images", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  records = {r["image_id"]: r for r in map(json.loads, out.read_text().splitlines())}
  referred = sum(bool(r.get("refer")) for r in records.values())
  assert f"{len(runs.slides)} scored ({referred} referred), 1 rejected" in printed
  # Written beside the records, checked against the model's training statistics.
  assert "serving skew: " in printed and (tmp_path / "skew.json").exists()
  assert records["corrupt"]["rejected"]  # the reason, as predict gives it
  from histopipe.serving.dev_server import DevServer
  with DevServer(str(runs.out / "serving_model"), "histopipe") as server:
    slide = runs.slides[0]
    assert cli.main(["predict", "--server", f"localhost:{server.port}",
                     _in_bucket(runs, slide)]) == 0
    (predicted,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  np.testing.assert_allclose(records[slide.image_id]["probabilities"],
                             predicted["probabilities"], atol=1e-5)


def test_a_model_below_the_gate_is_not_pushed_and_the_summary_says_why(runs):
  """Only the gate changed: the Evaluator and the Pusher run, the rest is reused."""
  pushed_before = sorted(glob.glob(str(runs.out / "serving_model" / "*")))
  strict = runs.get("strict_gate")
  assert strict.exit_code == 0, strict.stderr
  printed = strict.stdout
  assert "blessed: no" in printed
  assert "pushed: no (model not blessed)" in printed
  (gate_line,) = [line for line in printed.splitlines() if line.strip().startswith("gate:")]
  assert "kappa" in gate_line and "below the threshold 2.000" in gate_line
  assert sorted(glob.glob(str(runs.out / "serving_model" / "*"))) == pushed_before
  assert set(strict.run.executed_steps) == {"Evaluator", "DriftCheck", "Pusher", "ModelCard"}
  # The same bags as the model it is compared with was trained on (and more):
  # the drift check ran against that model's training statistics.
  (drift_line,) = [line for line in printed.splitlines() if line.startswith("input drift:")]
  assert "Jensen-Shannon divergence" in drift_line, drift_line
  report = strict.run.output("DriftCheck", "drift_report")
  written = json.loads(open(os.path.join(report.uri, "drift.json")).read())
  fresh_model = runs.get("fresh").run.output("Trainer", "model").uri
  assert written["compared"] and written["baseline"] == fresh_model
  assert written["slices"]["All Examples"]["baseline_bags"] < written["slices"][
      "All Examples"]["bags"]  # the training split only, against every split
  assert set(TILING_AND_STATISTICS + ["Trainer"]) <= set(strict.run.cached_steps)
  assert "from the cache" in printed and "Trainer" in printed
  # The same model as the first run: the cache hands over the Trainer's artifact.
  assert (strict.run.output("Trainer", "model").uri ==
          runs.get("fresh").run.output("Trainer", "model").uri)


def test_an_unchanged_run_executes_no_component(runs):
  unchanged = runs.get("unchanged")
  assert unchanged.exit_code == 0, unchanged.stderr
  assert unchanged.run.complete
  assert unchanged.run.executed_steps == []
  assert set(TILING_AND_STATISTICS + ["Trainer", "Evaluator", "Pusher"]) <= set(
      unchanged.run.cached_steps)
  assert "SlideExampleGen: cached" in unchanged.stderr
  assert "blessed: no" in unchanged.stdout  # the strict gate's verdict, reused


def test_changing_epochs_reuses_the_tiling_and_transform_and_reruns_the_trainer(runs):
  failed = runs.get("epochs_failed")
  assert failed.exit_code == 1
  (message,) = failed.stderr.strip().splitlines()[-1:]
  assert message.startswith("histopipe run: failed in Evaluator: RuntimeError: injected")
  assert "run.log" in message
  assert set(TILING_AND_STATISTICS) <= set(failed.run.cached_steps)
  assert "Trainer" in failed.run.executed_steps
  assert failed.run.failed_steps == ["Evaluator"] and not failed.run.complete


def test_the_report_describes_the_last_complete_run_after_a_failed_one(runs, capsys):
  """Run `epochs_failed` trained a new model and failed in the Evaluator: the
  report is still of the `unchanged` run, its model with its examples."""
  from histopipe.reports import run_report, run_summary
  runs.get("epochs_failed")
  unchanged = runs.get("unchanged").run
  from histopipe.trainer import eval_predictions
  # The model's predictions come from what the Trainer kept: the report runs no model.
  with mock.patch.object(eval_predictions, "predict",
                         side_effect=AssertionError("the report ran the model")):
    assert cli.main(["report", "--run", str(runs.out)]) == 0
  printed = capsys.readouterr()
  index = runs.out / "report" / "index.html"
  # One line for the person; TensorFlow's and TFMA's logging went to report.log.
  assert printed.out == f"report: {index}\n" and "WARNING" not in printed.err
  assert "INFO" in (runs.out / "report.log").read_text()
  page = index.read_text()
  assert unchanged.run_id in page
  assert runs.get("epochs_failed").run.run_id in page  # named as newer, incomplete
  assert "blessed: no" in page and "below the threshold 2.000" in page
  for figure in ["confusion.png"] + re.findall(r'src="(attention_[^"]+\.png)"', page):
    assert (runs.out / "report" / figure).stat().st_size > 1000, figure
  assert re.findall(r'src="(attention_[^"]+\.png)"', page), "attention heatmaps drawn"

  summary = run_summary.summarize(RunPaths(str(runs.out)), complete=True)
  assert summary.run_id == unchanged.run_id
  assert summary.model_uri == unchanged.output("Trainer", "model").uri
  assert summary.model_uri != runs.get("epochs_failed").run.output("Trainer", "model").uri
  # The report's predictions are the ones TFMA judged: same kappa on the same split.
  predictions = run_report.eval_split_predictions(summary.model_uri, summary.examples_uri)
  assert len(predictions.labels) == summary.eval_metrics["example_count"]
  # And what the exported signature gives on the eval bags now.
  again = eval_predictions.predict(os.path.join(summary.model_uri, "Format-Serving"),
                                   sorted(glob.glob(os.path.join(summary.examples_uri,
                                                                 "Split-eval", "*"))))
  assert predictions.image_ids == again.image_ids
  np.testing.assert_array_equal(predictions.grades, again.grades)
  np.testing.assert_allclose(predictions.probabilities, again.probabilities, atol=1e-6)
  assert [b.tile_x for b in predictions.bags] == [b.tile_x for b in again.bags]
  ours = run_report.slice_metrics(predictions, 6)["overall"]
  assert ours["kappa"] == pytest.approx(summary.eval_metrics["kappa"], abs=1e-4)
  assert ours["accuracy"] == pytest.approx(summary.eval_metrics["accuracy"], abs=1e-4)


def test_editing_one_label_reruns_the_example_gen_and_every_step_below(runs):
  edited = runs.get("label_edited")
  assert edited.exit_code == 1
  assert "failed in Trainer" in edited.stderr
  assert set(TILING_AND_STATISTICS) <= set(edited.run.executed_steps)
  assert not set(TILING_AND_STATISTICS) & set(edited.run.cached_steps)
  assert edited.run.failed_steps == ["Trainer"]
  before = runs.get("unchanged").run.output("SlideExampleGen", "examples")
  after = edited.run.output("SlideExampleGen", "examples")
  assert after.uri != before.uri


def _sorted(frame):
  return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def _means_by_slice(statistics):
  return {d.name: (d.num_examples, {f.path.step[0]: round(f.num_stats.mean, 4)
                                    for f in d.features}) for d in statistics.datasets}


def _examples_artifact(uri, recorded):
  """A TFX Examples artifact at `uri` with the splits ML Metadata recorded."""
  from tfx.types import standard_artifacts
  artifact = standard_artifacts.Examples()
  artifact.uri = uri
  artifact.split_names = recorded.properties["split_names"].string_value
  return artifact


def test_drift_card_trainer_and_report_read_the_bag_statistics_not_the_bags(runs, tmp_path):
  """DriftCheck, the Trainer's training statistics, ModelCard and the report
  take each bag's image statistics from the tables the SlideExampleGen wrote
  beside the bags: the numbers the bags themselves give (read here as the
  code before the tables read them, through TF's TFRecord reader and the
  tf.Example proto), and nothing opens a bag: in a copy of the Examples whose
  record files are garbage, they give the same again."""
  from histopipe.components.model_card.executor import slides_per_split
  from histopipe.monitoring import drift
  from histopipe.reports import run_report, run_summary
  fresh = runs.get("fresh")
  examples = fresh.run.output("SlideExampleGen", "examples")
  splits = ["train", "valid", "eval"]
  from_bags = {split: drift.frame_of_examples(drift.read_serialized_bags(
      [os.path.join(examples.uri, f"Split-{split}", "*")])) for split in splits}
  everything = pd.concat(from_bags.values(), ignore_index=True)
  # DriftCheck's statistics of this run's bags, and the Trainer's of its training bags.
  drift_uri = fresh.run.output("DriftCheck", "drift_report").uri
  checked = drift.read_statistics(os.path.join(drift_uri, "statistics.pb"))
  assert _means_by_slice(checked) == _means_by_slice(drift.statistics_of_frame(everything))
  model_uri = fresh.run.output("Trainer", "model").uri
  trained = drift.model_training_statistics(os.path.join(model_uri, "Format-Serving"))
  assert _means_by_slice(trained) == _means_by_slice(drift.statistics_of_frame(from_bags["train"]))
  # ModelCard's bags per split and provider.
  counted = {split: dict(sorted(frame[bag_features.DATA_PROVIDER].value_counts().items()))
             for split, frame in from_bags.items()}
  assert slides_per_split(_examples_artifact(examples.uri, examples)) == counted
  # The same from a copy whose bags cannot be read.
  copy = tmp_path / "examples"
  shutil.copytree(examples.uri, copy)
  records = glob.glob(str(copy / "Split-*" / "*"))
  assert records
  for path in records:
    with open(path, "wb") as f:
      f.write(b"not a TFRecord")
  with pytest.raises(tf.errors.DataLossError):  # what reading a bag would meet
    list(drift.read_serialized_bags(records[:1]))
  tables = {split: drift.frame_of_split_files([drift.split_files(str(copy), split)])
            for split in splits}
  for split in splits:
    assert _sorted(tables[split]).equals(_sorted(from_bags[split])), split
  assert slides_per_split(_examples_artifact(str(copy), examples)) == counted
  # The whole report: the same page, figures and all, from the copy as from the bags.
  summary = run_summary.RunSummary(
      examples_uri=examples.uri, model_uri=model_uri, run_id=fresh.run.run_id,
      drift=json.loads(open(os.path.join(drift_uri, "drift.json")).read()))
  pages = {}
  for name, uri in [("bags", examples.uri), ("copy", str(copy))]:
    index = run_report.write_page(dataclasses.replace(summary, examples_uri=uri),
                                  str(tmp_path / name), "fresh")
    pages[name] = (open(index).read(), sorted(os.listdir(tmp_path / name)))
  assert pages["copy"] == pages["bags"]
  page, drawn = pages["copy"]
  assert {"colours.png", "confusion.png"} <= set(drawn)
  assert any(name.startswith("attention_") for name in drawn)
  # Every eval bag predicted, from what the Trainer kept.
  assert f"<tr><td>overall</td><td>{len(from_bags['eval'])}</td>" in page


def test_binary_patch_dataset_runs_end_to_end_gated_on_auc(pcam_run):
  """PCam layout: `histopipe synth --format pcam`, then `run` detects the
  format, tunes (two trials), trains the one-sigmoid model with the best
  values and gates it on AUC."""
  out = pcam_run.out
  assert pcam_run.exit_code == 0
  printed = pcam_run.printed
  assert "slides: 40 tiled, 0 rejected of 40" in printed
  assert "eval ROC AUC:" in printed and "kappa" not in printed
  assert "blessed: yes" in printed
  (tuner_line,) = [line for line in printed.splitlines() if line.startswith("tuner:")]
  assert "best of 2 trials" in tuner_line
  best_pooling = "max" if "pooling=max" in tuner_line else "mean"
  assert f"pooling={best_pooling}" in tuner_line
  (hyperparameters,) = glob.glob(str(out / "pipeline_root" / "Tuner" /
                                     "best_hyperparameters" / "*" / "*.txt"))
  assert json.loads(open(hyperparameters).read())["values"]["pooling"] == best_pooling

  (model_dir,) = [os.path.dirname(p) for p in
                  glob.glob(str(out / "serving_model" / "*" / "saved_model.pb"))]
  (examples_uri,) = glob.glob(str(out / "pipeline_root" / "SlideExampleGen" / "examples" / "*"))
  serialized = _eval_bags(examples_uri)[:3]
  outputs = tf.saved_model.load(model_dir).signatures["serving_default"](
      examples=tf.stack(serialized))
  # The Trainer trained with the Tuner's best values (the pooling is in the model's name).
  import tf_keras
  assert tf_keras.models.load_model(model_dir, compile=False).name.endswith(best_pooling)
  probability = outputs["probabilities"].numpy()
  assert probability.shape == (len(serialized), 1)
  np.testing.assert_array_equal(outputs["grade"].numpy(), probability[:, 0] > 0.5)
  assert outputs["attention"].shape == (len(serialized), 1)

  # The report's binary branch: a 2x2 confusion matrix, AUC instead of kappa.
  from histopipe.reports import run_report
  assert cli.main(["report", "--run", str(out), "--heatmaps", "2"]) == 0
  page = (out / "report" / "index.html").read_text()
  assert "<th>kappa</th>" not in page and "<th>auc</th>" in page
  assert (out / "report" / "confusion.png").exists()
  summary_auc = float(re.search(r"eval ROC AUC: ([\d.]+)", printed).group(1))
  predictions = run_report.eval_split_predictions(
      glob.glob(str(out / "pipeline_root" / "Trainer" / "model" / "*"))[0], examples_uri)
  ours = run_report.slice_metrics(predictions, 2)["overall"]
  # The seeded split holds both classes; TFMA's AUC uses 200 thresholds, ours is exact: two
  # scores in one threshold bin count as a tie there (half a pair), so on a split this small
  # the two may differ by up to one pair's share (a full run: 0.667 against TFMA's 0.694, 1/36).
  positives = int((predictions.labels > 0).sum())
  pair = 1.0 / (positives * (len(predictions.labels) - positives))
  assert ours["auc"] == pytest.approx(summary_auc, abs=max(0.02, pair))
  assert (out / "report" / "roc.png").exists()
