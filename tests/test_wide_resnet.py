"""The seeds' wide ResNet (model.backbone "wide_resnet", trainer/wide_resnet.py)
and their IDC head (model.binary_head "regression"): the network the paper
describes, the loss the seeds trained with, and a whole run on IDC-style
patches that trains and serves."""

import contextlib
import glob
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from histopipe import cli
from histopipe.core import signatures
from histopipe.core.configs import ConfigError, PipelineConfig, config_from_overrides
from histopipe.trainer.wide_resnet import wide_resnet


@pytest.mark.parametrize("depth, width, millions", [
    (16, 8, 11.0), (28, 10, 36.5), (40, 4, 8.9), (16, 4, 2.7), (40, 1, 0.6)])
def test_each_wide_resnet_has_the_papers_parameter_count(depth, width, millions):
  """Zagoruyko & Komodakis (2016), Table 1 (CIFAR-10): trainable parameters
  with a 10-class layer on the 64k pooled features, to the paper's 0.1 M."""
  network = wide_resnet((32, 32, 3), depth, width)
  trainable = sum(int(np.prod(w.shape)) for w in network.trainable_weights)
  assert network.output_shape == (None, 64 * width)
  assert round((trainable + 64 * width * 10 + 10) / 1e6, 1) == millions


def test_each_group_halves_the_resolution_and_the_block_count_follows_the_depth():
  network = wide_resnet((48, 48, 3), 22, 2)
  assert network.get_layer("group3_block3_add").output.shape[1:] == (12, 12, 128)
  assert network.get_layer("group2_block1_add").output.shape[1:] == (24, 24, 64)
  assert not any(layer.name.startswith("group1_block4") for layer in network.layers)


@pytest.mark.parametrize("fields, message", [
    ({"wide_resnet_depth": 12}, "6n \\+ 4"), ({"wide_resnet_width": 0}, "at least 1")])
def test_a_wide_resnet_that_cannot_be_built_is_refused_at_load(fields, message):
  with pytest.raises(ConfigError, match=message):
    config_from_overrides({"model": {"backbone": "wide_resnet", **fields}})


def test_the_regression_head_is_a_relu_layer_then_a_sigmoid_trained_on_squared_error():
  """The seeds' head: dense ReLU units, one sigmoid output, mean squared error
  on the 0/1 labels (sklearn's, on the sigmoid of the logit)."""
  from sklearn.metrics import mean_squared_error
  from histopipe.trainer import fit
  from histopipe.trainer.model import HEAD, build_mil_model
  config = config_from_overrides({"data": {"format": "idc"}, "model": {
      "backbone": "wide_resnet", "wide_resnet_depth": 10, "wide_resnet_width": 1,
      "input_size": 16, "binary_head": "regression", "dense_units": 20}})
  model = build_mil_model(config.model, 1, config.num_classes)
  head_layers = [type(layer).__name__ for layer in model.get_layer(HEAD).layers]
  assert "LayerNormalization" not in head_layers and "Dropout" not in head_layers
  dense = [layer for layer in model.get_layer(HEAD).layers if type(layer).__name__ == "Dense"]
  assert [(d.units, d.activation.__name__) for d in dense[-2:]] == [(20, "relu"), (1, "linear")]
  logits = np.array([[-2.0], [0.3], [1.5]], np.float32)
  labels = np.array([[0.0], [1.0], [1.0]], np.float32)
  assert float(fit.loss_of(config)(labels, logits).numpy().mean()) == pytest.approx(
      mean_squared_error(labels, 1 / (1 + np.exp(-logits))), rel=1e-6)
  assert fit.loss_of(PipelineConfig()) is fit.ordinal_loss


@pytest.fixture(scope="module")
def idc_run(tmp_path_factory):
  """`histopipe run` on 60 synthetic IDC patches (15 patients) with WRN-10-2
  and the regression head."""
  work = tmp_path_factory.mktemp("idc")
  data, out, config = work / "idc", work / "out", work / "config.json"
  assert cli.main(["synth", "--format", "idc", "--out", str(data), "--slides", "60"]) == 0
  config.write_text(json.dumps({
      "preset": "demo",
      "data": {"train_buckets": 2, "valid_buckets": 1, "eval_buckets": 1},
      "model": {"backbone": "wide_resnet", "wide_resnet_depth": 10, "wide_resnet_width": 2,
                "input_size": 48, "binary_head": "regression", "dense_units": 20,
                "attention_units": 8},
      "training": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8},
      "evaluation": {"min_auc": -1.0, "max_auc_drop": 2.0}}))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    code = cli.main(["run", "--data", str(data), "--out", str(out), "--config", str(config)])
  return code, printed.getvalue(), data, out


def test_a_wide_resnet_trains_and_serves_on_idc_patches(idc_run, capsys):
  """The run trains WRN-10-2 with the regression head and pushes it; the
  development server answers `histopipe predict` on IDC patches with the
  pushed model's own answer on each patch (TF's loader, the patch's bag)."""
  from histopipe.bags import bag_features
  from histopipe.core.configs import load_config
  from histopipe.serving.dev_server import DevServer
  from histopipe.slides.tiling import cut_bag
  code, printed, data, out = idc_run
  assert code == 0, printed
  assert "eval cancer vs benign ROC AUC" in printed or "eval ROC AUC" in printed
  (version,) = glob.glob(str(out / "serving_model" / "*"))
  contract = json.loads(open(os.path.join(version, "assets.extra",
                                          "histopipe_contract.json")).read())
  assert contract["format"] == "idc" and contract["task"] == "binary"
  card = json.loads(open(os.path.join(version, "model_card.json")).read())
  assert card["model_parameters"]["model_architecture"].startswith("wide_resnet backbone")
  patches = sorted(glob.glob(str(data / "*" / "*" / "*.png")))[:4]
  with DevServer(version, "histopipe") as server:
    assert cli.main(["predict", "--server", f"localhost:{server.port}", *patches]) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  served = tf.saved_model.load(version).signatures[signatures.SERVING_DEFAULT]
  config = load_config(None, preset="demo")
  tiling = type(config.tiling)(**contract["tiling"])
  for path, record in zip(patches, records):
    bag = cut_bag(path, "patch", tiling).bag
    answer = served(examples=tf.constant([bag_features.serialize_request(bag, "p")]))
    probability = float(answer[signatures.PROBABILITIES].numpy().reshape(-1)[0])
    assert record["probabilities"] == [pytest.approx(probability, abs=1e-5)]
    assert record["grade"] == int(probability > 0.5)
