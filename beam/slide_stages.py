"""The Beam stages that tile slides, shared by the SlideExampleGen executor
and `histopipe tile`.

TileSlides: one serialized `tf.Example` bag per slide, keyed by its patient
(the ExampleGen splits on it), or a reject with its reason; WriteSlideReport:
`slides.csv` (every slide and what happened) and `rejects.csv`. Nothing here
imports TensorFlow or TFX, so Beam worker processes that run these stages
start in about a second and stay small.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import threading
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from histopipe.bags import bag_features
from histopipe.beam import tfrecord as beam_tfrecord
from histopipe.bags import example_proto, statistics_table
from histopipe.slides import previews
from histopipe.data.datasets import SlideTask
from histopipe.slides.base import SlideError
from histopipe.slides.tiling import cut_bag
from histopipe.core.configs import TilingConfig
from histopipe.core.layout import OUTCOMES_FILE, REJECTS_FILE
from histopipe.core import storage
from histopipe.core.progress import progress_bar

REJECTS_HEADER = "image_id,path,reason"
OUTCOMES_HEADER = "image_id,path,status,reason,tiles,tiles_over_cap"
COUNTERS_NAMESPACE = "SlideExampleGen"


class SlideOutcome(NamedTuple):
  image_id: str
  path: str
  status: str  # "written" or "rejected"
  reason: str
  tiles: int
  # Tissue tiles an every-tile bag left out (tiling.max_tiles).
  tiles_over_cap: int = 0


def single_worker(options: PipelineOptions) -> bool:
  """Whether a Beam job runs its DoFns in one worker (the DirectRunner in
  memory with one worker): only then is a worker's count the whole job's."""
  runner = options.view_as(StandardOptions).runner
  direct = options.view_as(DirectOptions)
  return (runner in (None, "DirectRunner", "BundleBasedDirectRunner") and
          direct.direct_num_workers == 1 and direct.direct_running_mode == "in_memory")


class ItemProgress:
  """A DoFn's progress counter: made in setup(), one step per item, shown at
  the end of each bundle and when the worker stops. `total` 0: no counter;
  `shared` (several workers): each counts its own share, with no total."""

  def __init__(self, label: str, total: int, shared: bool):
    self._label, self._total, self._shared = label, total, shared
    self._bar = None

  def setup(self) -> None:
    if self._total:
      self._bar = progress_bar(self._label, self._total, worker_share=self._shared)

  def step(self) -> None:
    if self._bar is not None:
      self._bar.update()

  def flush(self) -> None:
    if self._bar is not None:
      self._bar.refresh()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class CountingDoFn(beam.DoFn):
  """A DoFn that shows its ItemProgress: made in setup(), shown at the end of
  each bundle, closed when the worker stops. Subclasses call
  `self._progress.step()` per item."""

  def __init__(self, progress: Optional[ItemProgress] = None):
    self._progress = progress or ItemProgress("", 0, shared=False)

  def setup(self):
    # The bags are written by this worker process too (Beam fuses the stages).
    beam_tfrecord.use_fast_checksum()
    self._progress.setup()

  def finish_bundle(self):
    self._progress.flush()

  def teardown(self):
    self._progress.close()


class TileSlideFn(CountingDoFn):
  """One slide -> one serialized bag; any failure becomes an outcome with its reason.

  With `preview_dir`, writes `<image_id>.png` there for every tiled slide:
  the thumbnail the tiling returned, with the chosen tiles outlined.
  """

  def __init__(self, tiling: TilingConfig, preview_dir: str = "",
               progress: Optional[ItemProgress] = None):
    super().__init__(progress)
    self._tiling = tiling
    self._preview_dir = preview_dir
    self._written = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "slides_written")
    self._rejected = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "slides_rejected")
    self._tiles = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "tiles_written")
    self._capped_slides = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "slides_over_cap")
    self._tiles_over_cap = beam.metrics.Metrics.counter(COUNTERS_NAMESPACE, "tiles_over_cap")

  def _reject(self, task: SlideTask, reason: str):
    self._rejected.inc()
    return beam.pvalue.TaggedOutput(
        "outcomes", SlideOutcome(task.image_id, task.path, "rejected", reason, 0))

  def process(self, task: SlideTask) -> Iterator[Any]:
    yield from self._tile(task)
    self._progress.step()

  def _cut_watched(self, task: SlideTask):
    """`cut_bag` in a thread this worker waits on for twice the slide's time
    budget: the reader's own clock stops a slow decode, but a read blocked
    inside one call (a stalled network mount) never returns to look at it.
    Such a thread is abandoned, not killed (Python cannot), and the slide
    rejected. A daemon thread per slide, not a pool: an abandoned pool
    thread would hold the process open at exit."""
    seconds = self._tiling.max_seconds_per_slide
    if not seconds:
      return cut_bag(task.path, task.kind, self._tiling, task.tile_x, task.tile_y)
    outcome: Dict[str, Any] = {}

    def cut() -> None:
      try:
        outcome["tiled"] = cut_bag(task.path, task.kind, self._tiling, task.tile_x, task.tile_y)
      except BaseException as e:  # pylint: disable=broad-except (handed to the waiting thread)
        outcome["error"] = e

    thread = threading.Thread(target=cut, name=f"tile {task.image_id}", daemon=True)
    thread.start()
    thread.join(2 * seconds)
    if thread.is_alive():
      raise SlideError(task.path, f"no answer after {2 * seconds:g} s: reading is blocked "
                       "(tiling.max_seconds_per_slide)")
    if "error" in outcome:
      raise outcome["error"]
    return outcome["tiled"]

  def _tile(self, task: SlideTask) -> Iterator[Any]:
    if task.problem:
      yield self._reject(task, task.problem)
      return
    try:
      tiled = self._cut_watched(task)
    except SlideError as e:
      yield self._reject(task, e.reason)
      return
    except Exception as e:  # an item must never take the run down with it
      yield self._reject(task, f"unexpected {type(e).__name__}: {e}")
      return
    bag = tiled.bag
    if self._preview_dir and task.kind == "slide":
      previews.write_png(storage.join(self._preview_dir, f"{task.image_id}.png"),
                         previews.draw_preview(tiled.thumbnail, bag, tiled.thumbnail_downsample))
    label = task.label
    example = bag_features.serialize_bag(
        bag, image_id=label.image_id, patient_id=label.patient_id,
        data_provider=label.data_provider, label=label.label,
        gleason_score=label.gleason_score)
    tiles = sum(bag.tile_valid)
    self._written.inc()
    self._tiles.inc(tiles)
    if tiled.tiles_over_cap:
      self._capped_slides.inc()
      self._tiles_over_cap.inc(tiled.tiles_over_cap)
    key = label.patient_id or label.image_id
    yield key, example
    if bag.image_stats:
      yield beam.pvalue.TaggedOutput("statistics", (key, statistics_table.row(
          label.image_id, label.data_provider, bag.image_stats)))
    yield beam.pvalue.TaggedOutput(
        "outcomes", SlideOutcome(task.image_id, task.path, "written", "", tiles,
                                 tiled.tiles_over_cap))


def csv_line(values: Iterable[Any]) -> str:
  """One CSV row without its line end, quoted as the csv module quotes."""
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="").writerow(values)
  return buffer.getvalue()


@beam.ptransform_fn
def TileSlides(tasks, tiling: TilingConfig, preview_dir: str = "",  # pylint: disable=invalid-name
               progress: Optional[ItemProgress] = None):
  """PCollection[SlideTask] -> (examples: (patient_id, serialized tf.Example bag),
  outcomes, statistics: (patient_id, the bag's statistics_table row))."""
  return (tasks
          | "Reshuffle" >> beam.Reshuffle()  # spread slides over workers
          | "Tile" >> beam.ParDo(TileSlideFn(tiling, preview_dir, progress)).with_outputs(
              "outcomes", "statistics", main="examples"))


def split_index(patient_id: str, buckets: List[int]) -> int:
  """The split of a bag, as TFX's ExampleGen partitions on a feature: sha256 of
  the serialized feature, modulo the total of hash buckets, then the split
  whose cumulative bucket count first exceeds it (`buckets` cumulative)."""
  key = example_proto.serialize_feature("bytes", [patient_id.encode()])
  bucket = int(hashlib.sha256(key).hexdigest(), 16) % buckets[-1]
  return bisect.bisect(buckets, bucket)


def partition_by_patient(keyed_bag, num_partitions: int, buckets: List[int]) -> int:
  """beam.Partition's function over TileSlides' (patient_id, bag) pairs. Here,
  not in the executor's module: a worker that unpickles it imports this
  module only, not TFX and TensorFlow."""
  del num_partitions
  return split_index(keyed_bag[0], buckets)


def write_slide_report(outcomes: Iterable[SlideOutcome], report_dir: str,
                       write_text: Callable[[str, str], None] = storage.write_text) -> None:
  """`slides.csv` (every slide and what happened) and `rejects.csv`, sorted by
  image id; `write_text(path, text)` writes a file (fsspec for our own output
  folders, TFX's fileio inside an artifact)."""
  ordered = sorted(outcomes)
  rows = [csv_line(outcome) for outcome in ordered]
  write_text(storage.join(report_dir, OUTCOMES_FILE),
             "\n".join([OUTCOMES_HEADER] + rows) + "\n")
  rejects = [csv_line((o.image_id, o.path, o.reason)) for o in ordered if o.status == "rejected"]
  write_text(storage.join(report_dir, REJECTS_FILE),
             "\n".join([REJECTS_HEADER] + rejects) + "\n")


@beam.ptransform_fn
def WriteSlideReport(outcomes, report_dir: str,  # pylint: disable=invalid-name
                     write_text: Callable[[str, str], None] = storage.write_text):
  """The slide report of a job, written once all slides are done: one row a
  slide, so even 100,000 slides make a few MB in one place."""
  return (outcomes
          | "AllOutcomes" >> beam.combiners.ToList()
          | "WriteReport" >> beam.Map(write_slide_report, report_dir, write_text))


@beam.ptransform_fn
def WriteBagStatistics(keyed_rows, path: str,  # pylint: disable=invalid-name
                       write_text: Callable[[str, str], None] = storage.write_text):
  """One split's bag statistics table (bags/statistics_table.py), written once
  its bags are all tiled: about 250 bytes a bag, in one file."""
  return (keyed_rows
          | "DropPatientKeys" >> beam.Values()
          | "AllRows" >> beam.combiners.ToList()
          | "WriteTable" >> beam.Map(write_bag_statistics, path, write_text))


def write_bag_statistics(rows: Iterable[tuple], path: str,
                         write_text: Callable[[str, str], None] = storage.write_text) -> None:
  write_text(path, statistics_table.table_text(rows))


def read_outcomes(report_dir: str,
                  open_file: Callable[[str, str], IO] = storage.open_file) -> List[SlideOutcome]:
  """The rows of `slides.csv`; `open_file(path, mode)` as the report was written."""
  with open_file(storage.join(report_dir, OUTCOMES_FILE), "rb") as f:
    text = f.read().decode("utf-8")
  # Reports written before the cap existed have no tiles_over_cap column.
  return [SlideOutcome(r["image_id"], r["path"], r["status"], r["reason"], int(r["tiles"]),
                       int(r.get("tiles_over_cap") or 0))
          for r in csv.DictReader(io.StringIO(text))]


def summarize_outcomes(outcomes: List[SlideOutcome]) -> Dict[str, int]:
  written = [o for o in outcomes if o.status == "written"]
  return {"slides_total": len(outcomes), "slides_written": len(written),
          "slides_rejected": len(outcomes) - len(written),
          "tiles_written": sum(o.tiles for o in written),
          "slides_over_cap": sum(o.tiles_over_cap > 0 for o in written),
          "tiles_over_cap": sum(o.tiles_over_cap for o in written)}
