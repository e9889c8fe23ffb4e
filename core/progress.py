"""Progress counters for long work: one helper over tqdm, for the CLI and Beam stages.

Beam spreads a job over worker processes, and a worker does not know in
advance what share of the job it will get. So a counter that belongs to one
worker of several (`worker_share=True`) shows what that worker has done and
its rate, names its process, and shows no total: a total would make each
worker's counter look like the whole job's.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, TextIO

from tqdm import tqdm


def progress_bar(label: str, total: Optional[int] = None, unit: str = "slides", *,
                 worker_share: bool = False, stream: Optional[TextIO] = None,
                 enabled: bool = True) -> tqdm:
  """A counter with rate on `stream` (stderr); `update()` per item, `close()` at the end.

  On a terminal it redraws in place; in a log it writes a line at most every
  few seconds. `enabled=False` gives a counter that prints nothing.
  """
  stream = stream or sys.stderr
  on_terminal = hasattr(stream, "isatty") and stream.isatty()
  if worker_share:
    label, total = f"{label} [worker pid {os.getpid()}]", None
  counted = "{n_fmt}/{total_fmt}" if total else "{n_fmt}"
  return tqdm(
      total=total, desc=label, unit=f" {unit}" if unit else "", file=stream,
      disable=not enabled, mininterval=0.5 if on_terminal else 5.0, dynamic_ncols=on_terminal,
      # A bar on a terminal when the total is known; in logs the plain count.
      bar_format=(None if on_terminal and total else
                  "{desc}: " + counted + "{unit} [{elapsed}, {rate_fmt}]"))
