"""Per-bag image statistics, and drift and skew checks on them (issue 15, parts 1-2)."""

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from histopipe.bags import bag_features
from histopipe.slides import bag_statistics
from histopipe.monitoring import drift
from histopipe.data import synthetic
from histopipe.slides.tiling import cut_bag
from histopipe.core.configs import demo_config
from histopipe.core.stain import HED_FROM_RGB, RGB_FROM_HED

TILING = dataclasses.replace(demo_config().tiling, tile_size=32, tiles_per_slide=8)
# Bags a side: two draws of the same slides differ by less than the
# threshold only with enough bags (see EvaluationConfig.max_drift_jsd).
LAB_SLIDES = 80


def test_statistics_of_known_pixels():
  """Uniform tiles: means are the colour, spread 0, focus 0; stain density is
  the deconvolution of the colour's optical density; glass is left out."""
  pink = np.full((16, 16, 3), (200, 120, 170), np.uint8)
  glass = np.full((16, 16, 3), 235, np.uint8)  # a scanner's grey-ish background
  stats = bag_statistics.image_statistics([pink, glass], [b"x" * 10, b"y" * 30], [0.5, 1.0])
  assert [stats[name] for name in bag_features.MEAN_RGB] == [200, 120, 170]
  assert [stats[name] for name in bag_features.STD_RGB] == [0, 0, 0]
  density = np.log(256.0) - np.log(np.array([200, 120, 170]) + 1.0)
  haematoxylin, eosin, _ = density @ np.linalg.inv(RGB_FROM_HED.astype(np.float64))
  assert stats[bag_features.OD_HAEMATOXYLIN] == pytest.approx(haematoxylin, rel=1e-5)
  assert stats[bag_features.OD_EOSIN] == pytest.approx(eosin, rel=1e-5)
  assert stats[bag_features.FOCUS] == 0
  assert stats[bag_features.TISSUE_FRACTION] == 0.75
  assert stats[bag_features.BYTES_PER_TILE] == 20


def test_focus_is_lower_for_a_blurred_tile():
  rng = np.random.default_rng(0)
  sharp = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
  blurred = cv2.GaussianBlur(sharp, (0, 0), 2)
  assert bag_statistics.focus_score(blurred) < 0.1 * bag_statistics.focus_score(sharp)


def test_bags_carry_statistics_of_their_decoded_tiles(tiny_dataset):
  """What the tiling writes equals the statistics of the real tiles as
  TensorFlow decodes them from the bag (PNG: lossless), read back through
  TF's own Example parser."""
  _, slides = tiny_dataset
  bag = cut_bag(slides[0].path, "slide", TILING).bag
  data = bag_features.serialize_bag(bag, "s", "", "radboud", 1, "3+3")
  spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in bag_features.IMAGE_STATISTICS}
  parsed = tf.io.parse_single_example(data, spec)
  real = [i for i, valid in enumerate(bag.tile_valid) if valid]
  decoded = [tf.io.decode_png(bag.tiles[i], channels=3).numpy() for i in real]
  expected = bag_statistics.image_statistics(
      decoded, [bag.tiles[i] for i in real], [bag.tile_tissue[i] for i in real])
  for name in bag_features.IMAGE_STATISTICS:
    assert parsed[name].numpy() == pytest.approx(expected[name], rel=1e-5), name


