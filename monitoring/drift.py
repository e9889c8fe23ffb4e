"""Input drift: the bag image statistics of one set of bags against another's.

What is compared: the scalar image statistics every bag carries
(bag_features.IMAGE_STATISTICS: colour, stain density, tissue, focus,
compression), overall and per data provider. The statistics are TFDV's own
(`generate_statistics_from_dataframe`) and the comparison is TFDV's drift
comparator (`validate_statistics` with a Jensen-Shannon divergence threshold
on each feature), so the numbers are those TFDV users know.

Why not TFX's ExampleValidator: it validates one run's statistics against a
schema and has no input for the statistics a model was trained on. Why not
StatisticsGen's output as the current side: the baseline side must be made
the same way, and it is made in the Trainer from the training split alone
(shipped in the model as `TRAINING_STATISTICS_FILE`), so both sides are made
here, by one function, with the same slice names.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, Iterator, List, Optional

import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

from histopipe.bags import bag_features, statistics_table
from histopipe.core import layout

# Written by the Trainer under the SavedModel's assets.extra/: the image
# statistics of the bags the model was trained on (a serialized
# DatasetFeatureStatisticsList). The Pusher copies it with the model.
TRAINING_STATISTICS_FILE = "training_statistics.pb"
# TFDV's names for the whole set and for a slice by data provider.
ALL_BAGS = "All Examples"
# A frame of bags: one row a bag, its image statistics and data provider.
FRAME_COLUMNS = list(bag_features.IMAGE_STATISTICS) + [bag_features.DATA_PROVIDER]


def slice_name(provider: str) -> str:
  """TFDV's name of the slice of one data provider (as StatisticsGen's SQL slicing writes it)."""
  return f"{bag_features.DATA_PROVIDER}_{provider}"


def frame_of_examples(serialized_bags: Iterable[bytes]) -> pd.DataFrame:
  """One row per bag: its image statistics and data provider ("" when the
  bag has none, as in serving requests)."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  rows = []
  for data in serialized_bags:
    feature = example_pb2.Example.FromString(data).features.feature
    row = {name: feature[name].float_list.value[0] for name in bag_features.IMAGE_STATISTICS
           if feature[name].float_list.value}
    if len(row) != len(bag_features.IMAGE_STATISTICS):
      raise ValueError("a bag without image statistics: it was tiled before they existed; "
                       "tile the slides again")
    provider = feature[bag_features.DATA_PROVIDER].bytes_list.value
    row[bag_features.DATA_PROVIDER] = provider[0].decode() if provider else ""
    rows.append(row)
  return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def read_serialized_bags(file_patterns: Iterable[str]) -> Iterator[bytes]:
  """The serialized bags in TFRecord files (gzipped when named .gz, as TFX's
  own ExampleGens write them; ours does not compress)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for pattern in file_patterns:
    for path in sorted(tf.io.gfile.glob(pattern)):
      compression = "GZIP" if path.endswith(".gz") else ""
      for record in tf.data.TFRecordDataset(path, compression_type=compression):
        yield record.numpy()


def frame_of_table(path: str) -> Optional[pd.DataFrame]:
  """The rows of a bag statistics table (bags/statistics_table.py) as
  frame_of_examples gives them, or None when there is no such file (Examples
  written before the SlideExampleGen wrote tables, or by another ExampleGen)."""
  from tfx.dsl.io import fileio  # pylint: disable=import-outside-toplevel
  if not fileio.exists(path):
    return None
  with fileio.open(path, "rb") as f:
    rows = statistics_table.parse_table(f.read().decode("utf-8"), path)
  return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def frame_of_split_files(patterns: Iterable[str]) -> pd.DataFrame:
  """The bag statistics of the splits whose files `patterns` name
  (`<examples>/Split-<name>/*`, as TFX names them): from each split's table,
  kilobytes; from its bags only where the SlideExampleGen wrote no table."""
  frames = []
  for pattern in patterns:
    frame = frame_of_table(layout.bag_statistics_path_of_split_files(pattern))
    if frame is None:
      logging.warning("%s: no bag statistics table beside these bags: reading the bags "
                      "(Examples written by an older SlideExampleGen)", pattern)
      frame = frame_of_examples(read_serialized_bags([pattern]))
    frames.append(frame)
  return (pd.concat(frames, ignore_index=True) if frames
          else pd.DataFrame(columns=FRAME_COLUMNS))


def split_names(examples_uri: str) -> List[str]:
  """The splits of an Examples artifact, from its `Split-<name>` folders."""
  from tfx.dsl.io import fileio  # pylint: disable=import-outside-toplevel
  prefix = "/".join([examples_uri.rstrip("/"), layout.SPLIT_PREFIX])
  return sorted(path.rstrip("/")[len(prefix):] for path in fileio.glob(prefix + "*"))


def split_files(examples_uri: str, split: str) -> str:
  """The file pattern of one split of an Examples artifact, as TFX names it."""
  return "/".join([examples_uri.rstrip("/"), layout.SPLIT_PREFIX + split, "*"])


def frame_of_bags(bags: Iterable[bag_features.SlideBag], provider: str = "") -> pd.DataFrame:
  """The same rows from bags in memory (what `score` cut)."""
  rows = [{**bag.image_stats, bag_features.DATA_PROVIDER: provider} for bag in bags]
  return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def statistics_of_frame(frame: pd.DataFrame) -> statistics_pb2.DatasetFeatureStatisticsList:
  """TFDV statistics of the image statistics: all bags, then each data provider."""
  result = statistics_pb2.DatasetFeatureStatisticsList()
  groups = [(ALL_BAGS, frame)] + [
      (slice_name(provider), rows)
      for provider, rows in sorted(frame.groupby(bag_features.DATA_PROVIDER)) if provider]
  for name, rows in groups:
    if rows.empty:
      continue
    stats = tfdv.generate_statistics_from_dataframe(
        rows[list(bag_features.IMAGE_STATISTICS)].reset_index(drop=True))
    dataset = result.datasets.add()
    dataset.CopyFrom(stats.datasets[0])
    dataset.name = name
  return result


def read_statistics(path: str) -> Optional[statistics_pb2.DatasetFeatureStatisticsList]:
  """A DatasetFeatureStatisticsList file, or None when there is none."""
  from tfx.dsl.io import fileio  # pylint: disable=import-outside-toplevel
  if not fileio.exists(path):
    return None
  with fileio.open(path, "rb") as f:
    return statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())


def write_statistics(statistics: statistics_pb2.DatasetFeatureStatisticsList, path: str) -> None:
  from tfx.dsl.io import fileio  # pylint: disable=import-outside-toplevel
  fileio.makedirs(os.path.dirname(path))
  with fileio.open(path, "wb") as f:
    f.write(statistics.SerializeToString())


def model_training_statistics(model_dir: str
                              ) -> Optional[statistics_pb2.DatasetFeatureStatisticsList]:
  """The training statistics a SavedModel carries (None for models exported before)."""
  return read_statistics(os.path.join(model_dir, "assets.extra", TRAINING_STATISTICS_FILE))


def _one(dataset: statistics_pb2.DatasetFeatureStatistics
         ) -> statistics_pb2.DatasetFeatureStatisticsList:
  return statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])


def _means(dataset: statistics_pb2.DatasetFeatureStatistics) -> Dict[str, float]:
  return {feature.path.step[0]: feature.num_stats.mean for feature in dataset.features}


def _divergences(current: statistics_pb2.DatasetFeatureStatistics,
                 baseline: statistics_pb2.DatasetFeatureStatistics,
                 max_jsd: float) -> Dict[str, float]:
  """TFDV's Jensen-Shannon divergence of each image statistic."""
  schema = tfdv.infer_schema(_one(baseline))
  for name in bag_features.IMAGE_STATISTICS:
    tfdv.get_feature(schema, name).drift_comparator.jensen_shannon_divergence.threshold = max_jsd
  anomalies = tfdv.validate_statistics(_one(current), schema,
                                       previous_statistics=_one(baseline))
  return {info.path.step[0]: measurement.value
          for info in anomalies.drift_skew_info for measurement in info.drift_measurements
          if measurement.type == measurement.JENSEN_SHANNON_DIVERGENCE}


