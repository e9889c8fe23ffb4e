"""PatchCamelyon and IDC layouts: bags of one tile, labels, patients, rejects."""

import csv
import dataclasses
import glob
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tifffile

from histopipe.bags import bag_features
from histopipe.data import datasets
from histopipe.data import synthetic
from histopipe.data.labels import LabelFileError
from histopipe.beam.tile_job import bag_files, run_tile_job
from histopipe.core.configs import demo_config

from tests.dicom_wsi import write_dicom_wsi


def _auto_config():
  """The demo config with the format detected from the folder, as `histopipe tile` does."""
  config = demo_config()
  return dataclasses.replace(config, data=dataclasses.replace(config.data, format="auto"))


def _patch(seed, size):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture()
def pcam_dir(tmp_path):
  data = tmp_path / "pcam"
  (data / "train").mkdir(parents=True)
  for index in range(4):
    tifffile.imwrite(str(data / "train" / f"p{index}.tif"), _patch(index, 96),
                     photometric="rgb")
  (data / "train" / "unlabelled.tif").write_bytes(
      open(data / "train" / "p0.tif", "rb").read())
  (data / "train" / "broken.tif").write_bytes(b"II*\x00broken")
  (data / "train_labels.csv").write_text(
      "id,label\np0,0\np1,1\np2,1\np3,0\nbroken,1\nmissing,0\n")
  return data


@pytest.fixture()
def idc_dir(tmp_path):
  data = tmp_path / "idc"
  for patient, label, x, y in [("10253", 0, 1001, 501), ("10253", 1, 1051, 501),
                               ("8863", 0, 51, 101)]:
    folder = data / patient / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{patient}_idx5_x{x}_y{y}_class{label}.png"
    cv2.imwrite(str(folder / name), _patch(x, 50))
  # Wrong folder for its class, and a name that is not IDC's.
  cv2.imwrite(str(data / "8863" / "0" / "8863_idx5_x1_y1_class1.png"), _patch(1, 50))
  cv2.imwrite(str(data / "8863" / "0" / "notes.png"), _patch(2, 50))
  return data


def test_formats_are_detected_from_the_folder(pcam_dir, idc_dir, tiny_dataset, tmp_path):
  assert datasets.detect_format(str(tiny_dataset[0])) == "panda"
  assert datasets.detect_format(str(pcam_dir)) == "pcam"
  assert datasets.detect_format(str(idc_dir)) == "idc"
  with pytest.raises(ValueError, match="cannot tell the dataset format"):
    datasets.detect_format(str(tmp_path))


def _bags(out):
  files, compression = bag_files(str(out))
  examples = [tf.train.Example.FromString(r.numpy())
              for r in tf.data.TFRecordDataset(files, compression_type=compression)]
  return {e.features.feature[bag_features.IMAGE_ID].bytes_list.value[0].decode(): e
          for e in examples}


def _rejects(out):
  with open(out / "rejects.csv") as f:
    return {r["image_id"]: r["reason"] for r in csv.DictReader(f)}


def test_pcam_patches_become_bags_of_one_tile(pcam_dir, tmp_path):
  out = tmp_path / "out"
  summary = run_tile_job(str(pcam_dir), str(out), _auto_config(), progress=False, gzip=True)
  assert bag_files(str(out))[1] == "GZIP" and glob.glob(str(out / "bags-*.tfrecord.gz"))
  assert summary["slides_total"] == 7 and summary["slides_written"] == 4
  bags = _bags(out)
  features = bags["p1"].features.feature
  assert features[bag_features.LABEL].int64_list.value == [1]
  assert features[bag_features.TILE_VALID].int64_list.value == [1]
  tile = cv2.imdecode(np.frombuffer(features[bag_features.TILES].bytes_list.value[0],
                                    np.uint8), cv2.IMREAD_COLOR)
  np.testing.assert_array_equal(cv2.cvtColor(tile, cv2.COLOR_BGR2RGB), _patch(1, 96))
  rejects = _rejects(out)
  assert rejects["missing"] == "labelled slide has no file"
  assert rejects["unlabelled"] == "slide file has no label in train_labels.csv"
  assert "TIFF" in rejects["broken"]  # the reader names what is wrong