def _other_scanner(rgb: np.ndarray, eosin: float = 1.15, gamma: float = 0.8) -> np.ndarray:
  """A different lab's scanner: eosin optical density x1.15 (colour
  deconvolution with the stain vectors), then a display gamma of 0.8."""
  density = np.log(256.0) - np.log(rgb.astype(np.float64) + 1.0)
  stains = density @ HED_FROM_RGB.astype(np.float64)
  stains[..., 1] *= eosin
  shifted = np.clip(256.0 * np.exp(-(stains @ RGB_FROM_HED.astype(np.float64))) - 1.0, 0, 255)
  return np.clip(255.0 * (shifted / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)


def _lab_bags(folder, seed: int, scanner=None):
  """LAB_SLIDES synthetic biopsies of one kind (grade 2, half tumour, the
  generator's 3% stain jitter), tiled; the slide's pixels through `scanner`."""
  os.makedirs(folder, exist_ok=True)
  bags = []
  for index in range(LAB_SLIDES):
    rng = np.random.default_rng([seed, index])
    level0 = synthetic.render_tissue(
        rng, 768, 1024, synthetic.jittered(synthetic.morphology_for_grade(2), rng),
        tumour_fraction=0.5, stain_scale=rng.normal(1.0, 0.03, 3))
    if scanner is not None:
      level0 = scanner(level0)
    path = os.path.join(folder, f"{index}.tiff")
    synthetic.write_pyramidal_tiff(path, synthetic.pyramid(level0))
    bags.append(cut_bag(path, "slide", TILING).bag)
  return bags


@pytest.fixture(scope="module")
def lab_statistics(tmp_path_factory):
  """TFDV statistics of three sets: the lab's slides, a second draw of the
  same kind, and the first set's slides through another scanner."""
  work = tmp_path_factory.mktemp("drift")
  sets = {"first": _lab_bags(work / "first", seed=1),
          "second_draw": _lab_bags(work / "second", seed=2),
          "other_scanner": _lab_bags(work / "scanner", seed=1, scanner=_other_scanner)}
  statistics = {name: drift.statistics_of_frame(drift.frame_of_bags(bags))
                for name, bags in sets.items()}
  statistics["bags"] = sets
  return statistics


def test_a_second_draw_is_not_drift_and_another_scanner_is(lab_statistics):
  config = demo_config().evaluation
  same = drift.compare(lab_statistics["second_draw"], lab_statistics["first"],
                       config.max_drift_jsd, config.min_drift_bags)
  other = drift.compare(lab_statistics["other_scanner"], lab_statistics["first"],
                        config.max_drift_jsd, config.min_drift_bags)
  assert same["compared"] and not same["drifted"], drift.summary_line(same)
  assert other["drifted"], drift.summary_line(other)
  flagged = other["slices"][drift.ALL_BAGS]["drifted"]
  assert set(flagged) & set(bag_features.MEAN_RGB + bag_features.STD_RGB), flagged
  assert "DRIFTED" in drift.summary_line(other) and "none" in drift.summary_line(same)
  # The colour moved the way the scanner moves it: gamma 0.8 brightens.
  means = other["slices"][drift.ALL_BAGS]["statistics"][bag_features.MEAN_RGB[0]]
  assert means["mean"] > means["baseline_mean"]


def test_too_few_bags_or_no_baseline_is_said_not_hidden(lab_statistics):
  report = drift.compare(lab_statistics["other_scanner"], lab_statistics["first"],
                         max_jsd=0.15, min_bags=LAB_SLIDES + 1)
  assert not report["drifted"]
  assert "fewer than" in report["slices"][drift.ALL_BAGS]["skipped"]
  assert "not checked" in drift.summary_line(report)
  nothing = drift.compare(lab_statistics["first"], None, 0.15, 10)
  assert not nothing["compared"] and "not checked" in drift.summary_line(nothing)


def test_slices_by_provider_are_tfdv_statistics():
  rows = [{name: float(i) for name in bag_features.IMAGE_STATISTICS} for i in range(6)]
  for i, row in enumerate(rows):
    row[bag_features.DATA_PROVIDER] = "radboud" if i % 2 else "karolinska"
  import pandas as pd
  frame = pd.DataFrame(rows)
  statistics = drift.statistics_of_frame(frame)
  assert [(d.name, d.num_examples) for d in statistics.datasets] == [
      (drift.ALL_BAGS, 6), (drift.slice_name("karolinska"), 3), (drift.slice_name("radboud"), 3)]
  mean = {f.path.step[0]: f.num_stats.mean for f in statistics.datasets[2].features}
  assert mean[bag_features.FOCUS] == pytest.approx(3.0)  # rows 1, 3, 5


def _artifact(artifact_type, uri, **int_properties):
  artifact = artifact_type()
  artifact.uri = str(uri)
  for key, value in int_properties.items():
    artifact.set_int_custom_property(key, value)
  return artifact


@pytest.mark.parametrize("bags, gate, block, drifted, blessed", [
    ("other_scanner", 1, False, True, 1),  # flagged, not blocking: pushed
    ("other_scanner", 1, True, True, 0),  # flagged and blocking: held back
    ("second_draw", 1, True, False, 1),  # not drifted: blocking changes nothing
    ("other_scanner", 0, False, True, 0),  # the gate said no: stays no
])
def test_drift_check_passes_the_blessing_on_or_withholds_it(lab_statistics, tmp_path, bags,
                                                          gate, block, drifted, blessed):
  """The DriftCheck executor over Examples of a set's bags and a baseline
  model carrying the first set's training statistics: the Evaluator's
  blessing goes to the Pusher unless the run drifted and block_on_drift."""
  from tfx.types import standard_artifacts
  from histopipe.components.drift_check import executor as drift_check
  from histopipe.components.drift_check.component import DRIFT_REPORT_TYPE
  examples = _artifact(standard_artifacts.Examples, tmp_path / "examples")
  examples.split_names = '["eval"]'
  os.makedirs(tmp_path / "examples" / "Split-eval")
  with tf.io.TFRecordWriter(str(tmp_path / "examples" / "Split-eval" / "bags")) as writer:
    for index, bag in enumerate(lab_statistics["bags"][bags]):
      writer.write(bag_features.serialize_bag(bag, f"s{index}", "", "", 0, "0+0"))
  model = _artifact(standard_artifacts.Model, tmp_path / "baseline")
  drift.write_statistics(lab_statistics["first"], str(
      tmp_path / "baseline" / "Format-Serving" / "assets.extra" / drift.TRAINING_STATISTICS_FILE))
  evaluator_blessing = _artifact(standard_artifacts.ModelBlessing, tmp_path / "evaluated",
                                 blessed=gate, current_model_id=7)
  report = _artifact(DRIFT_REPORT_TYPE, tmp_path / "report")
  blessing = _artifact(standard_artifacts.ModelBlessing, tmp_path / "blessing")
  drift_check.DriftCheckExecutor().Do(
      {"examples": [examples], "baseline_model": [model], "model_blessing": [evaluator_blessing]},
      {"drift_report": [report], "blessing": [blessing]},
      {"max_jsd": 0.15, "min_bags": LAB_SLIDES, "block_on_drift": int(block)})
  written = json.loads((tmp_path / "report" / drift_check.REPORT_FILE).read_text())
  assert written["drifted"] == drifted and written["baseline"] == str(tmp_path / "baseline")
  assert report.get_string_custom_property("drift") == ("drifted" if drifted else "none")
  assert drift.read_statistics(str(tmp_path / "report" / drift_check.STATISTICS_FILE)
                               ).datasets[0].num_examples == LAB_SLIDES
  assert blessing.get_int_custom_property("blessed") == blessed
  assert blessing.get_int_custom_property("blocked_by_drift") == int(gate and block and drifted)
  assert blessing.get_int_custom_property("current_model_id") == 7  # the resolver's link
  marker = "BLESSED" if blessed else "NOT_BLESSED"
  assert (tmp_path / "blessing" / marker).exists()


def test_a_provider_the_model_never_saw_is_compared_with_all_training_bags(lab_statistics):
  """A new site's bags (here the other scanner's, as provider "new_lab")
  against training bags of one provider only: not skipped as "no baseline",
  compared with all the training bags, flagged and named."""
  first = drift.frame_of_bags(lab_statistics["bags"]["first"], provider="radboud")
  new = drift.frame_of_bags(lab_statistics["bags"]["other_scanner"], provider="new_lab")
  report = drift.compare(drift.statistics_of_frame(new), drift.statistics_of_frame(first),
                         0.15, LAB_SLIDES)
  entry = report["slices"][drift.slice_name("new_lab")]
  assert "new" in entry and entry["baseline_bags"] == LAB_SLIDES and entry["drifted"]
  assert "not in the training bags: data_provider_new_lab" in drift.summary_line(report)
