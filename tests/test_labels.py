"""A bad label file fails fast, naming the row and the reason."""

import logging

import pytest

from histopipe.data.labels import LabelFileError, isup_from_gleason, read_panda_labels

HEADER = "image_id,data_provider,isup_grade,gleason_score\n"


def _write(tmp_path, text):
  path = tmp_path / "train.csv"
  path.write_text(text)
  return str(path)


def test_reads_rows(tmp_path):
  labels = read_panda_labels(_write(tmp_path, HEADER + "a,radboud,3,4+3\nb,karolinska,0,0+0\n"))
  assert labels["a"].label == 3 and labels["a"].data_provider == "radboud"
  assert labels["b"].patient_id == "b"  # PANDA has no patient ids


@pytest.mark.parametrize("text,message", [
    ("image_id,data_provider,gleason_score\na,radboud,3+3\n", "missing column.*isup_grade"),
    (HEADER + "a,radboud,3,4+3\nb,radboud,three,4+3\n", "row 3: isup_grade 'three' is not an integer"),
    (HEADER + "a,radboud,6,5+5\n", "row 2: isup_grade 6 is outside 0..5"),
    (HEADER + "a,radboud,-1,negative\n", "row 2: isup_grade -1 is outside"),
    (HEADER + "a,radboud,1,3+3\nb,radboud,1,3+3\na,radboud,2,3+4\n",
     "row 4: duplicated image_id 'a' \\(first at row 2\\)"),
    (HEADER + ",radboud,1,3+3\n", "row 2: empty image_id"),
])
def test_bad_label_files_fail_with_row_and_reason(tmp_path, text, message):
  with pytest.raises(LabelFileError, match=message):
    read_panda_labels(_write(tmp_path, text))


def test_missing_label_file_fails(tmp_path):
  with pytest.raises(LabelFileError, match="cannot open label file"):
    read_panda_labels(str(tmp_path / "nope.csv"))


def test_inconsistent_gleason_is_a_warning_not_an_error(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    labels = read_panda_labels(_write(tmp_path, HEADER + "a,radboud,2,4+4\n"))
  assert labels["a"].label == 2  # isup_grade wins
  assert "row 2: gleason_score 4+4 implies ISUP 4" in caplog.text


@pytest.mark.parametrize("gleason,isup", [
    ("0+0", 0), ("negative", 0), ("3+3", 1), ("3+4", 2), ("4+3", 3),
    ("4+4", 4), ("3+5", 4), ("5+3", 4), ("4+5", 5), ("5+4", 5), ("5+5", 5), ("x", None),
])
def test_isup_from_gleason(gleason, isup):
  assert isup_from_gleason(gleason) == isup
