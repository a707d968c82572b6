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

from jaxswap import provenance
from jaxswap.errors import JaxswapError, disk_error, write_failure
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


def frame_rate(reported: float | None, timestamps_ms: list[float]) -> float | None:
  """The container's frame rate when it is sane, else the one the first frames' timestamps show.

  Some containers report 0, NaN or a time base (1000+) instead of a rate; None when neither
  source says.
  """
  if reported is not None and np.isfinite(reported) and 0 < reported <= 1000:
    return float(reported)
  steps = np.diff(timestamps_ms)
  steps = steps[steps > 0]
  return float(1000.0 / np.median(steps)) if len(steps) else None


class VideoSource:
  """A video file, read front to back (seeking is frame-inexact for many codecs).

  Reading checks what a silent `cap.read() == False` would hide: a video that stops decoding well
  before the frame count its container reports is truncated or corrupt (an error naming the
  frame), and `frames(constant_rate=True)` refuses a variable-frame-rate video, whose frames
  would drift from their audio once written at one constant rate.
  """

  kind = "video"
  MISSING_FRAMES_OK = 0.01  # estimated container counts may overshoot by a little

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
    times = [cap.get(cv2.CAP_PROP_POS_MSEC)]
    if cap.grab():
      times.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    self.fps = frame_rate(cap.get(cv2.CAP_PROP_FPS), times)
    self.height, self.width = first.shape[:2]
    self.reported_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()

  def metadata(self) -> dict:
    return {"type": self.kind, "path": os.path.abspath(self.path), "fps": self.fps,
            "width": self.width, "height": self.height, "frame_count": self.reported_frames}

  def frames(self, wanted: Callable[[int], bool], constant_rate: bool = False
             ) -> Iterator[Frame]:
    """Every frame in order; frames not `wanted` are only grabbed (rgb None, no colour work)."""
    cap = cv2.VideoCapture(self.path)
    try:
      index, start_ms = 0, None
      while True:
        if wanted(index):
          ok, bgr = cap.read()
        else:
          ok, bgr = cap.grab(), None
        if not ok:
          self._check_end(index)
          return
        if constant_rate:
          now = cap.get(cv2.CAP_PROP_POS_MSEC)
          start_ms = now if start_ms is None else start_ms
          self._check_timing(index, now - start_ms)
        if bgr is None:
          yield Frame(index, "", None, error="skipped")
        else:
          yield Frame(index, "", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        index += 1
    finally:
      cap.release()

  def _check_end(self, index: int) -> None:
    missing = self.reported_frames - index
    if missing > max(2, self.MISSING_FRAMES_OK * self.reported_frames):
      raise JaxswapError(
          f"{self.path}: cannot decode frame {index} of the {self.reported_frames} frames the "
          "file reports: it is truncated or corrupt from there on. Nothing was completed; "
          "repair or re-encode it (or cut it before that frame) and run again")

  def _check_timing(self, index: int, elapsed_ms: float) -> None:
    if self.fps is None:
      raise JaxswapError(f"{self.path}: its container reports no frame rate and its frames carry "
                         "no timestamps; re-encode it at a constant rate (ffmpeg -i IN -r 30 "
                         "OUT.mp4)")
    period = 1000.0 / self.fps
    if abs(elapsed_ms - index * period) > 1.5 * period:
      raise JaxswapError(
          f"{self.path} has a variable frame rate: frame {index} is shown at "
          f"{elapsed_ms / 1000:.3f} s, not at {index * period / 1000:.3f} s as at a constant "
          f"{self.fps:.3f} fps. jaxswap writes constant-rate video, which would drift from the "
          f"audio; convert a constant-rate copy instead (ffmpeg -i IN -fps_mode cfr -r "
          f"{round(self.fps)} OUT.mp4)")


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
  otherwise. `audio_from` adds that file's first audio stream (copied; re-encoded to AAC when mp4
  cannot hold its codec) from `audio_start` on, trimmed to the video written: the video is
  encoded first, and the audio muxed in at `close()`, once the exact frame count is known. So
  every frame is kept whatever the audio's length (a shorter track simply ends early; a longer
  one is cut). The output appears at `path` only on a clean `close()`; any failure leaves no file.
  """

  def __init__(self, path: str, width: int, height: int, fps: float | None, record: dict, *,
               size: str = "pad", audio_from: str | None = None, audio_start: float = 0.0,
               crf: int = 18, preset: str = "veryfast"):
    self.exe = ffmpeg_exe()
    if self.exe is None:
      raise JaxswapError("writing mp4 needs the ffmpeg binary of the imageio-ffmpeg package")
    if fps is None or not 0 < fps <= 1000:
      raise JaxswapError(f"cannot write {path} at a frame rate of {fps!r}")
    self.path, self.fps, self.count, self.record = path, float(fps), 0, record
    codec = audio_codec(audio_from) if audio_from is not None else None
    self._audio = None if codec is None else (
        audio_from, audio_start, "copy" if codec in _MP4_AUDIO else "aac")
    self._ctx = provenance.atomic_path(path, ".mp4")
    self._tmp = self._ctx.__enter__()
    # With audio to add, the video goes to a second temporary file first.
    self._video = self._tmp[:-4] + ".video.mp4" if self._audio else self._tmp
    even = width % 2 == 0 and height % 2 == 0
    video = ["-c:v", "libx264", "-preset", preset, "-crf", str(crf)]
    if size == "pad" or even:
      video += ["-pix_fmt", "yuv420p"] + (["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
                                           if not even else [])
    else:
      video += ["-pix_fmt", "yuv444p"]
    cmd = [self.exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", f"{self.fps}", "-i", "-", *video,
           *([] if self._audio else metadata_args(record)), "-movflags", "+faststart",
           self._video]
    try:
      self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
      self._ctx.__exit__(JaxswapError, None, None)
      raise JaxswapError(f"cannot start ffmpeg ({self.exe}): {e}") from None
    self._shape = (height, width, 3)
    self._closed = False

  def write(self, frame: np.ndarray) -> None:
    if frame.shape != self._shape:
      raise JaxswapError(f"frame {frame.shape} does not fit the {self._shape} of {self.path}")
    try:
      self._proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
    except BrokenPipeError:
      err = self._stderr()
      self.abort()
      raise self._failure("ffmpeg stopped while writing",
                          err or "it gave no reason (out of disk space or memory?)") from None
    self.count += 1

  def _failure(self, what: str, stderr: str) -> JaxswapError:
    """A full or read-only disk in words with the free space; any other ffmpeg error verbatim."""
    if disk_error(RuntimeError(stderr)) is not None:
      return write_failure(self.path, RuntimeError(stderr), None, "video")
    return JaxswapError(f"{what} {self.path}: {stderr}")

  def _stderr(self) -> str:
    self._proc.poll()
    return self._proc.stderr.read().decode(errors="replace").strip()[-500:]

  def _mux_audio(self) -> None:
    source, start, codec = self._audio
    cmd = [self.exe, "-y", "-loglevel", "error", "-i", self._video,
           *(["-ss", f"{start:.6f}"] if start > 0 else []), "-t", f"{self.count / self.fps:.6f}",
           "-i", source, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", codec,
           *metadata_args(self.record), "-movflags", "+faststart", self._tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise self._failure(f"ffmpeg failed adding the audio of {source} to",
                          proc.stderr.strip()[-500:])

  def close(self) -> int:
    """Finishes the file and renames it into place; returns the number of frames written."""
    if self._closed:
      return self.count
    self._closed = True
    try:
      self._proc.stdin.close()
    except BrokenPipeError:
      pass
    try:
      if self._proc.wait() != 0:
        raise self._failure("ffmpeg failed writing", self._stderr())
      if self.count == 0:
        raise JaxswapError(f"no frames to write to {self.path}")
      if self._audio:
        self._mux_audio()
    except JaxswapError:
      self._cleanup(failed=True)
      raise
    self._cleanup(failed=False)
    return self.count

  def _cleanup(self, failed: bool) -> None:
    if self._video != self._tmp and os.path.exists(self._video):
      os.remove(self._video)
    self._ctx.__exit__(JaxswapError if failed else None, None, None)

  def abort(self) -> None:
    """Stops ffmpeg and removes the temporary files; `path` is left as it was."""
    if self._closed:
      return
    self._closed = True
    self._proc.kill()
    self._proc.wait()
    self._cleanup(failed=True)

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
