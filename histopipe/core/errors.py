"""The one error type a person running histopipe can act on.

A `UserError` is a problem in what the user gave or points at: a missing
path, a bad value in a config, a bad label file, a server that does not
answer. The CLI prints its message as one line on stderr and exits with
status 2. Any other exception is a bug in histopipe and keeps its traceback.
"""

from __future__ import annotations

import os


class UserError(Exception):
  """Something the user can fix; the message says what and where."""


def make_output_dir(path: str) -> str:
  """Creates the folder `path` (and its parents) for a command's output;
  a path that cannot be a folder is the user's to fix."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"{path}: cannot create the output folder ({e.strerror})") from None
  return path
