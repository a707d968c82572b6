"""The one exception type users see: a message they can act on; and the words for a failed write."""

from __future__ import annotations

import errno
import os
import shutil


class JaxswapError(Exception):
  """A problem with the user's input (a file, a flag, a workdir), not a bug.

  Command-line entry points print the message and exit with status 2.
  """


class WriteError(JaxswapError):
  """An output could not be written (full disk, no permission); nothing torn was left behind."""


_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "read-only file system"}
_DISK_TEXT = {"no space left": errno.ENOSPC, "disk quota": errno.EDQUOT,
              "permission denied": errno.EACCES, "read-only file system": errno.EROFS}


def disk_error(exc: BaseException) -> int | None:
  """The errno of a full-disk / unwritable-path failure, also when TensorStore words it."""
  seen = exc
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
      return seen.errno
    text = str(seen).lower()
    for needle, code in _DISK_TEXT.items():
      if needle in text:
        return code
    seen = seen.__cause__ or seen.__context__
  return None


def _human(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"


def free_bytes(path: str) -> int | None:
  """Free space of the file system holding `path` (or its nearest existing parent)."""
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path or ".").free
  except OSError:
    return None


def write_failure(path: str, exc: BaseException, need: int | None = None,
                  what: str = "") -> "WriteError":
  """The message of a failed write: path, the cause in words, and the free space it needs."""
  code = disk_error(exc)
  free = free_bytes(path)
  room = f"{_human(free)} free" if free is not None else "free space unknown"
  if need:
    room += f", about {_human(need)} needed"
  what = f"{what} " if what else ""
  if code in (errno.ENOSPC, errno.EDQUOT):
    return WriteError(f"cannot write {what}{path}: {_DISK_ERRNOS[code]} ({room}). "
                           "Free some space (or point the output elsewhere) and rerun.")
  if code is not None:
    return WriteError(f"cannot write {what}{path}: {_DISK_ERRNOS[code]}. "
                           "Make it writable (or point the output elsewhere) and rerun.")
  first = str(exc).strip().splitlines()
  return WriteError(f"cannot write {what}{path}: {type(exc).__name__}: "
                         f"{first[0][:300] if first else exc}")
