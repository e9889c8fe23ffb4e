"""Per-slide skew: which of one slide's image statistics lie outside what the model saw.

The batch check (drift.compare) needs `evaluation.min_drift_bags` bags on
each side before a Jensen-Shannon divergence means anything, so a lab that
scores five slides from a new scanner learns nothing from it. This check
needs one slide: each of its bag's image statistics
(bag_features.IMAGE_STATISTICS) against the central range of the same
statistic over the model's training bags, from the 0.5th to the 99.5th
percentile. A statistic below or above it is named in the slide's record.

The range comes from the training statistics the model carries
(drift.TRAINING_STATISTICS_FILE, TFDV's DatasetFeatureStatisticsList, the
"All Examples" dataset, as drift.statistics_of_frame writes it with TFDV's
default StatsOptions): each numeric feature's two histograms, both made by
TFDV from one sketch of 1000 quantiles.
- QUANTILES: `num_quantiles_histogram_buckets` buckets, 10 by default, each
  holding a tenth of the bags: its edges are the minimum, the deciles and
  the maximum. Alone it places the 0.5th percentile 1/20 of the way from the
  minimum to the 10th percentile: resolution one decile, and in a long tail
  that is nearly the minimum itself.
- STANDARD: `num_histogram_buckets` (10) buckets of equal width between the
  minimum and the maximum, with the share of bags in each: resolution a
  tenth of the training range, which in the tails is the narrower bracket.
A percentile is interpolated linearly by sample count inside the bucket that
holds it, in whichever histogram's bucket is narrower (in practice the
STANDARD one at 0.5 and 99.5). Measured against numpy.percentile of the
training values (tests/test_slide_skew.py): within a tenth of the training
range, one STANDARD bucket (on 80 synthetic lab bags at most 0.54 of one,
0.33 standard deviations; QUANTILES alone 0.41 standard deviations there,
and 1.35 on 240 such bags, where the minimum lies further out).

The verdict is a pure function of a record's rounded `image_stats` and the
rounded range (beside each flagged value in the record; all of them in
`score`'s skew.json), so a program reading them gets the same answer again.
"""

from __future__ import annotations

import collections
from typing import Dict, Iterable, Optional, Tuple

from tensorflow_metadata.proto.v0 import statistics_pb2

from histopipe.bags import bag_features
from histopipe.monitoring import drift

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
# Decimals of the values and bounds written in records (as `image_stats`).
RECORD_DECIMALS = 4
# The record key: {statistic: {"value", "low", "high"}} for each statistic out
# of range ({} when none), or None when the model carries no training statistics.
OUT_OF_RANGE = "out_of_range"

_HISTOGRAM_TYPES = (statistics_pb2.Histogram.QUANTILES, statistics_pb2.Histogram.STANDARD)


def percentile_in_histogram(histogram: statistics_pb2.Histogram, percent: float
                            ) -> Tuple[float, float]:
  """The `percent`-th percentile (0-100) of the values a histogram summarizes,
  linear inside the bucket that holds it by sample counts (TFDV's counts are
  interpolated, not whole), and that bucket's width: how well it is known."""
  buckets = sorted(histogram.buckets, key=lambda bucket: bucket.low_value)
  total = sum(bucket.sample_count for bucket in buckets)
  if not buckets or total <= 0:
    raise ValueError("a histogram without samples")
  wanted = percent / 100.0 * total
  below = 0.0
  for bucket in buckets:
    if bucket.sample_count > 0 and below + bucket.sample_count >= wanted:
      share = max(wanted - below, 0.0) / bucket.sample_count
      width = bucket.high_value - bucket.low_value
      return bucket.low_value + share * width, width
    below += bucket.sample_count
  return buckets[-1].high_value, 0.0


def training_percentile(numbers: statistics_pb2.NumericStatistics, percent: float) -> float:
  """The percentile from whichever of TFDV's two histograms brackets it in the
  narrower bucket (in the tails, the STANDARD one); the minimum or maximum
  where TFDV wrote no histogram (StatsOptions can turn them off)."""
  estimates = [percentile_in_histogram(histogram, percent)
               for histogram in numbers.histograms
               if histogram.type in _HISTOGRAM_TYPES and
               sum(bucket.sample_count for bucket in histogram.buckets) > 0]
  if not estimates:
    return numbers.min if percent < 50 else numbers.max
  return min(estimates, key=lambda estimate: estimate[1])[0]


