"""Text files our executors write inside TFX artifacts, from Beam workers too.

Local and `gs://` paths go through `core.storage` (fsspec), as Beam's own
filesystems write the bags beside them. Any other scheme (TensorFlow's
in-memory `ram://`, HDFS through TensorFlow) goes through TFX's `fileio`,
imported only then: it imports TensorFlow, 7 s in a fresh Beam worker
process, which is why this module does not import it at the top (a worker
unpickling a stage that refers to this module must stay TensorFlow-free).
"""

from __future__ import annotations

from typing import IO

from histopipe.core import storage

# Schemes core.storage writes; the rest are left to TensorFlow's filesystems.
_STORAGE_SCHEMES = ("", "file", "gs", "gcs")


def _scheme(path: str) -> str:
  return path.split("://", 1)[0] if "://" in path else ""


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path`, making its folder."""
  if _scheme(path) in _STORAGE_SCHEMES:
    storage.makedirs(storage.dirname(path))
    storage.write_text(path, text)
    return
  from tfx.dsl.io import fileio  # pylint: disable=import-outside-toplevel (imports TensorFlow)
  fileio.makedirs(storage.dirname(path))
  with fileio.open(path, "w") as f:
    f.write(text)


def open_file(path: str, mode: str = "rb") -> IO:
  if _scheme(path) in _STORAGE_SCHEMES:
    return storage.open_file(path, mode)
  from tfx.dsl.io import fileio  # pylint: disable=import-outside-toplevel (imports TensorFlow)
  return fileio.open(path, mode)
