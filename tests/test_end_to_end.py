"""One whole pipeline run on a handful of tiny slides, through the CLI.

The slow test of the suite (about two minutes): LocalDagRunner runs every
component for real; the pushed SavedModel is then checked with TF's own
`saved_model_cli` and called on serialized bags.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from histopipe.components import bag_features
from histopipe import cli


@pytest.fixture(scope="module")
def pipeline_run(tiny_dataset, tmp_path_factory):
  source, slides = tiny_dataset
  work = tmp_path_factory.mktemp("e2e")
  data = work / "data"
  shutil.copytree(source, data)
  (data / "train_images" / "corrupt.tiff").write_bytes(b"II*\x00garbage")
  with open(data / "train.csv", "a") as f:
    f.write("corrupt,radboud,2,3+4\n")
  config = work / "config.json"
  config.write_text(json.dumps({
      "preset": "demo",
      "data": {"train_buckets": 2, "valid_buckets": 1, "eval_buckets": 1},
      "tiling": {"tiles_per_slide": 4, "tile_size": 32},
      "model": {"input_size": 32, "dense_units": 16, "attention_units": 8},
      "training": {"epochs": 1, "batch_size": 4, "eval_batch_size": 4},
      # Bless whatever trains, so this run exercises the Pusher.
      "evaluation": {"min_kappa": -1.0, "max_kappa_drop": 2.0},
  }))
  out = work / "out"
  argv = ["run", "--data", str(data), "--out", str(out), "--config", str(config)]
  return out, slides, argv


def test_pipeline_runs_end_to_end_and_pushes_a_servable_model(pipeline_run, capsys):
  out, slides, argv = pipeline_run
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out
  assert f"slides: {len(slides)} tiled, 1 rejected of {len(slides) + 1}" in printed
  assert "eval quadratic weighted kappa:" in printed
  assert "eval cancer vs benign ROC AUC:" in printed
  assert "blessed: yes" in printed

  pushed = glob.glob(str(out / "serving_model" / "*" / "saved_model.pb"))
  assert len(pushed) == 1, "TF Serving layout: <base>/<version>/saved_model.pb"
  model_dir = os.path.dirname(pushed[0])
  assert f"pushed to: {model_dir}" in printed
  assert os.path.basename(model_dir).isdigit()

  rejects = glob.glob(str(out / "pipeline_root" / "SlideExampleGen" / "examples" / "*" /
                          "slide_report" / "rejects.csv"))
  assert "corrupt," in open(rejects[0]).read()

  cli_show = subprocess.run(
      [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show",
       "--dir", model_dir, "--tag_set", "serve", "--signature_def", "serving_default"],
      capture_output=True, text=True, check=True).stdout
  assert "inputs['examples'] tensor_info:" in cli_show and "DT_STRING" in cli_show
  for output in ("grade", "probabilities", "attention"):
    assert f"outputs['{output}']" in cli_show

  eval_files = glob.glob(str(out / "pipeline_root" / "SlideExampleGen" / "examples" / "*" /
                             "Split-eval" / "*.gz"))
  serialized = list(tf.data.TFRecordDataset(eval_files, compression_type="GZIP").take(2))
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
  valid_tiles = [t for t, v in zip(
      tf.train.Example.FromString(serialized[0].numpy()).features.feature[
          bag_features.TILES].bytes_list.value,
      tf.train.Example.FromString(serialized[0].numpy()).features.feature[
          bag_features.TILE_VALID].int64_list.value) if v]
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

  # Serving needs only the tiles: a client's bag without label or metadata works.
  example = tf.train.Example.FromString(serialized[0].numpy())
  features = example.features.feature
  bare = tf.train.Example()
  for key in (bag_features.TILES, bag_features.TILE_VALID):
    bare.features.feature[key].CopyFrom(features[key])
  again = loaded.signatures["serving_default"](
      examples=tf.constant([bare.SerializeToString()]))
  np.testing.assert_allclose(again["probabilities"].numpy()[0], probabilities[0], atol=1e-5)


def test_predict_against_the_pushed_model_on_the_dev_server(pipeline_run, capsys):
  """`histopipe predict` tiles the slides itself and gets what the model gives
  for the SlideExampleGen's bag of the same slide."""
  from histopipe.serving.dev_server import DevServer
  out, slides, argv = pipeline_run
  config_path = argv[argv.index("--config") + 1]
  eval_files = glob.glob(str(out / "pipeline_root" / "SlideExampleGen" / "examples" / "*" /
                             "Split-*" / "*.gz"))
  bags = {}
  for record in tf.data.TFRecordDataset(eval_files, compression_type="GZIP"):
    example = tf.train.Example.FromString(record.numpy())
    bags[example.features.feature[bag_features.IMAGE_ID].bytes_list.value[0].decode()] = record
  chosen = [s for s in slides if s.image_id in bags][:3]
  with DevServer(str(out / "serving_model"), "histopipe") as server:
    assert cli.main(["predict", "--server", f"localhost:{server.port}", "--config", config_path,
                     *[s.path for s in chosen]]) == 0
    model = tf.saved_model.load(server.model.path)
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["image_id"] for r in records] == [s.image_id for s in chosen]
  expected = model.signatures["serving_default"](
      examples=tf.stack([bags[s.image_id] for s in chosen]))
  for record, grade, probabilities in zip(records, expected["grade"].numpy(),
                                          expected["probabilities"].numpy()):
    assert record["grade"] == grade
    np.testing.assert_allclose(record["probabilities"], probabilities, atol=1e-5)
    assert abs(sum(t["weight"] for t in record["attention"]) - 1.0) < 1e-4