def test_idc_patches_take_patient_and_coordinates_from_names(idc_dir, tmp_path):
  out = tmp_path / "out"
  summary = run_tile_job(str(idc_dir), str(out), _auto_config(), progress=False)
  assert summary["slides_total"] == 5 and summary["slides_written"] == 3
  features = _bags(out)["10253_idx5_x1051_y501_class1"].features.feature
  assert features[bag_features.PATIENT_ID].bytes_list.value == [b"10253"]
  assert features[bag_features.LABEL].int64_list.value == [1]
  assert features[bag_features.TILE_X].int64_list.value == [1051]
  assert features[bag_features.TILE_Y].int64_list.value == [501]
  rejects = _rejects(out)
  assert rejects["8863_idx5_x1_y1_class1"] == "class1 in the file name but in folder '0'"
  assert "file name is not" in rejects["notes"]


@pytest.mark.parametrize("text,message", [
    ("id,label\na,0\na,1\n", "row 3: duplicated id 'a'"),
    ("id,label\na,2\n", "row 2: label 2 is outside 0..1"),
    ("id,target\na,1\n", "missing column"),
])
def test_bad_pcam_label_file_fails_before_tiling(tmp_path, text, message):
  (tmp_path / "train").mkdir()
  (tmp_path / "train_labels.csv").write_text(text)
  with pytest.raises(LabelFileError, match=message):
    datasets.plan(str(tmp_path), "pcam", "")


REAL_SLIDES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures",
                           "real-slides")


def test_a_folder_of_scanner_files_with_a_label_csv_needs_no_config(tmp_path, capsys):
  """Aperio and Hamamatsu files and a DICOM slide folder side by side in one
  folder, a label CSV with PANDA's columns under another name, and a file
  that is not a slide:
  `histopipe tile --data D --labels L` finds the slides (any type the
  readers take), tells the format from the CSV's columns and tiles them."""
  import shutil
  from histopipe import cli
  data = tmp_path / "lab"
  data.mkdir()
  shutil.copy(os.path.join(REAL_SLIDES, "CMU-1-Small-Region.svs"), data / "case-1.svs")
  shutil.copy(os.path.join(REAL_SLIDES, "CMU-1-Small-Region.svs"), data / "case-2.SVS")
  shutil.copy(os.path.join(REAL_SLIDES, "test3-DAPI-2.ndpi"), data / "case-3.ndpi")
  write_dicom_wsi(os.path.join(REAL_SLIDES, "CMU-1-Small-Region.svs"), str(data / "case-4"), 0.499)
  (data / "notes.txt").write_text("not a slide")
  (data / "grades.csv").write_text("image_id,data_provider,isup_grade,gleason_score\n"
                                   "case-1,lab,2,3+4\ncase-2,lab,0,negative\n"
                                   "case-3,lab,1,3+3\ncase-4,lab,3,4+4\n")
  out = tmp_path / "out"
  assert cli.main(["tile", "--data", str(data), "--labels", "grades.csv",
                   "--out", str(out)]) == 0
  assert "4 of 4 slides tiled" in capsys.readouterr().out
  with open(out / "slides.csv", encoding="utf-8") as f:
    assert {row["image_id"]: row["status"] for row in csv.DictReader(f)} == {
        "case-1": "written", "case-2": "written", "case-3": "written", "case-4": "written"}


def test_slides_elsewhere_are_one_clear_error_and_slides_glob_finds_them(tmp_path, capsys):
  """Slides in a folder the default does not search: not a job that rejects
  every slide and exits 0, but one line naming the pattern searched and what
  the folder holds, exit status 2; `--slides GLOB` then finds them."""
  from histopipe import cli
  data = tmp_path / "data"
  slides = synthetic.write_dataset(str(data), 3, seed=2, level0_size=(1024, 768))
  os.rename(data / "train_images", data / "scans")
  assert cli.main(["tile", "--data", str(data), "--out", str(tmp_path / "out")]) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1
  assert f"3 of 3 slides in train.csv have no slide file matching {str(data / '*')!r}" in error
  assert "scans" in error and "train.csv" in error and "--slides GLOB" in error
  assert cli.main(["tile", "--data", str(data), "--slides", "scans/*.tiff",
                   "--out", str(tmp_path / "out")]) == 0
  assert f"{len(slides)} of {len(slides)} slides tiled" in capsys.readouterr().out


