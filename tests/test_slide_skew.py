"""Per-slide skew (issue 26, item 4): each slide's image statistics against the
0.5th-99.5th percentile of the model's training bags.

The slides are tests/test_drift.py's synthetic biopsies of one kind (grade 2,
half tumour, 3% stain jitter, 8 tiles of 32 px a bag), drawn with its
helpers: the training bags are one draw (seed 1), and the slides checked are
a second draw (seed 2), as they are and through another scanner.

Measured here, 80 slides a set against the 80 training bags:
- a fresh draw of the training kind: 16 of 80 slides (20%) have at least one
  of the 11 statistics outside the range (each statistic alone 1-5 slides;
  draws with seeds 3 and 4: 13 and 9 of 80): the false-flag rate of the rule
  at this training size;
- the same slides through a scanner that doubles the eosin optical density:
  64 of 80 (80%), img_od_eosin on 60 of them.
- the percentiles against numpy.percentile: at most 0.54 of a STANDARD
  bucket off (0.33 standard deviations, img_focus's 99.5th) on the lab bags,
  0.26 on the long tail.
test_drift.py's own scanner (eosin x1.15 then gamma 0.8), which the batch
check flags at 80 bags, moves each statistic by less than its spread across
slides of one kind (at most 0.76 standard deviations, focus and colour
spread): per slide it puts 10 of 80 slides out of range, no more than a
fresh draw; only the batch check sees it.
"""

import functools
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from histopipe import cli
from histopipe.bags import bag_features
from histopipe.core.configs import load_config
from histopipe.monitoring import drift, slide_skew
from histopipe.serving import skew, slide_predictions
from histopipe.serving.dev_server import DevServer
from histopipe.slides.tiling import cut_bag
from tests.test_drift import LAB_SLIDES, _lab_bags, _other_scanner
from tests.test_serving import TILING as SERVING_TILING, _CountingModel

