"""Beam's `gs://` I/O against a GCS emulator (`STORAGE_EMULATOR_HOST`).

Hand-written because Beam 2.59 has no switch for it: before its first GCS
call Beam looks for Google default credentials with four retries (about 30 s
of backoff) and then connects anonymously; `--no_auth` is read only by the
Dataflow runner. google-cloud-storage itself honours `STORAGE_EMULATOR_HOST`
once the client is anonymous. So when that variable is set, and only then,
Beam's credential cache is set to "anonymous" up front: the same client Beam
ends with, without the wait. With a real bucket nothing changes.

It acts in the process that calls it (the launching process, and the DirectRunner's
in-memory workers); multi-processing workers find the emulator too, after
Beam's 30 s of retries.
"""

from __future__ import annotations

import os

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"


def connect_anonymously_to_emulator() -> bool:
  """Beam connects anonymously when the GCS emulator variable is set; True if set."""
  if not os.environ.get(EMULATOR_VARIABLE):
    return False
  from apache_beam.internal.gcp import auth  # pylint: disable=import-outside-toplevel
  credentials = auth._Credentials  # pylint: disable=protected-access
  with credentials._credentials_lock:  # pylint: disable=protected-access
    credentials._credentials = None  # pylint: disable=protected-access
    credentials._credentials_init = True  # pylint: disable=protected-access
  return True
