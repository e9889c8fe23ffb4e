"""SlideExampleGen's Beam stages: every slide ends up written or rejected with a reason."""

import csv
import os
import shutil

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from histopipe.bags import bag_features
from histopipe.data.labels import LabelFileError
from histopipe.data.datasets import plan_panda as plan_slides
from histopipe.beam.slide_stages import TileSlides, WriteSlideReport
from histopipe.core.layout import REJECTS_FILE
from histopipe.core.configs import TilingConfig

TINY = TilingConfig(tiles_per_slide=4, tile_size=32, level=1, min_tissue_fraction=0.5)
PATTERN = "train_images/*.tif*"


@pytest.fixture()
def messy_dataset(tiny_dataset, tmp_path):
  """The tiny dataset plus every kind of bad input next to six good slides."""
  source, slides = tiny_dataset
  data = tmp_path / "data"
  images = data / "train_images"
  images.mkdir(parents=True)
  good = slides[:6]
  for slide in good:
    shutil.copy(slide.path, images)
  (images / "emptyfile.tiff").write_bytes(b"")
  (images / "notatiff.tiff").write_text("hello")
  truncated = open(slides[6].path, "rb").read()
  (images / "truncated.tiff").write_bytes(truncated[:len(truncated) // 4])
  shutil.copy(slides[7].path, images / "unlabelled.tiff")
  rows = [f"{s.image_id},{s.data_provider},{s.isup_grade},{s.gleason_score}" for s in good]
  rows += [f"{name},radboud,1,3+3" for name in
           ("emptyfile", "notatiff", "truncated", "nofile")]
  (data / "train.csv").write_text(
      "image_id,data_provider,isup_grade,gleason_score\n" + "\n".join(rows) + "\n")
  return data, good


def test_plan_joins_labels_and_files(messy_dataset):
  data, good = messy_dataset
  tasks = {t.image_id: t for t in plan_slides(str(data), PATTERN, "train.csv")}
  assert len(tasks) == 6 + 5
  assert tasks["nofile"].path == "" and tasks["nofile"].label is not None
  assert tasks["nofile"].problem == "labelled slide has no file"
  assert tasks["unlabelled"].label is None and tasks["unlabelled"].path
  assert tasks["unlabelled"].problem == "slide file has no label in train.csv"
  assert not any(tasks[s.image_id].problem for s in good)


def test_bad_label_file_fails_before_tiling(messy_dataset):
  data, _ = messy_dataset
  with open(data / "train.csv", "a") as f:
    f.write("extra,radboud,9,5+5\n")
  with pytest.raises(LabelFileError, match="isup_grade 9 is outside"):
    plan_slides(str(data), PATTERN, "train.csv")


def test_every_slide_is_written_or_rejected_with_its_reason(messy_dataset, tmp_path):
  data, good = messy_dataset
  tasks = plan_slides(str(data), PATTERN, "train.csv")
  report_dir = str(tmp_path / "report")
  with beam.Pipeline() as pipeline:
    results = (pipeline | beam.Create(tasks) | TileSlides(TINY))
    # Keyed by patient (here the image id: PANDA has no patient ids).
    image_ids = results.examples | beam.MapTuple(
        lambda patient, s: (patient, tf.train.Example.FromString(s).features.feature[
            bag_features.IMAGE_ID].bytes_list.value[0].decode()))
    assert_that(image_ids, equal_to([(s.image_id, s.image_id) for s in good]))
    _ = results.outcomes | WriteSlideReport(report_dir)

  with open(os.path.join(report_dir, REJECTS_FILE)) as f:
    rejects = {r["image_id"]: r["reason"] for r in csv.DictReader(f)}
  assert set(rejects) == {"emptyfile", "notatiff", "truncated", "nofile", "unlabelled"}
  assert rejects["emptyfile"] == "empty file"
  assert "not a readable TIFF" in rejects["notatiff"]
  assert rejects["nofile"] == "labelled slide has no file"
  assert rejects["unlabelled"] == "slide file has no label in train.csv"
  assert rejects["truncated"]


def test_bag_example_carries_label_and_metadata(tiny_dataset):
  _, slides = tiny_dataset
  tasks = [t for t in plan_slides(str(tiny_dataset[0]), PATTERN, "train.csv")
           if t.image_id == slides[0].image_id]
  with beam.Pipeline() as pipeline:
    results = pipeline | beam.Create(tasks) | TileSlides(TINY)
    parsed = results.examples | beam.Values() | beam.Map(tf.train.Example.FromString)

    def check(examples):
      (example,) = examples
      f = example.features.feature
      assert f[bag_features.LABEL].int64_list.value == [slides[0].isup_grade]
      assert f[bag_features.PATIENT_ID].bytes_list.value == [slides[0].image_id.encode()]
      assert f[bag_features.GLEASON_SCORE].bytes_list.value == [slides[0].gleason_score.encode()]
      assert len(f[bag_features.TILES].bytes_list.value) == 4
      assert f[bag_features.LEVEL_DOWNSAMPLE].float_list.value == [4.0]
      assert f[bag_features.MPP].float_list.value[0] == pytest.approx(0.5)
    assert_that(parsed, check)


def test_split_partition_keeps_each_patient_in_one_split(tmp_path):
  """The ExampleGen hashes `patient_id` as TFX's own ExampleGen partitions on it
  (checked against TFX's partition function on the parsed bag): every bag of a
  patient lands in one split."""
  from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
  from tfx.proto import example_gen_pb2
  from tfx.utils import proto_utils

  from histopipe.bags.bag_features import SlideBag, serialize_bag
  from histopipe.components.slide_example_gen.component import SlideExampleGen
  from histopipe.beam.slide_stages import split_index
  from histopipe.core.configs import demo_config

  component = SlideExampleGen(input_base=str(tmp_path), config=demo_config())
  output = example_gen_pb2.Output()
  proto_utils.json_to_proto(component.exec_properties["output_config"], output)
  split_config = output.split_config
  buckets, total = [], 0
  for split in split_config.splits:
    total += split.hash_buckets
    buckets.append(total)
  bag = SlideBag(tiles=[b"x"], tile_valid=[1], tile_x=[0], tile_y=[0], tile_tissue=[1.0],
                 level=0, level_downsample=1.0, tile_size=1, mpp=0.0, slide_width=1,
                 slide_height=1)
  split_of_patient, splits_seen = {}, set()
  for patient in range(60):
    for slide in range(4):  # several slides (or IDC patches) per patient
      example = tf.train.Example.FromString(serialize_bag(bag, image_id=f"p{patient}-s{slide}",
                               patient_id=f"p{patient}", data_provider="x", label=0,
                               gleason_score=""))
      split = _PartitionFn(example, len(buckets), buckets, split_config)
      assert split_index(f"p{patient}", buckets) == split
      assert split_of_patient.setdefault(patient, split) == split
      splits_seen.add(split)
  assert splits_seen == {0, 1, 2}  # train, valid and eval all get patients


def test_tiling_stages_do_not_import_tensorflow():
  """Beam worker processes that tile slides must not pay for TensorFlow."""
  import subprocess
  import sys
  code = ("import sys, histopipe.beam.tile_job, histopipe.beam.slide_stages; "
          "heavy = sorted({'tensorflow', 'tfx'} & set(sys.modules)); "
          "assert not heavy, heavy")
  subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)


def test_a_worker_unpickling_the_example_gens_stages_imports_no_tensorflow():
  """What the SlideExampleGen's Beam job ships to its workers (the tiling DoFn,
  the split function, the report writer), pickled as Beam pickles them and
  loaded in a fresh process: no TensorFlow or TFX there (they cost 7-9 s per
  worker process)."""
  import subprocess
  import sys
  from apache_beam.internal import pickler
  from histopipe.components.slide_example_gen import artifact_files
  from histopipe.components.slide_example_gen import (executor as slide_example_gen)  # noqa: F401 (TFX loaded)
  from histopipe.beam.slide_stages import TileSlideFn, partition_by_patient
  from histopipe.core.configs import demo_config
  shipped = pickler.dumps([TileSlideFn(demo_config().tiling), partition_by_patient,
                           artifact_files.write_text])
  code = ("import sys; from apache_beam.internal import pickler; "
          "stages = pickler.loads(sys.stdin.buffer.read()); "
          "assert stages[1](('p1', b''), 3, [7, 8, 10]) in (0, 1, 2); "
          "heavy = sorted({'tensorflow', 'tfx'} & set(sys.modules)); "
          "assert not heavy, heavy")
  subprocess.run([sys.executable, "-W", "ignore", "-c", code], input=shipped, check=True)