def compare(current: statistics_pb2.DatasetFeatureStatisticsList,
            baseline: Optional[statistics_pb2.DatasetFeatureStatisticsList],
            max_jsd: float, min_bags: int) -> dict:
  """The drift report: per slice (all bags, each provider) the bags on each
  side, each statistic's divergence and both means, and which statistics
  exceed `max_jsd`; `drifted` when any does. A slice with fewer than
  `min_bags` on either side is listed as skipped (too few to tell), as is one
  the baseline has no bags of. No baseline: nothing compared, not drifted."""
  report: dict = {"drifted": False, "max_jsd": max_jsd, "min_bags": min_bags,
                  "compared": baseline is not None, "slices": {}}
  if baseline is None:
    return report
  previous = {dataset.name: dataset for dataset in baseline.datasets}
  for dataset in current.datasets:
    entry: dict = {"bags": int(dataset.num_examples)}
    report["slices"][dataset.name] = entry
    before = previous.get(dataset.name)
    if before is None and ALL_BAGS in previous:
      # A site the model never saw (a new scanner, a new lab): compared with
      # all the training bags, the question being whether it looks like them.
      entry["new"] = "the model was trained on no bags of this slice: compared with all of them"
      before = previous[ALL_BAGS]
    if before is None:
      entry["skipped"] = "the model was trained on no bags of this slice"
      continue
    entry["baseline_bags"] = int(before.num_examples)
    if min(dataset.num_examples, before.num_examples) < min_bags:
      entry["skipped"] = f"fewer than {min_bags} bags on one side"
      continue
    divergences = _divergences(dataset, before, max_jsd)
    now, then = _means(dataset), _means(before)
    entry["statistics"] = {name: {"jsd": round(divergences.get(name, 0.0), 4),
                                  "mean": round(now.get(name, 0.0), 4),
                                  "baseline_mean": round(then.get(name, 0.0), 4)}
                           for name in bag_features.IMAGE_STATISTICS}
    entry["drifted"] = sorted(name for name, value in divergences.items() if value > max_jsd)
    report["drifted"] = report["drifted"] or bool(entry["drifted"])
  return report


def summary_line(report: dict) -> str:
  """One line for people: drift status and the worst statistic."""
  if not report.get("compared"):
    return "input drift: not checked (no earlier model's training statistics)"
  worst = [(stats["jsd"], name, slice_)
           for slice_, entry in report["slices"].items()
           for name, stats in entry.get("statistics", {}).items()]
  if not worst:
    return "input drift: not checked (too few bags to compare)"
  jsd, name, slice_ = max(worst)
  where = "" if slice_ == ALL_BAGS else f" ({slice_})"
  new = sorted(s for s, e in report["slices"].items() if e.get("new"))
  status = "DRIFTED" if report["drifted"] else "none"
  flagged: List[str] = sorted({f"{n}{'' if s == ALL_BAGS else ' (' + s + ')'}"
                               for s, e in report["slices"].items()
                               for n in e.get("drifted", [])})
  return (f"input drift: {status} (largest Jensen-Shannon divergence {jsd:.3f} on "
          f"{name}{where}; threshold {report['max_jsd']:g})" +
          (f"; flagged: {', '.join(flagged)}" if flagged else "") +
          (f"; not in the training bags: {', '.join(new)}" if new else ""))
