"""Beam's TFRecord checksum through `google_crc32c` (C) instead of crcmod.

Every record Beam's `WriteToTFRecord` writes carries two masked CRC32C
checksums. Beam 2.59 takes the function from python-snappy's old C module
when it is installed, else from crcmod; python-snappy 0.7 (cramjam-based, the
current release) no longer has that module, so installing it changes nothing
and Beam uses crcmod. `google_crc32c` (installed with Beam's GCP extra for
google-cloud-storage) computes the same values 20x faster; on 384 slides the
SlideExampleGen runs 1.08x faster with it (bench/tiling.py, (f2)/(f)).

Beam keeps its choice in `tfrecordio._default_crc32c_fn.fn`, filled on first
use; filling it first is the only way in (the writer takes no checksum
argument), hence this small patch of Beam's module state, done only when
google_crc32c has its C implementation.
"""

from __future__ import annotations


def use_fast_checksum() -> bool:
  """Makes this process's TFRecord writers use google_crc32c; True if it did."""
  import google_crc32c  # pylint: disable=import-outside-toplevel
  from apache_beam.io import tfrecordio  # pylint: disable=import-outside-toplevel
  if google_crc32c.implementation != "c":
    return False  # its pure-Python fallback is slower than crcmod's C extension
  tfrecordio._default_crc32c_fn.fn = google_crc32c.value  # pylint: disable=protected-access
  return True
