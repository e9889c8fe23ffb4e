"""The Beam stages that tile slides, shared by the SlideExampleGen executor
and `histopipe tile`.

TileSlides: one serialized `tf.Example` bag per slide, or a reject with its
reason; WriteSlideReport: `slides.csv` (every slide and what happened) and
`rejects.csv`. Nothing here imports TensorFlow or TFX, so Beam worker
processes that run these stages start in about a second and stay small.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from typing import Any, Dict, Iterator, List, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from histopipe.components import bag_features
from histopipe.components.datasets import SlideTask
from histopipe.components.slide_reader import SlideError
from histopipe.components.tiling import cut_bag
from histopipe.core.configs import TilingConfig

REJECTS_FILE = "rejects.csv"
OUTCOMES_FILE = "slides.csv"
REJECTS_HEADER = "image_id,path,reason"
OUTCOMES_HEADER = "image_id,path,status,reason,tiles"
COUNTERS_NAMESPACE = "SlideExampleGen"


class SlideOutcome(NamedTuple):
  image_id: str
  path: str
  status: str  # "written" or "rejected"
  reason: str
  tiles: int


class ProgressCounter:
  """"<label>: done/total (rate/s)" on stderr, redrawn at most once a second.
  Made in a DoFn's setup(): each Beam worker counts the slides it handled."""

  def __init__(self, label: str, total: int):
    self._label, self._total = label, total
    self._done, self._start, self._last_print = 0, time.time(), 0.0

  def step(self) -> None:
    self._done += 1
    now = time.time()
    if not self._total or (now - self._last_print < 1.0 and self._done < self._total):
      return
    self._last_print = now
    rate = self._done / max(now - self._start, 1e-9)
    print(f"{self._label}: {self._done}/{self._total} ({rate:.1f} slides/s)", file=sys.stderr,
          end="\n" if self._done >= self._total else "\r", flush=True)


class TileSlideFn(beam.DoFn):
  """One slide -> one serialized bag; any failure becomes an outcome with its reason.

  With `preview_dir`, writes `<image_id>.png` there for every tiled slide.
  With `progress_total`, prints a counter with rate to stderr (per worker).
  """

  def __init__(self, tiling: TilingConfig, preview_dir: str = "", progress_total: int = 0):
    self._tiling = tiling
    self._preview_dir = preview_dir
    self._progress_total = progress_total
    self._written = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "slides_written")
    self._rejected = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "slides_rejected")
    self._tiles = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "tiles_written")

  def setup(self):
    self._progress = ProgressCounter("tiling slides", self._progress_total)

  def _reject(self, task: SlideTask, reason: str):
    self._rejected.inc()
    return beam.pvalue.TaggedOutput(
        "outcomes", SlideOutcome(task.image_id, task.path, "rejected", reason, 0))

  def process(self, task: SlideTask) -> Iterator[Any]:
    yield from self._tile(task)
    self._progress.step()

  def _tile(self, task: SlideTask) -> Iterator[Any]:
    if task.problem:
      yield self._reject(task, task.problem)
      return
    try:
      preview = (os.path.join(self._preview_dir, f"{task.image_id}.png")
                 if self._preview_dir and task.kind == "slide" else "")
      bag = cut_bag(task.path, task.kind, self._tiling, task.tile_x, task.tile_y, preview)
    except SlideError as e:
      yield self._reject(task, e.reason)
      return
    except Exception as e:  # an item must never take the run down with it
      yield self._reject(task, f"unexpected {type(e).__name__}: {e}")
      return
    label = task.label
    example = bag_features.serialize_bag(
        bag, image_id=label.image_id, patient_id=label.patient_id,
        data_provider=label.data_provider, label=label.label,
        gleason_score=label.gleason_score)
    tiles = sum(bag.tile_valid)
    self._written.inc()
    self._tiles.inc(tiles)
    yield example
    yield beam.pvalue.TaggedOutput(
        "outcomes", SlideOutcome(task.image_id, task.path, "written", "", tiles))


def _csv_line(values) -> str:
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="").writerow(values)
  return buffer.getvalue()


@beam.ptransform_fn
def TileSlides(tasks, tiling: TilingConfig, preview_dir: str = "",  # pylint: disable=invalid-name
               progress_total: int = 0):
  """PCollection[SlideTask] -> (examples: serialized tf.Example bags, outcomes)."""
  return (tasks
          | "Reshuffle" >> beam.Reshuffle()  # spread slides over workers
          | "Tile" >> beam.ParDo(TileSlideFn(tiling, preview_dir, progress_total)).with_outputs(
              "outcomes", main="examples"))


@beam.ptransform_fn
def WriteSlideReport(outcomes, report_dir: str):  # pylint: disable=invalid-name
  """`slides.csv` (every slide and what happened) and `rejects.csv`."""
  (outcomes
   | "FormatOutcomes" >> beam.Map(_csv_line)
   | "WriteOutcomes" >> beam.io.WriteToText(
       os.path.join(report_dir, OUTCOMES_FILE), shard_name_template="",
       header=OUTCOMES_HEADER))
  return (outcomes
          | "OnlyRejects" >> beam.Filter(lambda o: o.status == "rejected")
          | "FormatRejects" >> beam.Map(lambda o: _csv_line((o.image_id, o.path, o.reason)))
          | "WriteRejects" >> beam.io.WriteToText(
              os.path.join(report_dir, REJECTS_FILE), shard_name_template="",
              header=REJECTS_HEADER))


def read_outcomes(report_dir: str) -> List[SlideOutcome]:
  # Beam's file systems read local paths and the pipeline's object stores alike.
  with FileSystems.open(os.path.join(report_dir, OUTCOMES_FILE)) as raw:
    f = io.TextIOWrapper(raw, encoding="utf-8")
    return [SlideOutcome(r["image_id"], r["path"], r["status"], r["reason"], int(r["tiles"]))
            for r in csv.DictReader(f)]


def summarize_outcomes(outcomes: List[SlideOutcome]) -> Dict[str, int]:
  written = [o for o in outcomes if o.status == "written"]
  return {"slides_total": len(outcomes), "slides_written": len(written),
          "slides_rejected": len(outcomes) - len(written),
          "tiles_written": sum(o.tiles for o in written)}
