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


class Mp4Writer:
  """Streams RGB uint8 frames into an H.264 mp4 through imageio-ffmpeg's ffmpeg, atomically.

  `size="pad"` pads odd sizes to even (yuv420p, plays everywhere); `size="exact"` keeps the frame
  size: yuv420p when both sides are even, yuv444p (High 4:4:4, which some players refuse)
  otherwise. `audio_from` copies that file's first audio stream (re-encoded to AAC when mp4 cannot
  hold its codec), trimmed to [audio_start, audio_start + frames / fps). The output appears at
  `path` only on a clean `close()`; any failure leaves no file behind.
  """

  def __init__(self, path: str, width: int, height: int, fps: float, record: dict, *,
               size: str = "pad", audio_from: str | None = None, audio_start: float = 0.0,
               crf: int = 18, preset: str = "veryfast"):
    self.exe = ffmpeg_exe()
    if self.exe is None:
      raise JaxswapError("writing mp4 needs the ffmpeg binary of the imageio-ffmpeg package")
    self.path, self.count = path, 0
    self._ctx = atomic_path(path, ".mp4")
    tmp = self._ctx.__enter__()
    even = width % 2 == 0 and height % 2 == 0
    video = ["-c:v", "libx264", "-preset", preset, "-crf", str(crf)]
    if size == "pad" or even:
      video += ["-pix_fmt", "yuv420p"] + (["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
                                           if not even else [])
    else:
      video += ["-pix_fmt", "yuv444p"]
    audio: list[str] = []
    if audio_from is not None and audio_codec(audio_from) is not None:
      codec = "copy" if audio_codec(audio_from) in _MP4_AUDIO else "aac"
      audio = (["-ss", f"{audio_start:.6f}"] if audio_start > 0 else []) + ["-i", audio_from]
      audio_map = ["-map", "0:v:0", "-map", "1:a:0", "-c:a", codec, "-shortest"]
    cmd = [self.exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-", *audio,
           *(audio_map if audio else []), *video, *metadata_args(record),
           "-movflags", "+faststart", tmp]
    try:
      self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
      self._ctx.__exit__(JaxswapError, None, None)
      raise JaxswapError(f"cannot start ffmpeg ({self.exe}): {e}") from None
    self._shape = (height, width, 3)
    self._closed = False

  def write(self, frame: np.ndarray) -> None:
    if frame.shape != self._shape:
      raise ValueError(f"frame {frame.shape} is not the writer's {self._shape}")
    try:
      self._proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
    except BrokenPipeError:
      self.abort()
      raise JaxswapError(f"ffmpeg stopped while writing {self.path}: {self._stderr()}") from None
    self.count += 1

  def _stderr(self) -> str:
    return self._proc.stderr.read().decode(errors="replace")[-500:]

  def close(self) -> int:
    """Finishes the file and renames it into place; returns the number of frames written."""
    if self._closed:
      return self.count
    self._closed = True
    try:
      self._proc.stdin.close()
    except BrokenPipeError:
      pass
    if self._proc.wait() != 0:
      err = self._stderr()
      self._ctx.__exit__(JaxswapError, None, None)
      raise JaxswapError(f"ffmpeg failed writing {self.path}: {err}")
    if self.count == 0:
      self._ctx.__exit__(JaxswapError, None, None)
      raise JaxswapError(f"no frames to write to {self.path}")
    self._ctx.__exit__(None, None, None)
    return self.count

  def abort(self) -> None:
    """Stops ffmpeg and removes the temporary file; `path` is left as it was."""
    if self._closed:
      return
    self._closed = True
    self._proc.kill()
    self._proc.wait()
    self._ctx.__exit__(JaxswapError, None, None)

  def __enter__(self) -> "Mp4Writer":
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


_MP4_AUDIO = ("aac", "mp3", "alac", "ac3", "eac3", "opus", "flac")


def audio_codec(path: str) -> str | None:
  """The codec name of a media file's first audio stream, or None when it has none."""
  exe = ffmpeg_exe()
  if exe is None:
    return None
  err = subprocess.run([exe, "-hide_banner", "-i", path], capture_output=True, text=True,
                       check=False).stderr
  for line in err.splitlines():
    if "Stream #" in line and "Audio:" in line:
      return line.split("Audio:", 1)[1].split()[0].strip(",")
  return None


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: float, record: dict) -> int:
  """H.264 mp4 of RGB uint8 frames through imageio-ffmpeg's bundled ffmpeg; returns frame count."""
  frames = iter(frames)
  first = next(frames, None)
  if first is None:
    raise JaxswapError(f"no frames to write to {path}")
  h, w = first.shape[:2]
  with Mp4Writer(path, w, h, fps, record, size="pad", crf=23, preset="medium") as writer:
    for frame in itertools.chain([first], frames):
      writer.write(frame)
  return writer.count


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
