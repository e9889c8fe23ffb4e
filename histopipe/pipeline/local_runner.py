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
import warnings
from unittest import mock
from typing import Iterator, Optional, TextIO

from histopipe.components import datasets
from histopipe.core.configs import PipelineConfig
from histopipe.core.layout import RunPaths
from histopipe.core import storage
from histopipe.core.storage import make_output_dir

RUN_LOG = "run.log"


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
def _stderr_to(log_file: TextIO) -> Iterator[None]:
  """File descriptor 2 into `log_file`: TensorFlow's and XLA's C++ logging
  write there directly, past Python's logging and warnings."""
  sys.stderr.flush()
  saved = os.dup(2)
  os.dup2(log_file.fileno(), 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


@contextlib.contextmanager
def _quiet_run(log_path: str, components: int, stream: Optional[TextIO],
               metadata_path: str) -> Iterator[_ComponentProgress]:
  """Library logging, Python warnings and C++ logs to `log_path`; one line
  per component to `stream` (default: the terminal's stderr)."""
  terminal = None
  if stream is None and sys.stderr is sys.__stderr__:
    # A copy of the terminal's stderr: file descriptor 2 is about to go to the log.
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
  progress = _ComponentProgress(components, stream or terminal or sys.stderr, metadata_path)
  root = logging.getLogger()
  with open(log_path, "a") as log:
    log_file = logging.StreamHandler(log)
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    quieted = {}
    # absl's handler (TFX logs through absl) and any other handler on the root
    # logger would print to the terminal: they stay, at ERROR.
    for handler in root.handlers:
      quieted[handler] = handler.level
      handler.setLevel(logging.ERROR)
    previous_level = root.level
    root.setLevel(logging.INFO)
    absl = logging.getLogger("absl")  # TFX logs through absl, WARNING and up by default
    previous_absl_level = absl.level
    absl.setLevel(logging.INFO)
    root.addHandler(log_file)
    logging.captureWarnings(True)
    try:
      with warnings.catch_warnings(), _stderr_to(log), progress.watching():
        warnings.simplefilter("default")
        try:
          yield progress
        except BaseException:
          logging.exception("the run failed in %s", progress.current or "the runner")
          raise
    finally:
      logging.captureWarnings(False)
      root.removeHandler(log_file)
      root.setLevel(previous_level)
      absl.setLevel(previous_absl_level)
      for handler, level in quieted.items():
        handler.setLevel(level)
      if terminal is not None:
        terminal.close()


def run_local(config: PipelineConfig, data_root: str, out_dir: str,
              enable_cache: bool = True, stream: Optional[TextIO] = None) -> RunPaths:
  """Runs every component on `data_root`; artifacts, ML Metadata, pushed
  models and `run.log` go under `out_dir` (see RunPaths). With `enable_cache`,
  steps whose inputs, settings and code are unchanged reuse earlier outputs.

  The data folder and its label file are checked first, so a missing folder
  or a bad label row fails in a second, before TFX starts.
  """
  data_root = storage.absolute(data_root)
  config = datasets.with_detected_format(config, data_root)
  datasets.plan(data_root, config.data.format, config.data.slide_pattern, config.data.labels_file)
  paths = RunPaths(os.path.abspath(out_dir))
  make_output_dir(paths.out_dir)
  # TFX takes seconds to import: only once the inputs are known to be usable.
  from tfx import v1 as tfx  # pylint: disable=import-outside-toplevel
  from histopipe.pipeline import pipeline as pipeline_dag  # pylint: disable=import-outside-toplevel
  dag = pipeline_dag.create_pipeline(
      config,
      data_root=data_root,
      pipeline_root=paths.pipeline_root,
      serving_model_dir=paths.serving_model_dir,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(paths.metadata_path),
      enable_cache=enable_cache)
  log_path = os.path.join(paths.out_dir, RUN_LOG)
  with _quiet_run(log_path, len(dag.components), stream, paths.metadata_path) as progress:
    try:
      tfx.orchestration.LocalDagRunner().run(dag)
    except Exception as e:  # any step's failure: the log has its traceback
      raise PipelineFailed(progress.current, e, log_path) from e
  return paths
