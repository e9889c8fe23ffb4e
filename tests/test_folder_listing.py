"""One listing per data folder: planning a run and fingerprinting its inputs
ask a bucket the same few requests whatever the number of slides, and the
fingerprint is still the one a file-by-file computation gives.

Requests are counted where they arrive: the `gcs_bucket` fixture's server
(gcp-storage-emulator, a real HTTP server in a thread of this process) routes
every request through `Router.handle`, which `requests_received` wraps.
"""

import collections
import hashlib
import io
import os
import re
import shutil

import fsspec
import pytest
from gcp_storage_emulator import server as emulator

from histopipe.core import storage
from histopipe.core.configs import demo_config
from histopipe.core.errors import UserError
from histopipe.data import datasets, synthetic
from histopipe.pipeline import local_runner
from tests.conftest import upload

# Slides are listed here, never read: the smallest the generator makes will do.
SMALL_LEVEL0 = (256, 192)
SLIDE_COUNTS = (4, 12)  # N and 3N


@pytest.fixture()
def requests_received(monkeypatch):
  """(method, path?query) of each request the emulator answers during the test."""
  received = []
  handle = emulator.Router.handle

  def recording(router, method):
    received.append((method, router._request_handler.path))  # pylint: disable=protected-access
    return handle(router, method)

  monkeypatch.setattr(emulator.Router, "handle", recording)
  return received


def _request_kinds(received) -> collections.Counter:
  """Listings (`GET .../o?prefix=`), reads of an object's bytes, and metadata
  requests (an object's or a bucket's description: what a per-file `exists`
  or `info` costs)."""
  kinds = collections.Counter()
  for _, target in received:
    path, _, query = target.partition("?")
    kinds["read" if "alt=media" in query else "list" if path.endswith("/o") else "metadata"] += 1
  return kinds


def _fresh_client(url: str) -> None:
  """Forgets gcsfs's cached listings, so each count starts as a new process does."""
  fsspec.core.url_to_fs(url)[0].invalidate_cache()


@pytest.fixture(scope="module")
def local_folders(tmp_path_factory):
  """Synthetic PANDA folders of 4 and 12 slides, by slide count."""
  work = tmp_path_factory.mktemp("listing")
  folders = {}
  for count in SLIDE_COUNTS:
    folders[count] = work / f"panda-{count}"
    synthetic.write_dataset(str(folders[count]), slides=count, seed=count,
                            level0_size=SMALL_LEVEL0)
  return folders


@pytest.fixture(scope="module")
def bucket_folders(local_folders, gcs_bucket):
  """The same folders in the emulator's bucket, by slide count."""
  return {count: upload(local, f"{gcs_bucket}/listing-{count}")
          for count, local in local_folders.items()}


def _file_by_file_fingerprint(data_dir: str, labels_name: str = datasets.PANDA_LABELS) -> str:
  """The input fingerprint as it was computed before the folder listing: a
  glob of the slides, then one `info` per file. Written here rather than
  shared with datasets, so that the two cannot go wrong together."""
  fs, root = fsspec.core.url_to_fs(data_dir)
  in_bucket = "://" in data_dir
  if in_bucket:
    _fresh_client(data_dir)
  labels = (labels_name if labels_name.startswith(("/", "gs://")) else
            f"{data_dir.rstrip('/')}/{labels_name}")
  slides = sorted(fs.unstrip_protocol(found) if in_bucket else found
                  for found in fs.glob(f"{root}/train_images/*")
                  if found.endswith(".tiff"))
  digest, total = hashlib.sha256(), 0
  for index, path in enumerate([labels] + slides):
    if fs.exists(path):
      details = fs.info(path)
      size = details["size"]
      modified = details.get("mtime") or details.get("generation")
    else:
      size, modified = -1, ""
    total += max(size, 0)
    digest.update(f"{path}\t{size}\t{modified}\n".encode())
    if index == 0 and size >= 0:
      digest.update(hashlib.sha256(fs.cat_file(path)).digest())
  return f"files:{len(slides) + 1},bytes:{total},sha256:{digest.hexdigest()}"


def test_planning_and_the_fingerprint_ask_the_same_requests_for_n_and_3n_slides(
    bucket_folders, requests_received):
  asked = {}
  for count, url in bucket_folders.items():
    for step, call in [("fingerprint", lambda: datasets.input_fingerprint(url, "panda", "")),
                       ("plan", lambda: datasets.plan(url, "auto", ""))]:
      _fresh_client(url)
      del requests_received[:]
      answer = call()
      asked[step, count] = _request_kinds(requests_received)
      if step == "plan":
        assert len(answer) == count and not any(task.problem for task in answer)
      else:
        assert answer.startswith(f"files:{count + 1},")
  n, three_n = SLIDE_COUNTS
  for step in ("fingerprint", "plan"):
    assert asked[step, n] == asked[step, three_n], asked
    # One listing, the label file's bytes, and no request about any one slide.
    assert asked[step, n]["list"] == 1 and asked[step, n]["metadata"] == 0, asked
    assert sum(asked[step, n].values()) <= 3, asked


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_the_fingerprint_is_the_file_by_file_one(where, local_folders, bucket_folders):
  folders = {"local": {c: str(p) for c, p in local_folders.items()},
             "bucket": bucket_folders}[where]
  for data_dir in folders.values():
    assert datasets.input_fingerprint(data_dir, "panda", "") == _file_by_file_fingerprint(data_dir)
    assert datasets.input_fingerprint(data_dir, "auto", "") == _file_by_file_fingerprint(data_dir)
    # A label file that is not there counts as size -1, as before.
    assert (datasets.input_fingerprint(data_dir, "panda", "", "absent.csv") ==
            _file_by_file_fingerprint(data_dir, "absent.csv"))


