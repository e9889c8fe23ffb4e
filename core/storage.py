"""One filesystem layer for the files a user points histopipe at, local or in a bucket.

Data folders, label files, slides and patches, model-independent outputs of
our own commands (`tile --out`, `score --out`, previews) are read and written
here, through fsspec: local paths, `gs://` (gcsfs, which honours the standard
`STORAGE_EMULATOR_HOST`), `s3://` when s3fs is installed, `memory://`. A slide
in a bucket is opened as a file object that fetches byte ranges on demand, so a
reader decodes the TIFF tiles it needs without downloading the slide.

TFX artifacts (Examples, models, evaluations) are TFX's: their paths go
through TFX's `fileio` where histopipe reads or writes inside them.
"""

from __future__ import annotations

import os
import posixpath
from typing import IO, Iterable, List, NamedTuple, Tuple

import fsspec

from histopipe.core.errors import UserError

# Ranged reads from object stores: blocks of 1 MiB, the most recent kept. A
# PANDA slide's JPEG tile is ~30 kB, its lowest level ~1 MB, a slide ~30-300 MB.
_BLOCK_SIZE = 2 ** 20


def is_url(path: str) -> bool:
  """True for `scheme://...` (gs, s3, memory, ...), False for a local path."""
  return "://" in path and not path.startswith("file://")


def _filesystem(path: str) -> Tuple[fsspec.AbstractFileSystem, str]:
  return fsspec.core.url_to_fs(path)


def join(base: str, *parts: str) -> str:
  return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def dirname(path: str) -> str:
  return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def absolute(path: str) -> str:
  return path if is_url(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  fs, stripped = _filesystem(path)
  return fs.exists(stripped)


def isdir(path: str) -> bool:
  fs, stripped = _filesystem(path)
  return fs.isdir(stripped)


def isfile(path: str) -> bool:
  fs, stripped = _filesystem(path)
  return fs.isfile(stripped)


class FileInfo(NamedTuple):
  path: str
  size: int
  modified: str  # as the store states it: a timestamp, or an object generation


def info(path: str) -> FileInfo:
  fs, stripped = _filesystem(path)
  details = fs.info(stripped)
  # Local mtime; a GCS object's generation (new on every write); S3's ETag.
  modified = (details.get("mtime") or details.get("generation") or details.get("ETag")
              or details.get("updated") or details.get("LastModified") or "")
  return FileInfo(path, int(details.get("size") or 0), str(modified))


def _full(fs: fsspec.AbstractFileSystem, like: str, found: str) -> str:
  return fs.unstrip_protocol(found) if is_url(like) else found


def glob(pattern: str) -> List[str]:
  """Sorted paths matching `pattern` (`*`, `?`, `[...]`; `**` across folders)."""
  fs, stripped = _filesystem(pattern)
  return sorted(_full(fs, pattern, found) for found in fs.glob(stripped))


def find(folder: str, suffixes: Iterable[str] = ()) -> List[str]:
  """Every file under `folder`, recursively and sorted; only those ending in
  one of `suffixes` (case-insensitive) when given."""
  fs, stripped = _filesystem(folder)
  suffixes = tuple(s.lower() for s in suffixes)
  return sorted(_full(fs, folder, found) for found in fs.find(stripped)
                if not suffixes or found.lower().endswith(suffixes))


def listdir(folder: str) -> List[str]:
  """Names (not paths) of the entries directly in `folder`."""
  fs, stripped = _filesystem(folder)
  return sorted(basename(entry) for entry in fs.ls(stripped, detail=False))


def open_file(path: str, mode: str = "rb") -> IO:
  """A file object; reading from an object store fetches byte ranges as needed."""
  if "r" in mode and is_url(path):
    fs, stripped = _filesystem(path)
    return fs.open(stripped, mode, block_size=_BLOCK_SIZE, cache_type="blockcache")
  return fsspec.open(path, mode).open()


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  with open_file(path, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def makedirs(path: str) -> None:
  """A local folder and its parents; object stores have no folders to make."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def make_output_dir(path: str) -> str:
  """Creates the folder `path` for a command's output (nothing to create in an
  object store); a local path that cannot be a folder is the user's to fix."""
  try:
    makedirs(path)
  except OSError as e:
    raise UserError(f"{path}: cannot create the output folder ({e.strerror})") from None
  return path
