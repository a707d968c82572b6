"""Photos in: OpenCV-decoded image files as the RGB uint8 a person would see.

Normalised so the detector sees what an image viewer shows: EXIF orientation applied, 16-bit
scaled to 8-bit, grayscale expanded to RGB, transparency composited over white.
"""

from __future__ import annotations

import os
import re
import struct

import cv2
import numpy as np

from jaxswap.errors import JaxswapError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")




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