def _range_of(feature: statistics_pb2.FeatureNameStatistics) -> Optional[Dict[str, float]]:
  if not feature.HasField("num_stats") or not feature.num_stats.common_stats.num_non_missing:
    return None
  return {"low": round(training_percentile(feature.num_stats, LOW_PERCENTILE), RECORD_DECIMALS),
          "high": round(training_percentile(feature.num_stats, HIGH_PERCENTILE),
                        RECORD_DECIMALS)}


def training_ranges(statistics: Optional[statistics_pb2.DatasetFeatureStatisticsList]
                    ) -> Optional[Dict[str, Dict[str, float]]]:
  """{image statistic: {"low", "high"}}, the 0.5th-99.5th percentile of the
  training bags (all of them, not a provider's slice); None when there are no
  training statistics. A statistic the model's statistics lack (a model
  trained before it existed) is left out: not checked."""
  if statistics is None:
    return None
  datasets = {dataset.name: dataset for dataset in statistics.datasets}
  if drift.ALL_BAGS not in datasets:
    return None
  ranges = {}
  for feature in datasets[drift.ALL_BAGS].features:
    name = feature.path.step[0] if feature.path.step else feature.name
    if name in bag_features.IMAGE_STATISTICS:
      found = _range_of(feature)
      if found is not None:
        ranges[name] = found
  return ranges


def out_of_range(image_stats: Dict[str, float],
                 ranges: Optional[Dict[str, Dict[str, float]]]
                 ) -> Optional[Dict[str, Dict[str, float]]]:
  """The slide's statistics outside their training range, each with its value
  and the range, in IMAGE_STATISTICS order ({} when all are inside); None when
  there is no range to check against. Values are compared as the record
  writes them (RECORD_DECIMALS)."""
  if ranges is None:
    return None
  outside = {}
  for name in bag_features.IMAGE_STATISTICS:
    if name not in image_stats or name not in ranges:
      continue
    value = round(float(image_stats[name]), RECORD_DECIMALS)
    bounds = ranges[name]
    if value < bounds["low"] or value > bounds["high"]:
      outside[name] = {"value": value, "low": bounds["low"], "high": bounds["high"]}
  return outside


def summarize(records: Iterable[dict]) -> dict:
  """Over the predicted records (rejected ones have no bag): slides checked,
  slides out of range, and per statistic how many slides it put out of range
  (most first). `checked` is false when any predicted record was not checked
  (its model gave no range) or none was predicted."""
  slides = flagged = unchecked = 0
  by_statistic: collections.Counter = collections.Counter()
  for record in records:
    if "rejected" in record:
      continue
    outside = record.get(OUT_OF_RANGE)
    if outside is None:
      unchecked += 1
      continue
    slides += 1
    flagged += bool(outside)
    by_statistic.update(outside.keys())
  return {"checked": slides > 0 and not unchecked, "slides": slides, "out_of_range": flagged,
          "not_checked": unchecked,
          "statistics": dict(sorted(by_statistic.items(), key=lambda item: (-item[1], item[0]))),
          "percentiles": [LOW_PERCENTILE, HIGH_PERCENTILE]}


def summary_line(summary: dict, not_checked_reason: str) -> str:
  """One line for people, e.g. `per-slide skew: 3 of 5 slides outside the
  training range (img_od_eosin 3, img_mean_b 2)`; `not_checked_reason` says
  why when the records were not checked."""
  if not summary["slides"] and not summary["not_checked"]:
    return "per-slide skew: not checked (no slide was predicted)"
  if not summary["checked"]:
    return f"per-slide skew: not checked ({not_checked_reason})"
  named = ", ".join(f"{name} {count}" for name, count in summary["statistics"].items())
  return (f"per-slide skew: {summary['out_of_range']} of {summary['slides']} slides outside "
          f"the training range" + (f" ({named})" if named else
                                   f" ({LOW_PERCENTILE:g}th-{HIGH_PERCENTILE:g}th percentile)"))