# A scanner (or stain protocol) whose eosin is twice as dense: far outside
# one kind's spread, unlike test_drift's x1.15 (see the module docstring).
_EOSIN_HEAVY_SCANNER = functools.partial(_other_scanner, eosin=2.0, gamma=1.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
  """The training bags' frame and statistics, and the image statistics of
  the second draw's slides as they are and through the other scanner."""
  work = tmp_path_factory.mktemp("slide_skew")
  training = drift.frame_of_bags(_lab_bags(work / "training", seed=1))
  return {"training": training,
          "statistics": drift.statistics_of_frame(training),
          "fresh": [bag.image_stats for bag in _lab_bags(work / "fresh", seed=2)],
          "other_scanner": [bag.image_stats for bag in _lab_bags(
              work / "scanner", seed=2, scanner=_EOSIN_HEAVY_SCANNER)]}


def _checked(image_stats, ranges):
  return [{slide_skew.OUT_OF_RANGE: slide_skew.out_of_range(stats, ranges)}
          for stats in image_stats]


def _frame(columns):
  frame = pd.DataFrame(columns)
  frame[bag_features.DATA_PROVIDER] = ""
  return frame


def test_percentiles_from_tfdv_statistics_match_numpy(lab):
  """TFDV's histograms are approximate (a sketch of 1000 quantiles, rebinned
  to ten buckets): the range is within one STANDARD bucket, a tenth of the
  training range, of numpy.percentile on the same values; on the 80 lab bags
  and on 2000 values of a long-tailed (log-normal) statistic, where the
  QUANTILES histogram alone would put the 99.5th percentile near the maximum."""
  rng = np.random.default_rng(0)
  long_tail = _frame({name: rng.lognormal(0.0, 0.7, 2000)
                      for name in bag_features.IMAGE_STATISTICS})
  for frame, statistics in ((lab["training"], lab["statistics"]),
                            (long_tail, drift.statistics_of_frame(long_tail))):
    ranges = slide_skew.training_ranges(statistics)
    assert set(ranges) == set(bag_features.IMAGE_STATISTICS)
    for name in bag_features.IMAGE_STATISTICS:
      values = frame[name].to_numpy(dtype=np.float64)
      low, high = np.percentile(values, [slide_skew.LOW_PERCENTILE, slide_skew.HIGH_PERCENTILE])
      tolerance = (values.max() - values.min()) / 10
      assert ranges[name]["low"] == pytest.approx(low, abs=tolerance), name
      assert ranges[name]["high"] == pytest.approx(high, abs=tolerance), name
      assert values.min() <= ranges[name]["low"] < ranges[name]["high"] <= values.max()


def test_another_scanner_is_flagged_per_slide_and_a_fresh_draw_mostly_not(lab):
  ranges = slide_skew.training_ranges(lab["statistics"])
  fresh = slide_skew.summarize(_checked(lab["fresh"], ranges))
  other = slide_skew.summarize(_checked(lab["other_scanner"], ranges))
  assert fresh["checked"] and fresh["slides"] == other["slides"] == LAB_SLIDES
  assert fresh["out_of_range"] <= LAB_SLIDES // 4, slide_skew.summary_line(fresh, "")
  assert other["out_of_range"] >= 7 * LAB_SLIDES // 10, slide_skew.summary_line(other, "")
  # Named by the statistic the scanner moved, in the direction it moved it.
  assert next(iter(other["statistics"])) == bag_features.OD_EOSIN
  for record in _checked(lab["other_scanner"], ranges):
    eosin = record[slide_skew.OUT_OF_RANGE].get(bag_features.OD_EOSIN)
    assert eosin is None or eosin["value"] > eosin["high"]
  line = slide_skew.summary_line(other, "")
  assert line.startswith(f"per-slide skew: {other['out_of_range']} of {LAB_SLIDES} slides "
                         f"outside the training range ({bag_features.OD_EOSIN} ")


def test_the_check_and_its_line_without_a_range_or_without_slides():
  stats = {name: 1.0 for name in bag_features.IMAGE_STATISTICS}
  inside = {name: {"low": 0.0, "high": 2.0} for name in bag_features.IMAGE_STATISTICS}
  assert slide_skew.out_of_range(stats, None) is None
  assert slide_skew.out_of_range(stats, inside) == {}
  below = {**inside, bag_features.FOCUS: {"low": 1.5, "high": 2.0}}
  assert slide_skew.out_of_range(stats, below) == {
      bag_features.FOCUS: {"value": 1.0, "low": 1.5, "high": 2.0}}
  unchecked = slide_skew.summarize([{slide_skew.OUT_OF_RANGE: None}, {"rejected": "unreadable"}])
  assert not unchecked["checked"]
  assert (slide_skew.summary_line(unchecked, skew.NO_TRAINING_STATISTICS) ==
          "per-slide skew: not checked (the model carries no training statistics)")
  assert "not checked" in slide_skew.summary_line(slide_skew.summarize([]), "")
  assert slide_skew.training_ranges(None) is None


@pytest.fixture(scope="module")
def counting_model(tmp_path_factory):
  """test_serving's model with known answers, as a one-version serving base."""
  base = tmp_path_factory.mktemp("slide_skew_model")
  module = _CountingModel()
  tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
  return base


def test_score_records_carry_out_of_range_and_score_prints_the_line(
    tiny_dataset, counting_model, tmp_path, capsys):
  """`histopipe score` of four slides, fewer than the batch check needs, with
  a model whose training bags all had less eosin: every record names
  img_od_eosin with its value and range, skew.json counts them, and the
  line is printed beside the batch check's "not checked"."""
  _, slides = tiny_dataset
  config_file = tmp_path / "config.json"
  config_file.write_text(json.dumps({"preset": "demo", "tiling": SERVING_TILING}))
  tiling = load_config(str(config_file)).tiling
  training = drift.frame_of_bags([cut_bag(s.path, "slide", tiling).bag for s in slides])
  training_eosin = training[bag_features.OD_EOSIN]
  training[bag_features.OD_EOSIN] = (training_eosin - 0.05 -
                                     (training_eosin.max() - training_eosin.min()))
  model = tmp_path / "model"
  shutil.copytree(counting_model, model)
  drift.write_statistics(drift.statistics_of_frame(training), str(
      model / "1" / "assets.extra" / drift.TRAINING_STATISTICS_FILE))
  folder = tmp_path / "slides"
  folder.mkdir()
  for slide in slides[:4]:
    (folder / os.path.basename(slide.path)).symlink_to(slide.path)
  out = tmp_path / "scores.jsonl"
  assert cli.main(["score", "--model-dir", str(model), "--data", str(folder),
                   "--out", str(out), "--config", str(config_file)]) == 0
  printed = capsys.readouterr().out
  assert "serving skew: not checked (too few bags to compare)" in printed
  assert "per-slide skew: 4 of 4 slides outside the training range (" in printed
  assert f"{bag_features.OD_EOSIN} 4" in printed
  for record in map(json.loads, out.read_text().splitlines()):
    eosin = record[slide_skew.OUT_OF_RANGE][bag_features.OD_EOSIN]
    assert eosin["value"] == record["image_stats"][bag_features.OD_EOSIN] > eosin["high"]
  report = json.loads((tmp_path / skew.SKEW_FILE).read_text())
  assert report["per_slide"]["out_of_range"] == 4
  assert report["per_slide"]["ranges"][bag_features.OD_EOSIN] == {
      "low": eosin["low"], "high": eosin["high"]}


def test_without_training_statistics_records_say_null_and_the_lines_say_why(
    tiny_dataset, counting_model, tmp_path, capsys):
  """A model exported before it carried training statistics (check_skew on
  records written by prediction_record without a range), and `predict`
  of a model whose contract carries no training ranges (one exported
  before they were, or, here, one without a contract)."""
  _, slides = tiny_dataset
  tiling = load_config(None, preset="demo").tiling
  bag = cut_bag(slides[0].path, "slide", tiling).bag
  outputs = {"grade": np.array([1]), "probabilities": np.eye(6)[[1]],
             "attention": np.full((1, len(bag.tile_valid)), 1.0 / len(bag.tile_valid))}
  record = slide_predictions.prediction_record("slide", bag, outputs)
  assert record[slide_skew.OUT_OF_RANGE] is None
  records = tmp_path / "records.jsonl"
  records.write_text(json.dumps(record) + "\n")
  report = skew.check_skew(str(counting_model / "1"), str(records), load_config(None).evaluation)
  assert report["per_slide_summary"] == (
      "per-slide skew: not checked (the model carries no training statistics)")
  config_file = tmp_path / "config.json"
  config_file.write_text(json.dumps({"preset": "demo", "tiling": SERVING_TILING}))
  with DevServer(str(counting_model), "histopipe") as server:
    assert cli.main(["predict", "--server", f"localhost:{server.port}",
                     "--config", str(config_file), slides[0].path]) == 0
  captured = capsys.readouterr()
  (predicted,) = map(json.loads, captured.out.splitlines())
  assert predicted[slide_skew.OUT_OF_RANGE] is None
  # This model has no metadata signature, so no contract and no training ranges.
  assert ("per-slide skew: not checked (the served model's contract carries no training "
          "ranges") in captured.err
