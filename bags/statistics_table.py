"""The bag statistics table: one row a bag (its image id, data provider and
image statistics), written by the SlideExampleGen beside each split's bags.

DriftCheck, the Trainer's training statistics, ModelCard and the report need
a dozen floats a bag; reading them from the bags parses every 36-tile proto
(1-5 MB a bag at the `full` preset, tens of GB at PANDA scale), once per
reader per run. The table holds the same numbers in about 250 bytes a bag.

A value is written as the bag stores it, a float32 (`tf.train.FloatList`),
in the shortest text that reads back to that float32 exactly, so a table
gives the very numbers its bags give.
"""

from __future__ import annotations

import csv
import io
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

from histopipe.bags import bag_features

HEADER = (bag_features.IMAGE_ID, bag_features.DATA_PROVIDER) + bag_features.IMAGE_STATISTICS


class StatisticsTableError(ValueError):
  """A table that is not one this module wrote."""


def as_stored(value: float) -> float:
  """`value` as a bag stores it (float32), as a Python float."""
  return float(np.float32(value))


def row(image_id: str, data_provider: str, image_stats: Mapping[str, float]) -> tuple:
  """One bag's row; its image statistics must be all of IMAGE_STATISTICS."""
  if set(image_stats) != set(bag_features.IMAGE_STATISTICS):
    raise ValueError(f"{image_id}: a bag without image statistics: it was tiled before they "
                     "existed; tile the slides again")
  return (image_id, data_provider) + tuple(
      repr(as_stored(image_stats[name])) for name in bag_features.IMAGE_STATISTICS)


def table_text(rows: Iterable[Sequence[str]]) -> str:
  """The CSV text of `rows` under HEADER, sorted by image id."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(HEADER)
  writer.writerows(sorted(rows))
  return buffer.getvalue()


def parse_table(text: str, where: str) -> List[Dict[str, object]]:
  """The rows of a table: image id and provider as text, statistics as floats."""
  reader = csv.reader(io.StringIO(text))
  header = tuple(next(reader, ()))
  if header != HEADER:
    raise StatisticsTableError(f"{where}: not a bag statistics table (header {header[:3]}...)")
  rows = []
  for number, values in enumerate(reader, 2):
    if len(values) != len(HEADER):
      raise StatisticsTableError(f"{where}: line {number} has {len(values)} fields, not "
                                 f"{len(HEADER)}")
    parsed: Dict[str, object] = {bag_features.IMAGE_ID: values[0],
                                 bag_features.DATA_PROVIDER: values[1]}
    parsed.update((name, float(value))
                  for name, value in zip(bag_features.IMAGE_STATISTICS, values[2:]))
    rows.append(parsed)
  return rows
