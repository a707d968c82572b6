"""Writing what jaxswap makes: every image and video carries a "synthetic media" provenance tag.

Images: PNG with tEXt chunks `DigitalSourceType` = the IPTC code for media made by a trained model
and `jaxswap` = a JSON record (tool, version, what it is, which run). Videos: the same JSON in the
container's `comment` tag (read it back with `ffprobe -show_format` or `provenance_of`). All writes
are atomic: a temporary file in the same folder, renamed over the target only once complete.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import subprocess
import tempfile
import zlib
from typing import Iterable, Iterator

import cv2
import numpy as np

from jaxswap.errors import JaxswapError

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
    raise JaxswapError(f"cannot write {path}: {e.strerror}") from None
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
  except OSError as e:
    raise JaxswapError(f"cannot write {path}: {e.strerror}") from None
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


def write_png(path: str, rgb: np.ndarray, record: dict) -> None:
  """An RGB uint8 image as PNG with the provenance record, written atomically."""
  ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
  if not ok:
    raise JaxswapError(f"cannot encode {path} as PNG")
  text = {"DigitalSourceType": IPTC_SYNTHETIC, "jaxswap": json.dumps(record, sort_keys=True),
          "Software": record.get("generator", "jaxswap")}
  write_bytes(path, png_with_text(buf.tobytes(), text))


def ffmpeg_exe() -> str | None:
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
    return imageio_ffmpeg.get_ffmpeg_exe()
  except (ImportError, RuntimeError):
    return None


def metadata_args(record: dict) -> list[str]:
  return ["-metadata", "comment=" + json.dumps(record, sort_keys=True),
          "-metadata", "description=synthetic media (" + IPTC_SYNTHETIC + ")"]


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: float, record: dict) -> int:
  """H.264 mp4 of RGB uint8 frames through imageio-ffmpeg's bundled ffmpeg; returns frame count."""
  exe = ffmpeg_exe()
  if exe is None:
    raise JaxswapError("writing mp4 needs the ffmpeg binary of the imageio-ffmpeg package")
  frames = iter(frames)
  first = next(frames, None)
  if first is None:
    raise JaxswapError(f"no frames to write to {path}")
  h, w = first.shape[:2]
  count = 0
  with atomic_path(path, ".mp4") as tmp:
    cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", *metadata_args(record), tmp]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
      for frame in itertools.chain([first], frames):
        proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        count += 1
      proc.stdin.close()
    except BrokenPipeError:
      pass
    if proc.wait() != 0:
      raise JaxswapError(f"ffmpeg failed writing {path}: {proc.stderr.read().decode()[-500:]}")
  return count


def provenance_of(path: str) -> dict | None:
  """The jaxswap provenance record of a PNG or video, or None when it has none."""
  if path.lower().endswith(".png"):
    with open(path, "rb") as f:
      text = png_text(f.read())
    return json.loads(text["jaxswap"]) if "jaxswap" in text else None
  exe = ffmpeg_exe()
  if exe is None:
    raise JaxswapError("reading video metadata needs the ffmpeg binary of imageio-ffmpeg")
  out = subprocess.run([exe, "-i", path, "-f", "ffmetadata", "-"], capture_output=True,
                       text=True, check=False).stdout
  for line in out.splitlines():
    if line.startswith("comment="):
      try:
        return json.loads(line[len("comment="):].replace("\\=", "=").replace("\\;", ";")
                          .replace("\\#", "#").replace("\\\\", "\\"))
      except json.JSONDecodeError:
        return None
  return None
