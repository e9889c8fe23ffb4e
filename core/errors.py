"""The one error type a person running histopipe can act on.

A `UserError` is a problem in what the user gave or points at: a missing
path, a bad value in a config, a bad label file, a server that does not
answer. The CLI prints its message as one line on stderr and exits with
status 2. Any other exception is a bug in histopipe and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """Something the user can fix; the message says what and where."""
