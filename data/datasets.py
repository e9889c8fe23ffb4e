"""Which slides (or patches) a data folder holds, with their labels.

Three layouts, detected from the folder or named with `--format`:

* panda: `train.csv` (`image_id,data_provider,isup_grade,gleason_score`) and
  `train_images/<image_id>.tiff` whole-slide images -> bags of N tiles; also
  any label file with those columns and slides of any type the readers take
  (.svs, .ndpi, ...) in `train_images/`, in the folder itself, or where
  `data.slide_pattern` (`--slides GLOB`) says;
* pcam (Kaggle Histopathologic Cancer Detection): `train_labels.csv`
  (`id,label`) and `train/<id>.tif` 96x96 patches -> bags of one tile;
* idc (breast IDC): `<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<0|1>.png`
  50x50 patches, label and coordinates in the name, patient from the folder
  -> bags of one tile.

Planning never tiles: it joins labels and files, fails fast on a bad label
file, and marks each item that cannot be used with its reason (`problem`), so
the Beam stage can list it as rejected. Folders may be local or in a bucket
(core/storage.py); `input_fingerprint` tells when any input file changed.

The planner and the fingerprint list the data folder once (`list_data_folder`,
a `storage.FolderListing`) and answer every glob, existence and size from that
listing: in a bucket, a few paged requests however many slides, instead of a
request or two per slide. Each takes a listing already made (`listing=`), so
that a caller that plans and then fingerprints (or detects the format first)
lists the folder once.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import posixpath
import re
from typing import Dict, List, NamedTuple, Optional

from histopipe.slides import dicom_reader
from histopipe.data.labels import (PANDA_COLUMNS, SlideLabel, read_binary_labels,
                                         read_panda_labels)
from histopipe.slides.base import SLIDE_SUFFIXES
from histopipe.core import storage
from histopipe.core.errors import UserError

FORMATS = ("panda", "pcam", "idc")
PANDA_LABELS = "train.csv"
PANDA_SLIDES = "train_images/*"
PCAM_LABELS = "train_labels.csv"
PCAM_PATCHES = "train/*.tif"
IDC_PATCHES = "*/*/*.png"
PATCH_SUFFIXES = (".png", ".jpg", ".jpeg")
# Bytes of a label file read to find its header when telling the format.
HEADER_BYTES = 65536
IDC_NAME = re.compile(r"(?P<patient>.+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png")


class SlideTask(NamedTuple):
  """One input item: a slide, or a patch that becomes a bag of one tile."""
  image_id: str
  path: str  # "" when a labelled item has no file
  label: Optional[SlideLabel]  # None when a file has no label
  kind: str = "slide"  # "slide" (tile a WSI) or "patch" (the image is the tile)
  problem: str = ""  # why it cannot be used, found while planning
  tile_x: int = 0  # a patch's level-0 position in its slide, when known
  tile_y: int = 0


def image_id_from_path(path: str) -> str:
  """The file's name without its image type (`.svs`, `.ome.tiff`, `.png`,
  ...), so dotted names keep their dots (TCGA's `...-DX1.<uuid>.svs`, a
  DICOM instance named by its UID); a slide folder (DICOM) keeps its name."""
  name = storage.basename(path.rstrip("/"))
  lowered = name.lower()
  for suffix in SLIDE_SUFFIXES + PATCH_SUFFIXES:
    if lowered.endswith(suffix) and len(name) > len(suffix):
      name = name[:-len(suffix)]
      break
  return name[:-len(".ome")] if name.lower().endswith(".ome") else name


class DatasetError(UserError, ValueError):
  """A data folder that is missing, or whose layout cannot be told."""


def list_data_folder(data_dir: str) -> storage.FolderListing:
  """Every file under `data_dir`, listed once; a DatasetError when it is not a folder."""
  listing = storage.list_folder(data_dir)
  # An empty listing is a missing folder, or an empty one (or bucket).
  if not listing.is_folder and not storage.isdir(data_dir):
    raise DatasetError(f"{data_dir}: no such data folder")
  return listing


def _listed(data_dir: str, listing: Optional[storage.FolderListing]) -> storage.FolderListing:
  return listing if listing is not None else list_data_folder(data_dir)


def _require_folder(data_dir: str) -> None:
  if not storage.isdir(data_dir):
    raise DatasetError(f"{data_dir}: no such data folder")


def _glob(pattern: str, listing: Optional[storage.FolderListing]) -> List[str]:
  """The paths `pattern` matches: from the listing when there is one, else
  from the store (a listing of the pattern's folder)."""
  return listing.glob(pattern) if listing is not None else storage.glob(pattern)


def _exists(path: str, listing: Optional[storage.FolderListing]) -> bool:
  return listing.exists(path) if listing is not None else storage.exists(path)


def _label_columns(path: str) -> List[str]:
  """The header of a CSV file ([] if it cannot be read)."""
  try:
    # A bounded read, not readline(size): an fsspec file (gcsfs, s3fs) has a
    # readline() that takes no size, and a label file may be one huge line.
    with storage.open_file(path, "rb") as f:
      prefix = f.read(HEADER_BYTES).decode("utf-8-sig", errors="replace")
  except (OSError, ValueError):
    return []
  header = next(csv.reader(prefix.splitlines()[:1]), [])
  return [column.strip() for column in header]


def detect_format(data_dir: str, labels_file: str = "",
                  listing: Optional[storage.FolderListing] = None) -> str:
  """The layout of `data_dir`: by its label file's columns when one is named,
  else by the files it holds (from `listing` when given; else a few probes,
  cheaper than a listing for a caller that needs nothing more)."""
  if listing is None:
    _require_folder(data_dir)
  if labels_file:
    columns = _label_columns(labels_path(data_dir, labels_file))
    if set(PANDA_COLUMNS) <= set(columns):
      return "panda"
    if {"id", "label"} <= set(columns):
      return "pcam"
  if _exists(storage.join(data_dir, PANDA_LABELS), listing):
    return "panda"
  if _exists(storage.join(data_dir, PCAM_LABELS), listing):
    return "pcam"
  if _glob(storage.join(data_dir, "*", "[01]", "*_idx5_*_class[01].png"), listing):
    return "idc"
  raise DatasetError(f"{data_dir}: cannot tell the dataset format: no {PANDA_LABELS} "
                   f"(panda), no {PCAM_LABELS} (pcam), no <patient>/<0|1>/*_idx5_*.png "
                   "(idc); name it with --format")


def with_detected_format(config, data_dir: str,
                         listing: Optional[storage.FolderListing] = None):
  """`config` with `data.format` "auto" replaced by the format of `data_dir`."""
  if config.data.format != "auto":
    return config
  return dataclasses.replace(config, data=dataclasses.replace(
      config.data, format=detect_format(data_dir, config.data.labels_file, listing)))


def slide_pattern(data_dir: str, pattern: str,
                  listing: Optional[storage.FolderListing] = None) -> str:
  """The glob the slides are searched with: `pattern` (relative to the data
  folder, or absolute), or by default `train_images/*` when slides are there
  (PANDA), else the data folder's own files."""
  if pattern:
    return pattern if storage.is_url(pattern) else storage.join(data_dir, pattern)
  return storage.join(data_dir, default_slide_pattern(data_dir, listing))


def default_slide_pattern(data_dir: str,
                          listing: Optional[storage.FolderListing] = None) -> str:
  """`train_images/*` when slides are there, else `*` (relative)."""
  return (PANDA_SLIDES if _slides_matching(storage.join(data_dir, PANDA_SLIDES), listing)
          else "*")


def _slides_matching(full_pattern: str,
                     listing: Optional[storage.FolderListing] = None) -> List[str]:
  """Matching files of a slide type, and local folders of DICOM instances
  (one slide each); the loose `.dcm` instances of one slide listed once."""
  matches = _glob(full_pattern, listing)
  slides = [path for path in matches
            if path.lower().endswith(SLIDE_SUFFIXES) or
            (not storage.is_url(path) and dicom_reader.is_dicom_folder(path))]
  return slides if storage.is_url(full_pattern) else dicom_reader.one_file_per_slide(slides)


def files_of_slide(path: str) -> List[str]:
  """The files reading the slide `path` opens: a DICOM slide's instances, or the file."""
  if storage.is_url(path) or not (path.lower().endswith(dicom_reader.DICOM_SUFFIX) or
                                  dicom_reader.is_dicom_folder(path)):
    return [path]
  return dicom_reader.instance_files(path)


def slide_files(data_dir: str, pattern: str,
                listing: Optional[storage.FolderListing] = None) -> List[str]:
  """The slide files `slide_pattern` finds, of the types the readers take
  (the default's folder listed once)."""
  if pattern:
    return _slides_matching(slide_pattern(data_dir, pattern), listing)
  return (_slides_matching(storage.join(data_dir, PANDA_SLIDES), listing) or
          _slides_matching(storage.join(data_dir, "*"), listing))


def _unread_files(data_dir: str, pattern: str,
                  listing: Optional[storage.FolderListing] = None) -> Dict[str, str]:
  """Files where `slide_files` searches whose type no reader takes (a Zeiss
  `.czi`), by each image id their name may carry: `a.b.czi` under `a` and `a.b`,
  so a dotted id matches as it does for the slides."""
  patterns = ([slide_pattern(data_dir, pattern)] if pattern else
              [storage.join(data_dir, PANDA_SLIDES), storage.join(data_dir, "*")])
  found: Dict[str, str] = {}
  for path in (p for full in patterns for p in _glob(full, listing)):
    name = storage.basename(path)
    if name.lower().endswith(SLIDE_SUFFIXES):
      continue
    for dot in (index for index, char in enumerate(name) if char == "." and index):
      found.setdefault(name[:dot], path)
  return found


def _unread_type_problem(path: str) -> str:
  name = storage.basename(path)
  suffix = posixpath.splitext(name)[1]
  return (f"the slide's file {name} is there, but no reader takes {suffix} files "
          f"(types read: {', '.join(SLIDE_SUFFIXES)})")


def _require_most_files(labels, paths, data_dir: str, pattern: str, labels_name: str,
                        unread: Optional[Dict[str, str]] = None) -> None:
  """Most labelled items without a file means the slides are elsewhere (a flat
  folder, another extension): one error naming the pattern searched and what
  the folder holds, instead of a job that rejects every slide."""
  missing = [image_id for image_id in labels if image_id not in paths]
  if not labels or len(missing) * 2 <= len(labels):
    return
  entries = storage.listdir(data_dir)
  shown = ", ".join(entries[:6]) + (f", … ({len(entries)} entries)" if len(entries) > 6 else "")
  unread = unread or {}
  of_unread_type = sorted({posixpath.splitext(unread[image_id])[1] for image_id in missing
                           if image_id in unread})
  hint = (f"; no reader takes their files' type ({', '.join(of_unread_type)}): the readers "
          f"take {', '.join(SLIDE_SUFFIXES)}" if of_unread_type else
          "; say where the slides are with --slides GLOB (data.slide_pattern)")
  raise DatasetError(
      f"{len(missing)} of {len(labels)} slides in {labels_name} have no slide file matching "
      f"{pattern!r} (the folder {data_dir} holds: {shown or 'nothing'}){hint}")


def _join(labels, paths, labels_name: str, kind: str,
          unread: Optional[Dict[str, str]] = None) -> List[SlideTask]:
  unread = unread or {}
  tasks = []
  for image_id in sorted(set(labels) | set(paths)):
    label, path = labels.get(image_id), paths.get(image_id, "")
    if label and path:
      problem = ""
    elif label:
      problem = (_unread_type_problem(unread[image_id]) if image_id in unread else
                 "labelled slide has no file")
    else:
      problem = f"slide file has no label in {labels_name}"
    tasks.append(SlideTask(image_id, path, label, kind=kind, problem=problem))
  return tasks


def labels_path(data_dir: str, labels_file: str) -> str:
  """The label file: a path or URL as given, or relative to the data folder."""
  if storage.is_url(labels_file) or labels_file.startswith("/"):
    return labels_file
  return storage.join(data_dir, labels_file)


def plan_panda(data_dir: str, pattern: str, labels_file: str,
               listing: Optional[storage.FolderListing] = None) -> List[SlideTask]:
  listing = _listed(data_dir, listing)
  labels = read_panda_labels(labels_path(data_dir, labels_file))
  paths = {image_id_from_path(p): p for p in slide_files(data_dir, pattern, listing)}
  # Only looked for when a labelled slide has no file.
  unread = (_unread_files(data_dir, pattern, listing)
            if any(image_id not in paths for image_id in labels) else {})
  _require_most_files(labels, paths, data_dir, slide_pattern(data_dir, pattern, listing),
                      storage.basename(labels_file), unread)
  return _join(labels, paths, storage.basename(labels_file), kind="slide", unread=unread)


def plan_pcam(data_dir: str, labels_file: str = PCAM_LABELS,
              listing: Optional[storage.FolderListing] = None) -> List[SlideTask]:
  listing = _listed(data_dir, listing)
  labels = read_binary_labels(labels_path(data_dir, labels_file), data_provider="pcam")
  paths = {image_id_from_path(p): p for p in listing.glob(storage.join(data_dir, PCAM_PATCHES))}
  _require_most_files(labels, paths, data_dir, storage.join(data_dir, PCAM_PATCHES),
                      storage.basename(labels_file))
  return _join(labels, paths, storage.basename(labels_file), kind="patch")


def plan_idc(data_dir: str,
             listing: Optional[storage.FolderListing] = None) -> List[SlideTask]:
  tasks = []
  for path in _listed(data_dir, listing).glob(storage.join(data_dir, IDC_PATCHES)):
    class_folder = storage.basename(storage.dirname(path))
    patient = storage.basename(storage.dirname(storage.dirname(path)))
    image_id = image_id_from_path(path)
    match = IDC_NAME.fullmatch(storage.basename(path))
    if not match:
      tasks.append(SlideTask(image_id, path, None, kind="patch",
                             problem="file name is not <patient>_idx5_x<X>_y<Y>_class<0|1>.png"))
      continue
    label = int(match["label"])
    problem = ""
    if class_folder != match["label"]:
      problem = f"class{label} in the file name but in folder {class_folder!r}"
    elif match["patient"] != patient:
      problem = f"patient {match['patient']} in the file name but in folder {patient!r}"
    tasks.append(SlideTask(
        image_id, path,
        SlideLabel(image_id=image_id, patient_id=patient, data_provider="idc",
                   label=label, gleason_score=""),
        kind="patch", problem=problem, tile_x=int(match["x"]), tile_y=int(match["y"])))
  return tasks


def plan(data_dir: str, data_format: str, pattern: str, labels_file: str = "",
         listing: Optional[storage.FolderListing] = None) -> List[SlideTask]:
  """Every item of the folder (from `listing`, or one listing of it made
  here); raises LabelFileError on a bad label file."""
  listing = _listed(data_dir, listing)
  if data_format == "auto":
    data_format = detect_format(data_dir, labels_file, listing)
  if data_format == "panda":
    return plan_panda(data_dir, pattern, labels_file or PANDA_LABELS, listing)
  if data_format == "pcam":
    return plan_pcam(data_dir, labels_file or PCAM_LABELS, listing)
  if data_format == "idc":
    return plan_idc(data_dir, listing)
  raise DatasetError(f"unknown format {data_format!r}; choose from auto, {', '.join(FORMATS)}")


def input_files(data_dir: str, data_format: str, pattern: str, labels_file: str = "",
                listing: Optional[storage.FolderListing] = None) -> List[str]:
  """Every file a run reads from the folder: the label file and the slides or patches."""
  listing = _listed(data_dir, listing)
  if data_format == "auto":
    data_format = detect_format(data_dir, labels_file, listing)
  if data_format == "idc":
    return listing.glob(storage.join(data_dir, IDC_PATCHES))
  if data_format == "panda":
    return [labels_path(data_dir, labels_file or PANDA_LABELS)] + [
        file for slide in slide_files(data_dir, pattern, listing)
        for file in files_of_slide(slide)]
  if data_format == "pcam":
    return [labels_path(data_dir, labels_file or PCAM_LABELS)] + listing.glob(
        storage.join(data_dir, PCAM_PATCHES))
  raise DatasetError(f"unknown format {data_format!r}; choose from auto, {', '.join(FORMATS)}")


def input_fingerprint(data_dir: str, data_format: str, pattern: str, labels_file: str = "",
                      listing: Optional[storage.FolderListing] = None) -> str:
  """Changes whenever a label file or an input file is added, removed, resized
  or rewritten: the label file's bytes (small, and an edit in the same second
  as the last write still counts), and the size and modification time or
  object generation of each slide (slides are not read), all from one listing
  of the folder (a label file elsewhere is asked for on its own)."""
  listing = _listed(data_dir, listing)
  if data_format == "auto":
    data_format = detect_format(data_dir, labels_file, listing)
  digest = hashlib.sha256()
  files = input_files(data_dir, data_format, pattern, labels_file, listing)
  total = 0
  for index, path in enumerate(files):
    described = listing.info(path)  # size -1: no such file (a label file not there)
    total += max(described.size, 0)
    digest.update(f"{path}\t{described.size}\t{described.modified}\n".encode())
    if index == 0 and data_format != "idc" and described.size >= 0:  # the label file
      digest.update(hashlib.sha256(storage.read_bytes(path)).digest())
  return f"files:{len(files)},bytes:{total},sha256:{digest.hexdigest()}"
