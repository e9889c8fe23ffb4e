"""Runs the pipeline on this machine with LocalDagRunner (MLMD in SQLite).

What a person sees is one line per component as it starts and ends (or is
taken from the cache), and the Trainer's epochs; TFX's, Beam's and
TensorFlow's own logging goes to `OUT/run.log`, where it can be read when a
step fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from unittest import mock
from typing import Iterator, Optional, TextIO

from histopipe.data import datasets
from histopipe.core.configs import PipelineConfig
from histopipe.core.layout import RunPaths
from histopipe.core import library_logs, storage
from histopipe.core.storage import make_output_dir

class PipelineFailed(Exception):
  """A step of the run failed; names the step and where its log is."""

  def __init__(self, step: str, cause: BaseException, log_path: str):
    super().__init__(f"failed in {step or 'the runner'}: {type(cause).__name__}: {cause} "
                     f"(the whole log: {log_path})")
    self.step, self.cause, self.log_path = step, cause, log_path


class _ComponentProgress:
  """One line per component as it starts, and as it ends: how long it took,
  or that it came from the cache (the execution's state in ML Metadata)."""

  def __init__(self, total: int, stream: TextIO, metadata_path: str):
    self._total, self._stream, self._metadata_path = total, stream, metadata_path
    self._count = 0
    self.current = ""  # the component running now

  def _print(self, text: str) -> None:
    print(f"[{self._count}/{self._total}] {text}", file=self._stream, flush=True)

  def started(self, node: str) -> float:
    self._count += 1
    self.current = node
    self._print(f"{node} ...")
    return time.time()

  def finished(self, node: str, started: float, execution_id: Optional[int]) -> None:
    from histopipe.reports import lineage  # pylint: disable=import-outside-toplevel (TFX: slow)
    how = f"done in {time.time() - started:.0f} s"
    if execution_id is not None and lineage.is_cached(self._metadata_path, execution_id):
      how = "cached"
    self._print(f"{node}: {how}")

  @contextlib.contextmanager
  def watching(self) -> Iterator[None]:
    """Reports each component TFX's launcher runs (LocalDagRunner launches
    one component at a time, in this process)."""
    from tfx.orchestration.portable import launcher  # pylint: disable=import-outside-toplevel
    launch = launcher.Launcher.launch
    progress = self

    def reported_launch(self):
      node = self._pipeline_node.node_info.id  # pylint: disable=protected-access
      started = progress.started(node)
      execution_info = launch(self)
      progress.finished(node, started,
                        execution_info.execution_id if execution_info else None)
      return execution_info

    with mock.patch.object(launcher.Launcher, "launch", reported_launch):
      yield


@contextlib.contextmanager
def _quiet_run(log_path: str, components: int, stream: Optional[TextIO],
               metadata_path: str) -> Iterator[_ComponentProgress]:
  """Library logs to `log_path`; one line per component to `stream` (default:
  the terminal's stderr)."""
  with library_logs.logging_to(log_path, stream) as terminal:
    progress = _ComponentProgress(components, terminal, metadata_path)
    with progress.watching():
      try:
        yield progress
      except BaseException:
        logging.error("the run failed in %s", progress.current or "the runner")
        raise


def run_local(config: PipelineConfig, data_root: str, out_dir: str,
              enable_cache: bool = True, stream: Optional[TextIO] = None) -> RunPaths:
  """Runs every component on `data_root`; artifacts, ML Metadata, pushed
  models and `run.log` go under `out_dir` (see RunPaths). With `enable_cache`,
  steps whose inputs, settings and code are unchanged reuse earlier outputs.

  The data folder and its label file are checked first, so a missing folder
  or a bad label row fails in a second, before TFX starts; the first line
  says how many files the folder's one listing found, and how long it took
  (in a bucket, the wait before anything else happens).
  """
  data_root = storage.absolute(data_root)
  listing = datasets.list_data_folder(data_root)
  config = datasets.with_detected_format(config, data_root, listing)
  datasets.plan(data_root, config.data.format, config.data.slide_pattern, config.data.labels_file,
                listing)
  print(f"listed {len(listing.files):,} files in {data_root} in {listing.seconds:.1f} s",
        file=stream or sys.stderr, flush=True)
  paths = RunPaths(os.path.abspath(out_dir))
  make_output_dir(paths.out_dir)
  # TFX takes seconds to import: only once the inputs are known to be usable.
  from tfx import v1 as tfx  # pylint: disable=import-outside-toplevel
  if config.training.cpu_replicas:
    # Every step runs in this process and TensorFlow fixes its devices at its
    # first op (the Transform's): the Trainer's logical CPUs are made now.
    from histopipe.trainer import devices  # pylint: disable=import-outside-toplevel
    devices.split_cpu(config.training.cpu_replicas)
  from histopipe.pipeline import pipeline as pipeline_dag  # pylint: disable=import-outside-toplevel
  dag = pipeline_dag.create_pipeline(
      config,
      data_root=data_root,
      pipeline_root=paths.pipeline_root,
      serving_model_dir=paths.serving_model_dir,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(paths.metadata_path),
      enable_cache=enable_cache)
  log_path = paths.run_log
  with _quiet_run(log_path, len(dag.components), stream, paths.metadata_path) as progress:
    try:
      tfx.orchestration.LocalDagRunner().run(dag)
    except Exception as e:  # any step's failure: the log has its traceback
      raise PipelineFailed(progress.current, e, log_path) from e
  return paths
