"""`histopipe tile`: the SlideExampleGen's Beam stages, outside TFX.

Same planning, tiling and reject handling as the executor; writes
`OUT/bags-*.tfrecord` (`.tfrecord.gz` with `gzip=True`), `OUT/rejects.csv`,
`OUT/slides.csv`, `OUT/summary.json` and `OUT/previews/<image_id>.png`, for
people to look at and for benchmarks and checks.

Bags are not gzipped by default: their tiles are PNG or JPEG already, so gzip
saves 2.5% of the bytes and cost 104 ms per PANDA-size slide, as much as
tiling the slide (bench/tiling.py, 12 slides).
"""

from __future__ import annotations

import json
import time
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from histopipe.data import datasets
from histopipe.beam.gcs import connect_anonymously_to_emulator
from histopipe.beam.slide_stages import (ItemProgress, TileSlides, WriteSlideReport,
                                               read_outcomes, single_worker, summarize_outcomes)
from histopipe.core.configs import PipelineConfig
from histopipe.core import storage
from histopipe.core.storage import make_output_dir
from histopipe.core.layout import REJECTS_FILE

BAGS_PREFIX = "bags"
SUMMARY_FILE = "summary.json"
PREVIEWS_DIR = "previews"


def run_tile_job(data_dir: str, out_dir: str, config: PipelineConfig,
                 labels_file: Optional[str] = None,
                 beam_pipeline_args: Sequence[str] = (),
                 previews: bool = True, progress: bool = True,
                 gzip: bool = False) -> Dict[str, float]:
  """Tiles every slide of `data_dir`; returns (and writes) the summary.

  `labels_file` may be absolute or relative to `data_dir` (default: the
  config's). A bad label file raises before any slide is tiled.
  """
  start = time.time()
  tasks = datasets.plan(data_dir, config.data.format, config.data.slide_pattern,
                        labels_file or config.data.labels_file)
  make_output_dir(out_dir)
  preview_dir = make_output_dir(storage.join(out_dir, PREVIEWS_DIR)) if previews else ""
  options = PipelineOptions(list(beam_pipeline_args or config.beam_pipeline_args))
  connect_anonymously_to_emulator()
  counter = ItemProgress("tiling slides", len(tasks) if progress else 0,
                         shared=not single_worker(options))
  with beam.Pipeline(options=options) as pipeline:
    results = (pipeline
               | "ListSlides" >> beam.Create(tasks)
               | "TileSlides" >> TileSlides(config.tiling, preview_dir=preview_dir,
                                            progress=counter))
    _ = (results.examples
         | "DropPatientKeys" >> beam.Values()
         | "WriteBags" >> beam.io.WriteToTFRecord(
             storage.join(out_dir, BAGS_PREFIX),
             file_name_suffix=".tfrecord.gz" if gzip else ".tfrecord"))
    _ = results.outcomes | "WriteSlideReport" >> WriteSlideReport(out_dir)

  summary = {**summarize_outcomes(read_outcomes(out_dir)),
             "seconds": round(time.time() - start, 3)}
  storage.write_text(storage.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2))
  return summary


def describe(summary: Dict[str, float], out_dir: str, gzip: bool = False,
             previews: bool = True) -> str:
  """What a tile job did and where its outputs are, for people."""
  bags = f"{BAGS_PREFIX}-*.tfrecord" + (".gz" if gzip else "")
  return (f"{summary['slides_written']} of {summary['slides_total']} slides tiled "
          f"({summary['tiles_written']} tiles), {summary['slides_rejected']} rejected, "
          f"in {summary['seconds']:.1f} s\n" +
          (f"tiling.max_tiles left out {summary['tiles_over_cap']} tissue tiles of "
           f"{summary['slides_over_cap']} slides (slides.csv: tiles_over_cap)\n"
           if summary.get("slides_over_cap") else "") +
          f"bags: {storage.join(out_dir, bags)}; rejects: {storage.join(out_dir, REJECTS_FILE)}" +
          (f"; previews: {storage.join(out_dir, PREVIEWS_DIR)}/" if previews else ""))


def bag_files(out_dir: str) -> Tuple[List[str], str]:
  """The bag files a tile job wrote and their TFRecord compression type
  ("GZIP" or ""), as `tf.data.TFRecordDataset` takes them."""
  gzipped = storage.glob(storage.join(out_dir, f"{BAGS_PREFIX}-*.tfrecord.gz"))
  if gzipped:
    return gzipped, "GZIP"
  return storage.glob(storage.join(out_dir, f"{BAGS_PREFIX}-*.tfrecord")), ""