def test_a_model_below_the_gate_is_not_pushed_and_the_summary_says_why(pipeline_run, capsys):
  """Run again, on the same pipeline root, with a kappa floor no model can reach."""
  out, _, argv = pipeline_run
  config_path = argv[argv.index("--config") + 1]
  strict = json.loads(open(config_path).read())
  strict["evaluation"] = {"min_kappa": 2.0, "max_kappa_drop": 2.0}
  strict_path = os.path.join(os.path.dirname(config_path), "strict.json")
  with open(strict_path, "w") as f:
    json.dump(strict, f)
  pushed_before = sorted(glob.glob(str(out / "serving_model" / "*")))
  strict_argv = list(argv)
  strict_argv[argv.index("--config") + 1] = strict_path
  assert cli.main(strict_argv) == 0
  printed = capsys.readouterr().out
  assert "blessed: no" in printed
  assert "pushed: no (model not blessed)" in printed
  (gate_line,) = [line for line in printed.splitlines() if line.strip().startswith("gate:")]
  assert "kappa" in gate_line and "below the threshold 2.000" in gate_line
  assert sorted(glob.glob(str(out / "serving_model" / "*"))) == pushed_before


def test_report_shows_the_gate_the_figures_and_tfma_agrees_with_its_numbers(
    pipeline_run, capsys):
  """After the failing-gate run: the report is of that run (latest model)."""
  from histopipe.reports import run_summary
  from histopipe.core.layout import RunPaths
  from histopipe.reports import run_report
  out, slides, _ = pipeline_run
  assert cli.main(["report", "--run", str(out)]) == 0
  index = out / "report" / "index.html"
  assert f"report: {index}" in capsys.readouterr().out
  page = index.read_text()
  assert "blessed: no" in page and "below the threshold 2.000" in page
  for figure in ["confusion.png"] + re.findall(r'src="(attention_[^"]+\.png)"', page):
    assert (out / "report" / figure).stat().st_size > 1000, figure
  assert re.findall(r'src="(attention_[^"]+\.png)"', page), "attention heatmaps drawn"
  # The report's predictions are the ones TFMA judged: same kappa on the same split.
  summary = run_summary.summarize(RunPaths(str(out)))
  predictions = run_report.predict_eval_split(
      os.path.join(summary.model_uri, "Format-Serving"), summary.examples_uri)
  assert len(predictions.labels) == summary.eval_metrics["example_count"]
  ours = run_report.slice_metrics(predictions, 6)["overall"]
  assert ours["kappa"] == pytest.approx(summary.eval_metrics["kappa"], abs=1e-4)
  assert ours["accuracy"] == pytest.approx(summary.eval_metrics["accuracy"], abs=1e-4)


def test_explain_draws_one_slide_and_gives_predicts_record(pipeline_run, tmp_path, capsys):
  out, slides, argv = pipeline_run
  config_path = argv[argv.index("--config") + 1]
  png = tmp_path / "heatmap.png"
  assert cli.main(["explain", slides[0].path, "--model-dir", str(out / "serving_model"),
                   "--config", config_path, "--out", str(png)]) == 0
  record = json.loads(capsys.readouterr().out)
  assert record["image_id"] == slides[0].image_id and 0 <= record["grade"] <= 5
  assert len(record["attention"]) >= 1
  import matplotlib.image
  image = matplotlib.image.imread(str(png))
  assert image.ndim == 3 and image.shape[0] > 100


def test_binary_patch_dataset_runs_end_to_end_gated_on_auc(tmp_path, capsys):
  """PCam layout: `histopipe synth --format pcam`, then `run` detects the
  format, tunes (two trials), trains the one-sigmoid model with the best
  values and gates it on AUC."""
  data, out = tmp_path / "pcam", tmp_path / "out"
  assert cli.main(["synth", "--format", "pcam", "--out", str(data), "--slides", "40"]) == 0
  config = tmp_path / "config.json"
  config.write_text(json.dumps({
      "preset": "demo",
      "model": {"backbone": "small_cnn", "input_size": 32, "dense_units": 16,
                "attention_units": 8},
      "training": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8},
      "evaluation": {"min_auc": -1.0, "max_auc_drop": 2.0},
      "tuning": {"enabled": True, "max_trials": 2, "epochs": 1,
                 "learning_rates": [1e-3], "dropouts": [0.2], "poolings": ["mean", "max"]},
  }))
  assert cli.main(["run", "--data", str(data), "--out", str(out),
                   "--config", str(config)]) == 0
  printed = capsys.readouterr().out
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
  eval_files = glob.glob(str(out / "pipeline_root" / "SlideExampleGen" / "examples" / "*" /
                             "Split-eval" / "*.gz"))
  serialized = list(tf.data.TFRecordDataset(eval_files, compression_type="GZIP").take(3))
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
  predictions = run_report.predict_eval_split(
      os.path.join(glob.glob(str(out / "pipeline_root" / "Trainer" / "model" / "*"))[0],
                   "Format-Serving"),
      os.path.dirname(os.path.dirname(eval_files[0])))
  ours = run_report.slice_metrics(predictions, 2)["overall"]
  # The seeded split holds both classes; TFMA's AUC uses 200 thresholds, ours is exact.
  assert ours["auc"] == pytest.approx(summary_auc, abs=0.02)
  assert (out / "report" / "roc.png").exists()