def test_a_label_file_outside_the_folder_is_asked_for_on_its_own(bucket_folders, gcs_bucket):
  url = bucket_folders[SLIDE_COUNTS[0]]
  elsewhere = f"{gcs_bucket}/listing-labels/grades.csv"
  storage.write_bytes(elsewhere, storage.read_bytes(f"{url}/train.csv"))
  assert (datasets.input_fingerprint(url, "panda", "", elsewhere) ==
          _file_by_file_fingerprint(url, elsewhere))


def test_the_fingerprint_changes_when_a_slide_is_rewritten_or_removed(local_folders, gcs_bucket):
  url = upload(local_folders[SLIDE_COUNTS[0]], f"{gcs_bucket}/listing-edited")
  fs, _ = fsspec.core.url_to_fs(url)
  first, second = sorted(fs.glob(f"{url}/train_images/*.tiff"))[:2]
  before = datasets.input_fingerprint(url, "panda", "")
  assert datasets.input_fingerprint(url, "panda", "") == before  # nothing changed

  # The same bytes written again: a new object, same size.
  fs.pipe_file(first, fs.cat_file(first))
  rewritten = datasets.input_fingerprint(url, "panda", "")
  assert rewritten != before and rewritten.split(",")[:2] == before.split(",")[:2]
  assert rewritten == _file_by_file_fingerprint(url)

  fs.rm_file(second)
  removed = datasets.input_fingerprint(url, "panda", "")
  assert removed not in (before, rewritten)
  assert removed.startswith(f"files:{SLIDE_COUNTS[0]},")
  assert removed == _file_by_file_fingerprint(url)


@pytest.fixture(scope="module")
def mixed_folders(local_folders, gcs_bucket, tmp_path_factory):
  """A PANDA folder that also holds IDC-style patches, a hidden file and a
  misplaced patch; locally and in the bucket."""
  local = tmp_path_factory.mktemp("patterns") / "data"
  shutil.copytree(local_folders[SLIDE_COUNTS[0]], local)
  (local / "train_images" / ".hidden.tiff").write_bytes(b"")
  for name in ("10253/0/10253_idx5_x1001_y501_class0.png", "10253/1/10253_idx5_x1_y5_class1.png",
               "8863/0/notes.png", "8863/2/8863_idx5_x1_y1_class0.png"):
    os.makedirs(local / os.path.dirname(name), exist_ok=True)
    (local / name).write_bytes(b"")
  return str(local), upload(local, f"{gcs_bucket}/listing-patterns")


@pytest.mark.parametrize("pattern", [
    "train_images/*.tiff", "train_images/*", "*", "*/*.tiff", "**/*.tiff", "**",
    "train_images/[0-9a-f]*.tiff", "train_images/?*.tif?", "train.csv", "nothing/*",
    "*/[01]/*_idx5_*_class[01].png", "*/*/*.png",
])
def test_the_listing_globs_as_fsspec_does(pattern, mixed_folders):
  """Every pattern the planner uses (and `--slides` globs a user may give),
  answered from the listing, finds what fsspec's own glob finds."""
  for folder in mixed_folders:
    listing = storage.list_folder(folder)
    full = storage.join(folder, pattern)
    assert listing.glob(full) == storage.glob(full), folder


def test_a_linked_slide_folder_is_listed_through_the_link(local_folders, tmp_path):
  """`train_images` linked from another disk: its slides are found, with their
  own size and modification time (the link's are not the slide's)."""
  source = local_folders[SLIDE_COUNTS[0]]
  data = tmp_path / "data"
  data.mkdir()
  shutil.copyfile(source / "train.csv", data / "train.csv")
  os.symlink(source / "train_images", data / "train_images")
  os.symlink(data, data / "train_images_again")  # a cycle: listed once, not forever
  assert len(datasets.plan(str(data), "panda", "")) == SLIDE_COUNTS[0]
  assert datasets.input_fingerprint(str(data), "panda", "") == _file_by_file_fingerprint(str(data))


def test_the_run_first_says_what_was_listed(local_folders, bucket_folders, requests_received,
                                            tmp_path):
  """`histopipe run`'s first line: the files the data folder's one listing
  found, and how long it took. Its output folder cannot be made, so the run
  stops right after the line (before TFX is imported)."""
  url = bucket_folders[SLIDE_COUNTS[0]]
  files = sum(len(names) for _, _, names in os.walk(local_folders[SLIDE_COUNTS[0]]))
  (tmp_path / "a_file").write_text("")
  printed = io.StringIO()
  _fresh_client(url)
  del requests_received[:]
  with pytest.raises(UserError, match="cannot create the output folder"):
    local_runner.run_local(demo_config(), url, str(tmp_path / "a_file" / "out"), stream=printed)
  assert re.fullmatch(rf"listed {files} files in {url} in \d+\.\d s\n",
                      printed.getvalue()), printed.getvalue()
  assert _request_kinds(requests_received)["list"] == 1
