"""Libraries' logging into a file, so a command's terminal output stays its own.

TFX, Beam, TFMA and TensorFlow log at INFO/WARNING through Python's logging
(absl's handler prints them), warn through `warnings`, and TensorFlow's C++
side writes to file descriptor 2 directly. A person running a command wants
its own lines and its result; the rest belongs in a log file they can read
when something fails. Handwritten because no library moves all three
channels (Python logging, warnings, the raw fd) at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator, Optional, TextIO


@contextlib.contextmanager
def _fd2_to(log_file: TextIO) -> Iterator[None]:
  """File descriptor 2 into `log_file`: C++ logging writes there, past Python."""
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
def logging_to(log_path: str, stream: Optional[TextIO] = None) -> Iterator[TextIO]:
  """Library logging (INFO and up), Python warnings and fd 2 appended to the
  local file `log_path`; yields the stream for the person at the terminal
  (`stream`, default a copy of the terminal's stderr). ERROR records still
  reach the terminal through the handlers already there, and an exception
  raised inside is logged with its traceback before it propagates.
  """
  terminal = None
  if stream is None and sys.stderr is sys.__stderr__:
    # A copy of the terminal's stderr: file descriptor 2 is about to go to the log.
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
  root = logging.getLogger()
  absl = logging.getLogger("absl")  # TFX logs through absl, WARNING and up by default
  with open(log_path, "a") as log:
    log_file = logging.StreamHandler(log)
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    quieted = {handler: handler.level for handler in root.handlers}
    for handler in quieted:  # absl's handler and any other would print to the terminal
      handler.setLevel(logging.ERROR)
    previous_levels = root.level, absl.level
    root.setLevel(logging.INFO)
    absl.setLevel(logging.INFO)
    root.addHandler(log_file)
    logging.captureWarnings(True)
    try:
      with warnings.catch_warnings(), _fd2_to(log):
        warnings.simplefilter("default")
        try:
          yield stream or terminal or sys.stderr
        except BaseException:
          logging.exception("failed")
          raise
    finally:
      logging.captureWarnings(False)
      root.removeHandler(log_file)
      root.setLevel(previous_levels[0])
      absl.setLevel(previous_levels[1])
      for handler, level in quieted.items():
        handler.setLevel(level)
      if terminal is not None:
        terminal.close()
