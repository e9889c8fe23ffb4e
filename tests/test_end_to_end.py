"""One whole pipeline run on a handful of tiny slides, through the CLI.

The slow test of the suite (about two minutes): LocalDagRunner runs every
component for real; the pushed SavedModel is then checked with TF's own
`saved_model_cli` and called on serialized bags.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components import bag_features
from pipeline import cli


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


def test_binary_patch_dataset_runs_end_to_end_gated_on_auc(tmp_path, capsys):
  """PCam layout: `histopipe synth --format pcam`, then `run` detects the
  format, trains the one-sigmoid model and gates it on AUC."""
  data, out = tmp_path / "pcam", tmp_path / "out"
  assert cli.main(["synth", "--format", "pcam", "--out", str(data), "--slides", "40"]) == 0
  config = tmp_path / "config.json"
  config.write_text(json.dumps({
      "preset": "demo",
      "model": {"backbone": "small_cnn", "input_size": 32, "dense_units": 16,
                "attention_units": 8},
      "training": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8},
      "evaluation": {"min_auc": -1.0, "max_auc_drop": 2.0},
  }))
  assert cli.main(["run", "--data", str(data), "--out", str(out),
                   "--config", str(config)]) == 0
  printed = capsys.readouterr().out
  assert "slides: 40 tiled, 0 rejected of 40" in printed
  assert "eval ROC AUC:" in printed and "kappa" not in printed
  assert "blessed: yes" in printed

  (model_dir,) = [os.path.dirname(p) for p in
                  glob.glob(str(out / "serving_model" / "*" / "saved_model.pb"))]
  eval_files = glob.glob(str(out / "pipeline_root" / "SlideExampleGen" / "examples" / "*" /
                             "Split-eval" / "*.gz"))
  serialized = list(tf.data.TFRecordDataset(eval_files, compression_type="GZIP").take(3))
  outputs = tf.saved_model.load(model_dir).signatures["serving_default"](
      examples=tf.stack(serialized))
  probability = outputs["probabilities"].numpy()
  assert probability.shape == (len(serialized), 1)
  np.testing.assert_array_equal(outputs["grade"].numpy(), probability[:, 0] > 0.5)
  assert outputs["attention"].shape == (len(serialized), 1)