def test_tile_exits_non_zero_when_no_slide_was_tiled(tmp_path, capsys):
  from histopipe import cli
  data = tmp_path / "data"
  slides = synthetic.write_dataset(str(data), 2, seed=3, level0_size=(1024, 768))
  for slide in slides:
    with open(slide.path, "wb") as f:
      f.write(b"not a slide")
  assert cli.main(["tile", "--data", str(data), "--out", str(tmp_path / "out")]) == 1
  captured = capsys.readouterr()
  assert "0 of 2 slides tiled" in captured.out and "no slide was tiled" in captured.err


def test_a_relative_labels_path_is_taken_from_the_current_folder_first(pcam_dir, tmp_path,
                                                                        monkeypatch, capsys):
  """`--labels pcam/train_labels.csv` from the folder above the data, as a shell user
  means it; a name that is no file here is still looked for in --data; one found in
  neither place is one line naming both."""
  from histopipe import cli
  monkeypatch.chdir(tmp_path)
  argv = ["tile", "--preset", "demo", "--data", "pcam"]
  # pcam_dir: 4 readable labelled patches of 7 items (train_labels.csv's 6 rows and one
  # unlabelled file).
  assert cli.main(argv + ["--labels", "pcam/train_labels.csv", "--out", "here"]) == 0
  assert "4 of 7 slides tiled" in capsys.readouterr().out
  assert cli.main(argv + ["--labels", "train_labels.csv", "--out", "in-data"]) == 0
  assert "4 of 7 slides tiled" in capsys.readouterr().out
  assert cli.main(argv + ["--labels", "labels/none.csv", "--out", "none"]) == 2
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("histopipe tile: error: --labels labels/none.csv: no such file in "
                         f"the current folder ({tmp_path})")
  assert line.endswith(f"nor in --data ({os.path.join('pcam', 'labels', 'none.csv')})")


def test_a_labelled_slide_of_a_type_no_reader_takes_is_not_called_missing(tmp_path):
  """A file that is there with an extension the readers do not take (a Zeiss .czi) is
  rejected naming the file and the types that are read, not as "has no file"; a QPTIFF
  (Akoya) is a TIFF slide and is planned with its file."""
  data = tmp_path / "data"
  synthetic.write_dataset(str(data), 4, seed=5, level0_size=(1024, 768))
  images = data / "train_images"
  (images / "zeiss-1.czi").write_bytes(b"ZISRAWFILE")
  (images / "akoya-1.qptiff").write_bytes((images / os.listdir(images)[0]).read_bytes())
  with open(data / "train.csv", "a") as f:
    f.write("zeiss-1,lab,1,3+3\nakoya-1,lab,2,3+4\nnowhere,lab,0,negative\n")
  tasks = {task.image_id: task for task in datasets.plan(str(data), "panda", "")}
  assert tasks["akoya-1"].path == str(images / "akoya-1.qptiff")
  assert tasks["akoya-1"].problem == ""
  zeiss = tasks["zeiss-1"].problem
  assert zeiss.startswith("the slide's file zeiss-1.czi is there, but no reader takes .czi "
                          "files (types read: .tif, .tiff, .svs, ")
  assert ".qptiff" in zeiss and ".dcm" in zeiss
  assert tasks["nowhere"].problem == "labelled slide has no file"


def test_slides_all_of_an_unread_type_are_one_error_naming_the_type(tmp_path):
  """Every labelled slide there as a .czi: not "say where the slides are", which they
  are, but the type no reader takes and the types read."""
  data = tmp_path / "data"
  (data / "train_images").mkdir(parents=True)
  for image_id in ("a", "b.1"):
    (data / "train_images" / f"{image_id}.czi").write_bytes(b"ZISRAWFILE")
  (data / "train.csv").write_text("image_id,data_provider,isup_grade,gleason_score\n"
                                  "a,lab,1,3+3\nb.1,lab,0,negative\n")
  with pytest.raises(datasets.DatasetError) as failed:
    datasets.plan(str(data), "panda", "")
  message = str(failed.value)
  assert message.startswith("2 of 2 slides in train.csv have no slide file matching")
  assert "no reader takes their files' type (.czi): the readers take .tif, .tiff" in message
  assert "--slides" not in message
