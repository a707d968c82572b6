"""Frames in: videos OpenCV can decode and folders of images, as RGB uint8, plus their metadata.

Images are normalised here so the detector sees what a person would: EXIF orientation applied,
16-bit scaled to 8-bit, grayscale expanded to RGB, and transparency composited over white (what an
image viewer shows on a light page). Unreadable input raises `JaxswapError` naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import re
import shutil
import struct
import tempfile
import threading
import time
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from jaxswap import media, prefetch
from jaxswap.errors import JaxswapError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def write_atomic(path: str, data: bytes) -> None:
  """Temporary file beside `path`, renamed over it when complete (see jaxswap.media)."""
  media.write_bytes(path, data)


@dataclasses.dataclass
class Frame:
  index: int  # position in the video, or in the sorted image list
  name: str  # "" for video frames, the file name for images
  rgb: np.ndarray | None  # None when the image could not be decoded
  error: str | None = None


# ----------------------------------------------------------------------------------------------
# Single images
# ----------------------------------------------------------------------------------------------


def exif_orientation(exif: bytes) -> int:
  """The EXIF Orientation tag (1-8) of a raw EXIF block; 1 when absent or unparsable."""
  data = exif[6:] if exif.startswith(b"Exif\0\0") else exif
  if len(data) < 8 or data[:2] not in (b"II", b"MM"):
    return 1
  end = "<" if data[:2] == b"II" else ">"
  try:
    (ifd,) = struct.unpack(end + "I", data[4:8])
    (count,) = struct.unpack(end + "H", data[ifd:ifd + 2])
    for k in range(count):
      entry = data[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
      tag, _, _ = struct.unpack(end + "HHI", entry[:8])
      if tag == 0x0112:
        (value,) = struct.unpack(end + "H", entry[8:10])
        return value if 1 <= value <= 8 else 1
  except struct.error:
    return 1
  return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
  """Turns stored pixels into display pixels for an EXIF orientation value."""
  ops = {
      1: lambda a: a,
      2: lambda a: a[:, ::-1],
      3: lambda a: a[::-1, ::-1],
      4: lambda a: a[::-1],
      5: lambda a: np.swapaxes(a, 0, 1),
      6: lambda a: np.rot90(a, -1),
      7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
      8: lambda a: np.rot90(a, 1),
  }
  return np.ascontiguousarray(ops.get(orientation, ops[1])(image))


def to_rgb8(image: np.ndarray) -> np.ndarray:
  """OpenCV's decoded pixels (gray, BGR or BGRA; 8 or 16 bit) as RGB uint8."""
  if image.dtype == np.uint16:
    image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  elif image.dtype != np.uint8:
    raise ValueError(f"unsupported pixel type {image.dtype}")
  if image.ndim == 2 or image.shape[2] == 1:
    return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
  if image.shape[2] == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    bgr = image[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    image = np.rint(bgr).astype(np.uint8)
  return cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)


def read_image(path: str) -> np.ndarray:
  """RGB uint8 display pixels of an image file."""
  try:
    image, types, blocks = cv2.imreadWithMetadata(path, cv2.IMREAD_UNCHANGED)
  except cv2.error:
    image = None
  if image is None or image.size == 0:
    raise JaxswapError(f"cannot decode image {path}")
  orientation = 1
  for kind, block in zip(types, blocks):
    if kind == cv2.IMAGE_METADATA_EXIF:
      orientation = exif_orientation(np.asarray(block, np.uint8).tobytes())
  try:
    return apply_orientation(to_rgb8(image), orientation)
  except ValueError as e:
    raise JaxswapError(f"cannot use image {path}: {e}") from None


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: str) -> list[str]:
  """Image file names in a folder, in natural order (img2 before img10)."""
  names = [n for n in os.listdir(folder)
           if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
           and os.path.isfile(os.path.join(folder, n))]
  return sorted(names, key=_natural_key)


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
# Frames out: an mp4 (H.264 + the input's audio, via jaxswap.media) or a folder of PNGs
# ----------------------------------------------------------------------------------------------


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


class Mp4Sink:
  """H.264 mp4 of the exact input size with the input's audio; OpenCV's writer if no ffmpeg.

  The OpenCV fallback can carry neither audio nor the provenance tag, so `needs_watermark` tells
  the caller to mark every frame visibly instead.
  """

  def __init__(self, path: str, width: int, height: int, fps: float, record: dict, *,
               audio_from: str | None = None, audio_start: float = 0.0):
    self.path = path
    self.needs_watermark = media.ffmpeg_exe() is None
    if not self.needs_watermark:
      self._mp4 = media.Mp4Writer(path, width, height, fps, record, size="exact",
                                  audio_from=audio_from, audio_start=audio_start)
      return
    self._mp4 = None
    self._ctx = media.atomic_path(path, ".mp4")
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


class PngDirSink:
  """Lossless frames `frame_NNNNNN.png` (with provenance tEXt) in a folder that appears whole.

  Frames go to a hidden temporary folder beside DIR, renamed onto DIR at the end; DIR must be
  absent or empty, so no stale frame of an earlier run can mix in.
  """

  needs_watermark = False

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
    media.write_png(os.path.join(self.tmp, f"frame_{self.index:06d}.png"), rgb, self.record)
    self.index += 1

  def close(self) -> None:
    if os.path.isdir(self.folder):
      os.rmdir(self.folder)  # empty, checked at the start
    os.replace(self.tmp, self.folder)

  def abort(self) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)


class OrderedWriter:
  """A writer thread: takes futures of frames in order, waits for each, writes it to the sink.

  A bounded queue gives back-pressure; an error in the thread is re-raised by `put`/`close`.
  """

  def __init__(self, sink, depth: int = 32, on_write: Callable[[float], None] | None = None):
    self.sink, self.on_write = sink, on_write
    self._q: queue.Queue = queue.Queue(maxsize=depth)
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, daemon=True, name="jaxswap-writer")
    self._thread.start()

  def _run(self) -> None:
    while True:
      item = self._q.get()
      if item is None:
        return
      if self._error is not None:
        continue  # drain so `put` never blocks forever
      try:
        rgb = item.result() if hasattr(item, "result") else item
        t0 = time.perf_counter()
        self.sink.write(rgb)
        if self.on_write is not None:
          self.on_write(time.perf_counter() - t0)
      except BaseException as e:  # pylint: disable=broad-except
        self._error = e

  def put(self, item) -> None:
    if self._error is not None:
      raise self._error
    self._q.put(item)

  def abort(self) -> None:
    """Stops after the frame being written; drops the rest (the caller removes the output)."""
    self._error = self._error or JaxswapError("aborted")
    while self._thread.is_alive():
      try:
        self._q.put(None, timeout=0.1)
        break
      except queue.Full:
        continue
    self._thread.join()

  def close(self) -> None:
    """Waits for every queued frame; re-raises the thread's error."""
    self._q.put(None)
    self._thread.join()
    if self._error is not None:
      raise self._error
