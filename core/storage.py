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

import glob as stdlib_glob
import os
import posixpath
import re
import time
from typing import IO, Dict, Iterable, List, NamedTuple, Tuple

import fsspec
from fsspec.utils import glob_translate

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
  size: int  # -1: no such file, or one listed that cannot be read (a broken link)
  modified: str  # as the store states it: a timestamp, or an object generation
  is_folder: bool = False


def _described(path: str, details: dict) -> FileInfo:
  """What fsspec says of a path (`info`, or one entry of a detailed listing:
  the same dict) as size and modification."""
  # Local mtime; gcsfs's mtime (the object's update time, in microseconds; a
  # store that gives none, its generation, new on every write); S3's ETag.
  modified = (details.get("mtime") or details.get("generation") or details.get("ETag")
              or details.get("updated") or details.get("LastModified") or "")
  return FileInfo(path, int(details.get("size") or 0), str(modified),
                  details.get("type") == "directory")


def info(path: str) -> FileInfo:
  fs, stripped = _filesystem(path)
  return _described(path, fs.info(stripped))


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


def _is_within(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _leads_back(link: str, root: str) -> bool:
  """Whether following the local folder link `link` would list again a
  folder it is in (a cycle, or the whole disk for a link to `/`)."""
  target = os.path.realpath(link)
  folder = os.path.dirname(link)
  while _is_within(folder, root):
    if _is_within(os.path.realpath(folder), target):
      return True
    if folder == root:
      return False
    folder = os.path.dirname(folder)
  return False


def _listed_details(fs: fsspec.AbstractFileSystem, root: str) -> Dict[str, dict]:
  """fsspec's detailed recursive listing of `root`, files and folders. A local
  symbolic link is described by its target, as `info` describes it, and a
  linked folder is listed too (`train_images` linked from another disk): a
  listing does neither by itself. A link back to a folder above it is not
  followed."""
  found = fs.find(root, withdirs=True, detail=True)
  if is_url(root):
    return found
  links = [path for path, details in found.items() if details.get("islink")]
  while links:
    link = links.pop()
    try:
      found[link] = fs.info(link)
    except OSError:  # a broken link: listed, as a glob lists it, but unreadable
      found[link] = {**found[link], "size": -1, "mtime": "", "type": "other"}
      continue
    if found[link]["type"] != "directory" or _leads_back(link, root):
      continue
    inside = fs.find(link, withdirs=True, detail=True)
    links.extend(path for path, details in inside.items()
                 if details.get("islink") and path not in found)
    found.update((path, details) for path, details in inside.items() if path not in found)
  return found


class FolderListing:
  """Every file and folder under `folder`, from one recursive listing, so
  that globs, sizes and modification times under it are answered from memory.

  Why: an object store lists 1,000 objects a request, each with its size and
  generation, where asking of each file is a request per file (two with an
  `exists` first): on PANDA's 10,616 slides, one listing of 11 requests
  instead of 21,000 before every run. A path outside `folder` is asked of the
  store, as `glob` and `info` do.
  """

  def __init__(self, folder: str):
    self.folder = folder
    self._fs, root = _filesystem(folder)
    self._under = root.rstrip("/") + "/"
    started = time.monotonic()
    details = _listed_details(self._fs, root)
    self.seconds = time.monotonic() - started
    # By the path as fsspec names it (what glob patterns are matched against).
    self._entries = {found: _described(_full(self._fs, folder, found), described)
                     for found, described in details.items()}

  @property
  def files(self) -> Dict[str, FileInfo]:
    """The files (not folders) under the folder, by their full path."""
    return {entry.path: entry for entry in self._entries.values() if not entry.is_folder}

  @property
  def is_folder(self) -> bool:
    """Whether the listing found a folder (an object store has one where any
    object's name has it as a prefix)."""
    return any(found.startswith(self._under) or entry.is_folder
               for found, entry in self._entries.items())

  def _stripped(self, path: str) -> str:
    """`path` as the listing names it, or "" when the listing cannot answer for it."""
    fs, stripped = _filesystem(path)
    if fs is not self._fs:
      return ""
    fixed = re.split(r"[*?\[]", stripped, maxsplit=1)[0]  # up to the first wildcard
    return stripped if fixed.startswith(self._under) else ""

  def glob(self, pattern: str) -> List[str]:
    """What `glob(pattern)` finds, with fsspec's glob semantics (`*` within
    one folder, `**` across folders, `?`, `[...]`; folders match too)."""
    stripped = self._stripped(pattern)
    if not stripped:
      return glob(pattern)
    if not stdlib_glob.has_magic(stripped):  # as fsspec: the path, if it exists
      return [self._entries[stripped].path] if self.exists(pattern) else []
    matcher = re.compile(glob_translate(stripped))
    # As fsspec's glob: a pattern ending in `/**` names folders with their
    # slash; and an object store's glob lists below the folder the wildcards
    # start in, without that folder (a local one lists it too).
    folders_with_slash = stripped.endswith("/**")
    searched = re.split(r"[*?\[]", stripped, maxsplit=1)[0].rsplit("/", 1)[0]
    return sorted(entry.path for found, entry in self._entries.items()
                  if matcher.match(found + "/" if folders_with_slash and entry.is_folder
                                   else found)
                  and not (found == searched and is_url(self.folder)))

  def info(self, path: str) -> FileInfo:
    """Size and modification of `path`; size -1 when there is no such file."""
    stripped = self._stripped(path)
    if not stripped:
      return info(path) if exists(path) else FileInfo(path, -1, "")
    return self._entries.get(stripped, FileInfo(path, -1, ""))._replace(path=path)

  def exists(self, path: str) -> bool:
    stripped = self._stripped(path)
    if not stripped:
      return exists(path)
    return stripped in self._entries and self._entries[stripped].size >= 0


def list_folder(folder: str) -> FolderListing:
  """Everything under `folder`, listed once (see FolderListing)."""
  return FolderListing(folder)


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
