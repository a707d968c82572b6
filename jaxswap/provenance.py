"""Writing what jaxswap makes: provenance tags, atomic writes, PNG encoding and writing.

Images: PNG with tEXt chunks `DigitalSourceType` = the IPTC code for media made by a trained model
and `jaxswap` = a JSON record (tool, version, what it is, which run). Videos carry the same JSON in
the container's `comment` tag (`jaxswap.video`). All writes are atomic: a temporary file in the
same folder, renamed over the target only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import zlib
from typing import Iterator

import cv2
import numpy as np

from jaxswap.errors import JaxswapError, write_failure

IPTC_SYNTHETIC = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def provenance(kind: str, **details) -> dict:
  from jaxswap import __version__  # pylint: disable=g-import-not-at-top
  return {"synthetic": True, "generator": f"jaxswap {__version__}", "kind": kind,
          "digital_source_type": IPTC_SYNTHETIC, **details}


def _read_umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


_FILE_MODE = 0o666 & ~_read_umask()  # what open() would give; mkstemp alone gives 0600


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds.

  A kill at any moment leaves the old file or the new one, never a torn one; at worst a
  `.tmp-*` file beside it.
  """
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or os.path.splitext(path)[1],
                               dir=folder)
  except OSError as e:
    raise write_failure(path, e) from None
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
  except OSError as e:
    raise write_failure(path, e) from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_text(png: bytes, text: dict[str, str]) -> bytes:
  """Inserts tEXt chunks right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
  chunks = b"".join(_png_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1"))
                    for k, v in text.items())
  return png[:33] + chunks + png[33:]


def png_text(png: bytes) -> dict[str, str]:
  """The tEXt chunks of a PNG file's bytes."""
  out, pos = {}, 8
  while pos + 8 <= len(png):
    (length,), kind = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
    if kind == b"tEXt":
      key, _, value = png[pos + 8:pos + 8 + length].partition(b"\0")
      out[key.decode("latin-1")] = value.decode("latin-1")
    pos += 12 + length
  return out


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of an RGB (H,W,3) or single-channel (H,W[,1]) uint8 image: jaxswap's one encoder."""
  image = np.ascontiguousarray(image)
  if image.ndim == 3 and image.shape[-1] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  elif image.ndim == 3:
    image = image[..., 0]
  ok, buf = cv2.imencode(".png", image)
  if not ok:
    raise JaxswapError(f"cannot encode a {image.dtype} {image.shape} image as PNG")
  return buf.tobytes()


def write_png(path: str, rgb: np.ndarray, record: dict) -> None:
  """An RGB uint8 image as PNG with the provenance record, written atomically."""
  text = {"DigitalSourceType": IPTC_SYNTHETIC, "jaxswap": json.dumps(record, sort_keys=True),
          "Software": record.get("generator", "jaxswap")}
  write_bytes(path, png_with_text(encode_png(rgb), text))


def read_png_record(path: str) -> dict | None:
  """The jaxswap provenance record of a PNG file, or None when it has none."""
  with open(path, "rb") as f:
    text = png_text(f.read())
  return json.loads(text["jaxswap"]) if "jaxswap" in text else None


def check_writable(path: str, flag: str) -> None:
  """Fails early (before any work) when `path` cannot be created."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise JaxswapError(f"{flag} {path}: cannot create folder {folder} ({e.strerror})") from None
  if not os.access(folder, os.W_OK | os.X_OK):
    raise JaxswapError(f"{flag} {path}: folder {folder} is not writable")
  if os.path.isdir(path) and flag != "--png-dir":
    raise JaxswapError(f"{flag} {path} is a folder, not a file name")


class PngDirSink:
  """Lossless frames `frame_NNNNNN.png` (with provenance tEXt) in a folder that appears whole.

  Frames go to a hidden temporary folder beside DIR, renamed onto DIR at the end; DIR must be
  absent or empty, so no stale frame of an earlier run can mix in.
  """

  def __init__(self, folder: str, record: dict, first_index: int = 0):
    check_writable(folder, "--png-dir")
    if os.path.isdir(folder) and os.listdir(folder):
      raise JaxswapError(f"--png-dir {folder} is not empty; choose a new or empty folder")
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise JaxswapError(f"--png-dir {folder} exists and is not a folder")
    self.folder, self.record, self.index = folder, record, first_index
    parent = os.path.dirname(os.path.abspath(folder))
    self.tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)

  def write(self, rgb: np.ndarray) -> None:
    write_png(os.path.join(self.tmp, f"frame_{self.index:06d}.png"), rgb, self.record)
    self.index += 1

  def close(self) -> None:
    if os.path.isdir(self.folder):
      os.rmdir(self.folder)  # empty, checked at the start
    os.replace(self.tmp, self.folder)

  def abort(self) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)
