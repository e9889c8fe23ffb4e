"""Reads and validates PANDA's `train.csv` before any slide is tiled.

A bad label file fails fast with the row and the reason: a pipeline that tiles
10,000 slides and then trips over row 7,312 wastes hours.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
from typing import Dict, Optional

from histopipe.core.configs import ISUP_GRADES
from histopipe.core import storage
from histopipe.core.errors import UserError

PANDA_COLUMNS = ("image_id", "data_provider", "isup_grade", "gleason_score")


class LabelFileError(UserError, ValueError):
  """The label file cannot be used; names the file, row and reason."""


@dataclasses.dataclass(frozen=True)
class SlideLabel:
  image_id: str
  patient_id: str
  data_provider: str
  label: int
  gleason_score: str


def isup_from_gleason(gleason_score: str) -> Optional[int]:
  """ISUP grade group of a Gleason score like '4+3'; None if unparseable."""
  text = gleason_score.strip().lower()
  if text in ("negative", "0+0"):
    return 0
  match = re.fullmatch(r"([3-5])\+([3-5])", text)
  if not match:
    return None
  primary, secondary = int(match.group(1)), int(match.group(2))
  total = primary + secondary
  if total <= 6:
    return 1
  if total == 7:
    return 2 if primary == 3 else 3
  return 4 if total == 8 else 5


def _open_csv(path: str, required: tuple):
  """(rows with their line numbers, header) of a CSV; raises on missing columns."""
  try:
    raw = storage.open_file(path, "rb")
  except (OSError, ValueError) as e:  # fsspec: FileNotFoundError; a bad URL: ValueError
    raise LabelFileError(f"{path}: cannot open label file "
                         f"({getattr(e, 'strerror', None) or e})") from None
  with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
    reader = csv.DictReader(f)
    try:
      header = [name.strip() for name in (reader.fieldnames or [])]
      missing = [c for c in required if c not in header]
      if missing:
        raise LabelFileError(f"{path}: missing column(s) {', '.join(missing)} "
                             f"(header is {','.join(header) or 'empty'})")
      # Line 1 is the header, so data rows start at line 2.
      return [(number, {k.strip(): (v or "").strip() for k, v in row.items() if k})
              for number, row in enumerate(reader, start=2)]
    except UnicodeDecodeError as e:
      raise LabelFileError(f"{path}: not UTF-8 text (byte {e.start} of a line after "
                           f"row {reader.line_num})") from None


def _integer_label(where: str, column: str, text: str, allowed: range) -> int:
  try:
    value = int(text)
  except ValueError:
    raise LabelFileError(f"{where}: {column} {text!r} is not an integer") from None
  if value not in allowed:
    raise LabelFileError(f"{where}: {column} {value} is outside "
                         f"{allowed.start}..{allowed.stop - 1}")
  return value


def _check_id(where: str, column: str, image_id: str, first_row: Dict[str, int]) -> None:
  if not image_id:
    raise LabelFileError(f"{where}: empty {column}")
  if image_id in first_row:
    raise LabelFileError(f"{where}: duplicated {column} {image_id!r} "
                         f"(first at row {first_row[image_id]})")


def read_binary_labels(path: str, data_provider: str) -> Dict[str, SlideLabel]:
  """Kaggle Histopathologic Cancer Detection `train_labels.csv` (`id,label`)."""
  labels: Dict[str, SlideLabel] = {}
  first_row: Dict[str, int] = {}
  for row_number, row in _open_csv(path, ("id", "label")):
    where = f"{path} row {row_number}"
    image_id = row["id"]
    _check_id(where, "id", image_id, first_row)
    label = _integer_label(where, "label", row["label"], range(2))
    labels[image_id] = SlideLabel(image_id=image_id, patient_id=image_id,
                                  data_provider=data_provider, label=label,
                                  gleason_score="")
    first_row[image_id] = row_number
  return labels


def read_panda_labels(path: str) -> Dict[str, SlideLabel]:
  """`image_id -> SlideLabel`; raises LabelFileError on the first bad row.

  An ISUP grade inconsistent with its Gleason score is logged as a warning,
  not an error: real PANDA labels contain such rows.
  """
  labels: Dict[str, SlideLabel] = {}
  first_row: Dict[str, int] = {}
  for row_number, row in _open_csv(path, PANDA_COLUMNS):
    where = f"{path} row {row_number}"
    image_id = row["image_id"]
    _check_id(where, "image_id", image_id, first_row)
    grade = _integer_label(where, "isup_grade", row["isup_grade"], range(ISUP_GRADES))
    gleason = row["gleason_score"]
    implied = isup_from_gleason(gleason)
    if implied is not None and implied != grade:
      logging.warning("%s: gleason_score %s implies ISUP %d but isup_grade "
                      "is %d; keeping isup_grade", where, gleason, implied, grade)
    labels[image_id] = SlideLabel(image_id=image_id, patient_id=image_id,
                                  data_provider=row["data_provider"],
                                  label=grade, gleason_score=gleason)
    first_row[image_id] = row_number
  return labels
