"""Data in a bucket: slides, labels and outputs through a real GCS API server.

The server is gcp-storage-emulator on localhost, started by the `gcs_bucket`
fixture and found through the standard STORAGE_EMULATOR_HOST, as gcsfs and
google-cloud-storage find it; nothing histopipe-specific points at it. What
TFX writes inside artifacts goes through TensorFlow's filesystems, which
cannot reach the emulator: those paths are tested on TensorFlow's in-memory
`ram://` filesystem instead.
"""

import os
import shutil

import fsspec
import pytest
import tensorflow as tf

from histopipe import cli
from histopipe.slides import tiling
from histopipe.components.slide_example_gen import artifact_files
from histopipe.beam.slide_stages import SlideOutcome, read_outcomes, write_slide_report
from histopipe.beam.tile_job import bag_files
from histopipe.core import storage
from histopipe.core.configs import TilingConfig
from histopipe.core.layout import OUTCOMES_FILE, REJECTS_FILE
from tests.conftest import upload


@pytest.fixture(scope="module")
def bucket_data(tiny_dataset, gcs_bucket, tmp_path_factory):
  """The tiny PANDA set with one corrupt slide, locally and in the bucket."""
  source, slides = tiny_dataset
  local = tmp_path_factory.mktemp("bucket") / "data"
  shutil.copytree(source, local)
  (local / "train_images" / "corrupt.tiff").write_bytes(b"II*\x00garbage")
  with open(local / "train.csv", "a") as f:
    f.write("corrupt,radboud,2,3+4\n")
  return local, upload(local, f"{gcs_bucket}/tile-data"), slides


def _records(files, compression):
  return sorted(r.numpy() for r in tf.data.TFRecordDataset(files, compression_type=compression))


def test_storage_layer_lists_and_reads_the_bucket(bucket_data):
  local, url, slides = bucket_data
  found = storage.find(url, (".tiff",))
  assert len(found) == len(slides) + 1 and all(p.startswith(url + "/") for p in found)
  assert storage.read_bytes(storage.join(url, "train.csv")) == (local / "train.csv").read_bytes()
  described = storage.info(storage.join(url, "train.csv"))
  assert described.size == (local / "train.csv").stat().st_size and described.modified


def test_tile_reads_from_and_writes_to_the_bucket_what_it_does_locally(bucket_data, tmp_path,
                                                                      capsys):
  local, url, slides = bucket_data
  argv = ["tile", "--preset", "demo"]
  assert cli.main(argv + ["--data", str(local), "--out", str(tmp_path / "tiles")]) == 0
  assert cli.main(argv + ["--data", url, "--out", f"{url}-tiles"]) == 0
  printed = capsys.readouterr().out
  assert f"{len(slides)} of {len(slides) + 1} slides tiled" in printed
  assert f"bags: {url}-tiles/bags-*.tfrecord" in printed

  # The bags in the bucket are the local bags, record for record.
  remote_files, compression = bag_files(f"{url}-tiles")
  assert remote_files and all(f.startswith("gs://") for f in remote_files)
  scratch = tmp_path / "downloaded"
  fs, _ = fsspec.core.url_to_fs(url)
  fs.get([f[len("gs://"):] for f in remote_files], str(scratch) + "/")
  assert (_records(sorted(str(p) for p in scratch.iterdir()), compression) ==
          _records(*bag_files(str(tmp_path / "tiles"))))
  # Slide report and previews went to the bucket too.
  remote_report = storage.read_bytes(f"{url}-tiles/{REJECTS_FILE}").decode()
  assert "corrupt," in remote_report and remote_report.count("\n") == 2
  assert len(storage.find(f"{url}-tiles/previews", (".png",))) == len(slides)


def test_a_slide_in_a_bucket_is_read_in_ranges_not_downloaded(gcs_bucket, tmp_path, monkeypatch):
  from histopipe.data import synthetic
  (slide,) = synthetic.write_dataset(str(tmp_path), slides=1, seed=3, level0_size=(4096, 3072))
  url = upload(tmp_path, f"{gcs_bucket}/ranged")
  remote_path = storage.join(url, "train_images", os.path.basename(slide.path))
  monkeypatch.setattr(storage, "_BLOCK_SIZE", 16 * 1024)
  opened = []
  open_file = storage.open_file

  def spy(path, mode="rb"):
    f = open_file(path, mode)
    opened.append(f.cache)  # closing the file drops it
    return f

  monkeypatch.setattr(storage, "open_file", spy)
  config = TilingConfig(tiles_per_slide=8, tile_size=64, level=1)
  remote = tiling.cut_bag(remote_path, "slide", config)
  fetched = sum(cache.total_requested_bytes for cache in opened)
  size = os.path.getsize(slide.path)
  assert 0 < fetched < size / 2, f"fetched {fetched} of {size} bytes"
  local = tiling.cut_bag(slide.path, "slide", config)
  assert remote.bag.tiles == local.bag.tiles


def test_executor_slide_report_goes_through_tensorflow_filesystems():
  """Inside an artifact, a scheme core.storage does not write (TensorFlow's
  `ram://`) goes through TFX's fileio; no local path can stand in for it."""
  report_dir = "ram://artifact/examples/1/slide_report"
  outcomes = [SlideOutcome("b", "gs://x/b.tiff", "rejected", "not a TIFF", 0),
              SlideOutcome("a", "gs://x/a.tiff", "written", "", 8)]
  write_slide_report(outcomes, report_dir, artifact_files.write_text)
  assert not os.path.exists("ram:")
  assert tf.io.gfile.exists(f"{report_dir}/{OUTCOMES_FILE}")
  assert read_outcomes(report_dir, artifact_files.open_file) == sorted(outcomes)
  with tf.io.gfile.GFile(f"{report_dir}/{REJECTS_FILE}") as f:
    assert f.read().splitlines()[1:] == ["b,gs://x/b.tiff,not a TIFF"]


def test_labels_in_the_bucket_that_are_bad_fail_fast_naming_the_row(bucket_data, capsys):
  local, url, _ = bucket_data
  bad = url + "-bad"
  upload(local, bad)
  with fsspec.open(f"{bad}/train.csv", "w") as f:
    f.write("image_id,data_provider,isup_grade,gleason_score\nx,karolinska,seven,3+4\n")
  assert cli.main(["tile", "--data", bad, "--out", f"{bad}-tiles"]) == 2
  error = capsys.readouterr().err
  assert "train.csv" in error and "seven" in error and error.count("\n") == 1


def test_a_label_file_in_the_bucket_tells_the_format(bucket_data, gcs_bucket, tmp_path, capsys):
  """`tile --labels gs://...` with the format left to detection reads the label file's header
  from the bucket: a gcsfs file, whose readline() takes no size, as a local file does."""
  local, url, slides = bucket_data
  assert cli.main(["tile", "--preset", "demo", "--data", url, "--labels", f"{url}/train.csv",
                   "--out", str(tmp_path / "tiles")]) == 0
  assert f"{len(slides)} of {len(slides) + 1} slides tiled" in capsys.readouterr().out
  # A PCam header (with a byte-order mark and CRLF, as Excel writes it) under another name.
  from histopipe.data import datasets
  folder = f"{gcs_bucket}/pcam-header"
  with fsspec.open(f"{folder}/labels.csv", "wb") as f:
    f.write(b"\xef\xbb\xbfid,label\r\np0,1\r\n")
  assert datasets.detect_format(folder, f"{folder}/labels.csv") == "pcam"
  assert datasets.detect_format(url, f"{url}/train.csv") == "panda"
