"""Video in and out: the one module that uses cv2.VideoCapture and the ffmpeg binary.

Sources yield frames as RGB uint8 with their metadata: a video file (decoded by OpenCV/FFmpeg) or
a folder of photos (`jaxswap.images`). Sinks take frames back out: an H.264 mp4 through
imageio-ffmpeg's bundled ffmpeg with the input's audio and a provenance tag, or a folder of PNGs.
Unreadable input raises `JaxswapError` naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import subprocess
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from jaxswap import prefetch, provenance
from jaxswap.errors import JaxswapError
from jaxswap.images import IMAGE_EXTENSIONS, list_images, read_image


@dataclasses.dataclass
class Frame:
  index: int  # position in the video, or in the sorted image list
  name: str  # "" for video frames, the file name for images
  rgb: np.ndarray | None  # None when the image could not be decoded
  error: str | None = None


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


class VideoSource:
  """A video file, read front to back (seeking is frame-inexact for many codecs)."""

  kind = "video"

  def __init__(self, path: str):
    self.path = path
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
      raise JaxswapError(f"cannot read {path} as a video: OpenCV/FFmpeg does not recognise it "
                         "(not a video, an unsupported codec, or a corrupt/truncated file)")
    ok, first = cap.read()
    if not ok or first is None:
      cap.release()
      raise JaxswapError(f"{path} holds no decodable video frames (corrupt or truncated file?)")
    self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    self.height, self.width = first.shape[:2]
    self.reported_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()

  def metadata(self) -> dict:
    return {"type": self.kind, "path": os.path.abspath(self.path), "fps": self.fps,
            "width": self.width, "height": self.height, "frame_count": self.reported_frames}

  def frames(self, wanted: Callable[[int], bool]) -> Iterator[Frame]:
    """Every frame in order; frames not `wanted` are only grabbed (rgb None, no colour work)."""
    cap = cv2.VideoCapture(self.path)
    try:
      index = 0
      while True:
        if wanted(index):
          ok, bgr = cap.read()
          if not ok:
            return
          yield Frame(index, "", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        else:
          if not cap.grab():
            return
          yield Frame(index, "", None, error="skipped")
        index += 1
    finally:
      cap.release()


class ImageFolderSource:
  """A folder of photos; frame i is the i-th image in natural name order."""

  kind = "images"

  def __init__(self, path: str):
    self.path = path
    self.names = list_images(path)
    if not self.names:
      raise JaxswapError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    self.fps = None
    self.width = self.height = None
    self.reported_frames = len(self.names)

  def metadata(self) -> dict:
    return {"type": self.kind, "path": os.path.abspath(self.path), "fps": None, "width": None,
            "height": None, "frame_count": len(self.names)}

  def frames(self, wanted: Callable[[int], bool]) -> Iterator[Frame]:
    for index, name in enumerate(self.names):
      if not wanted(index):
        yield Frame(index, name, None, error="skipped")
        continue
      try:
        yield Frame(index, name, read_image(os.path.join(self.path, name)))
      except JaxswapError as e:
        yield Frame(index, name, None, error=str(e))


def open_source(path: str) -> VideoSource | ImageFolderSource:
  """A video or an image folder, checked to be readable; JaxswapError names what is wrong."""
  if not os.path.exists(path):
    raise JaxswapError(f"--input {path} does not exist")
  if not os.access(path, os.R_OK):
    raise JaxswapError(f"--input {path} is not readable (permission denied)")
  if os.path.isdir(path):
    return ImageFolderSource(path)
  if path.lower().endswith(IMAGE_EXTENSIONS):
    raise JaxswapError(f"--input {path} is a single image; put photos in a folder and pass that")
  return VideoSource(path)


def fingerprint(path: str) -> str:
  """A cheap identity of the input: size + first/last MiB of a video, names + sizes of a folder.

  Lets a re-run recognise "the same video" even after a move, and refuse a different one.
  """
  h = hashlib.sha256()
  if os.path.isdir(path):
    for name in list_images(path):
      h.update(f"{name}\0{os.path.getsize(os.path.join(path, name))}\n".encode())
    return "sha256:" + h.hexdigest()
  size = os.path.getsize(path)
  h.update(str(size).encode())
  with open(path, "rb") as f:
    h.update(f.read(1 << 20))
    if size > 2 << 20:
      f.seek(-(1 << 20), os.SEEK_END)
      h.update(f.read())
  return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Overlap
# ----------------------------------------------------------------------------------------------


def background(items: Iterable, depth: int = 8) -> Iterator:
  """Iterates `items` in a daemon thread, `depth` ahead (OpenCV decoding releases the GIL)."""
  return prefetch.background(items, depth, name="jaxswap-reader")


# ----------------------------------------------------------------------------------------------
# mp4 through imageio-ffmpeg's ffmpeg
# ----------------------------------------------------------------------------------------------


def ffmpeg_exe() -> str | None:
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
    return imageio_ffmpeg.get_ffmpeg_exe()
  except (ImportError, RuntimeError):
    return None


def metadata_args(record: dict) -> list[str]:
  return ["-metadata", "comment=" + json.dumps(record, sort_keys=True),
          "-metadata", "description=synthetic media (" + provenance.IPTC_SYNTHETIC + ")"]


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
    self._ctx = provenance.atomic_path(path, ".mp4")
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
    return provenance.read_png_record(path)
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


# ----------------------------------------------------------------------------------------------
# Frames out: an mp4 of the input's size (a folder of PNGs: provenance.PngDirSink)
# ----------------------------------------------------------------------------------------------


class Mp4Sink:
  """H.264 mp4 of the exact input size with the input's audio; OpenCV's writer if no ffmpeg.

  The OpenCV fallback can carry neither audio nor the provenance tag, so `needs_watermark` tells
  the caller to mark every frame visibly instead.
  """

  def __init__(self, path: str, width: int, height: int, fps: float, record: dict, *,
               audio_from: str | None = None, audio_start: float = 0.0):
    self.path = path
    self.needs_watermark = ffmpeg_exe() is None
    if not self.needs_watermark:
      self._mp4 = Mp4Writer(path, width, height, fps, record, size="exact",
                                  audio_from=audio_from, audio_start=audio_start)
      return
    self._mp4 = None
    self._ctx = provenance.atomic_path(path, ".mp4")
    tmp = self._ctx.__enter__()
    self._cv = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not self._cv.isOpened():
      self._ctx.__exit__(JaxswapError, None, None)
      raise JaxswapError(f"OpenCV cannot write {path} (and imageio-ffmpeg's ffmpeg is absent)")

  def write(self, rgb: np.ndarray) -> None:
    if self._mp4 is not None:
      self._mp4.write(rgb)
    else:
      self._cv.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

  def close(self) -> None:
    if self._mp4 is not None:
      self._mp4.close()
    else:
      self._cv.release()
      self._ctx.__exit__(None, None, None)

  def abort(self) -> None:
    if self._mp4 is not None:
      self._mp4.abort()
    else:
      self._cv.release()
      self._ctx.__exit__(JaxswapError, None, None)
