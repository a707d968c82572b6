"""Frame <-> aligned face: the forward warp (a face's crop) and its inverse (back into the frame).

Matrices are 2x3 frame -> face maps (`jaxswap.faces.geometry`), pixel centres at integers (the
`cv2.warpAffine` convention), so `align_face(frame, m, size)` and `warp_to_frame(crop, m, roi)`
are exact inverses up to interpolation.
"""

from __future__ import annotations

import cv2
import numpy as np

from jaxswap.faces import geometry

# Face pixels per frame pixel below which a cubic inverse warp runs as resize + linear warp.
CUBIC_IN_TWO_BELOW = 0.5


def align_face(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """The size x size aligned crop of `frame` under a frame -> face matrix.

  Off-frame pixels are black (unknown, not invented). Enlarging uses cubic interpolation; a
  strong reduction (a big face in a 4K frame) first shrinks just the face's window with an area
  filter, which a warp cannot do, so fine texture does not alias.
  """
  scale = geometry.matrix_scale(matrix)
  if scale >= 0.7:
    flags = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(frame, matrix, (size, size), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT)
  h, w = frame.shape[:2]
  corners = geometry.transform_points(geometry.invert_affine(matrix),
                                      [[0, 0], [size, 0], [0, size], [size, size]])
  pad = 2.0 / scale
  x0, y0 = np.maximum(np.floor(corners.min(0) - pad).astype(int), 0)
  x1, y1 = np.minimum(np.ceil(corners.max(0) + pad).astype(int), [w, h])
  if x1 <= x0 or y1 <= y0:
    return np.zeros((size, size, 3), np.uint8)
  # OpenCV's area filter is 4x faster for a whole factor k (k x k box means): shrink by the
  # largest k first, over a window grown to a multiple of k; then by the rest (< 2x) with the
  # area filter again, or, when that is under 1.25x, in the final linear warp.
  k = int(1.0 / scale)
  if k >= 2 and min(x1 - x0, y1 - y0) >= k:
    x0, x1 = _multiple_of(k, x0, x1, w)
    y0, y1 = _multiple_of(k, y0, y1, h)
  else:
    k = 1
  small = frame[y0:y1, x0:x1]
  if k >= 2:
    small = cv2.resize(small, (small.shape[1] // k, small.shape[0] // k),
                       interpolation=cv2.INTER_AREA)
  if k * scale < 0.8:  # more than 1.25x left: area again (a linear warp would alias)
    small = cv2.resize(small, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                       interpolation=cv2.INTER_AREA)
  rx, ry = small.shape[1] / (x1 - x0), small.shape[0] / (y1 - y0)
  # frame -> small: s = r * (x - x0 + 0.5) - 0.5 (resize maps pixel areas, centres at +0.5; a
  # whole-factor shrink then the rest compose to the same map).
  to_small = np.array([[rx, 0, rx * (0.5 - x0) - 0.5], [0, ry, ry * (0.5 - y0) - 0.5]])
  m = geometry.compose(matrix, geometry.invert_affine(to_small))
  return cv2.warpAffine(small, m, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT)


def _multiple_of(k: int, lo: int, hi: int, limit: int) -> tuple[int, int]:
  """[lo, hi) widened to a multiple of k inside [0, limit), else cut to one (< k pixels)."""
  n = -(-(hi - lo) // k) * k
  if lo + n <= limit:
    return lo, lo + n
  if hi - n >= 0:
    return hi - n, hi
  return lo, lo + (hi - lo) // k * k


def rescale_matrix(matrix: np.ndarray, size_from: int, size_to: int) -> np.ndarray:
  """The frame -> face matrix for a `size_to` crop from one for a `size_from` crop.

  Equals `geometry.alignment_matrix(landmarks, size_to, coverage)` recomputed from scratch: the
  template puts the crop centre at size / 2, so crop points scale about that centre.
  """
  k = size_to / size_from
  shift = size_to / 2 - k * size_from / 2
  scale = np.array([[k, 0.0, shift], [0.0, k, shift]])
  return geometry.compose(scale, matrix)


def face_roi(matrix: np.ndarray, size: int, width: int, height: int, pad: int = 2,
             rect: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int] | None:
  """(x0, y0, x1, y1): the frame rectangle a size x size crop covers (+pad), clipped; None if off.

  With `rect` = (x, y, w, h), crop pixels (a mask's support, `cv2.boundingRect`), only the frame
  pixels a linear inverse warp can draw from those: their centres +-1 crop pixel (+pad).
  """
  if rect is None:
    lo, hi = (-0.5, -0.5), (size - 0.5, size - 0.5)
  else:
    x, y, w, h = rect
    lo, hi = (x - 1.0, y - 1.0), (x + w, y + h)
  corners = geometry.transform_points(geometry.invert_affine(matrix),
                                      [[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]],
                                       [hi[0], hi[1]]])
  x0, y0 = np.floor(corners.min(0)).astype(int) - pad
  x1, y1 = np.ceil(corners.max(0)).astype(int) + pad + 1
  x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
  if x1 <= x0 or y1 <= y0:
    return None
  return int(x0), int(y0), int(x1), int(y1)


def warp_to_frame(image: np.ndarray, matrix: np.ndarray, roi: tuple[int, int, int, int],
                  interpolation: int = cv2.INTER_LINEAR,
                  border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
  """The inverse warp: an aligned crop (under frame -> face `matrix`) drawn into a frame ROI.

  Only the ROI is computed, so a face costs its own size, not the frame's. A cubic enlargement
  of 2x or more is done in two passes: a cubic resize to the frame's scale (separable,
  vectorised) and a linear warp at about 1:1 for the rotation and the sub-pixel shift. Half the
  cost of the one-pass cubic warp; on a model's output (smooth at its own pixels) the two differ
  by a few tenths of a level (0.1 on average on a 64 px model's faces in 720p).
  """
  x0, y0, x1, y1 = roi
  to_roi = geometry.compose(matrix, [[1, 0, x0], [0, 1, y0]])  # ROI pixel -> crop pixel
  scale = geometry.matrix_scale(matrix)
  if interpolation == cv2.INTER_CUBIC and 0 < scale < CUBIC_IN_TWO_BELOW:
    h, w = image.shape[:2]
    bw, bh = max(1, round(w / scale)), max(1, round(h / scale))
    image = cv2.resize(image, (bw, bh), interpolation=cv2.INTER_CUBIC)
    kx, ky = bw / w, bh / h  # crop -> enlarged: e = k * (c + 0.5) - 0.5 (resize's centres)
    to_roi = geometry.compose([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5]], to_roi)
    interpolation = cv2.INTER_LINEAR
  return cv2.warpAffine(image, to_roi, (x1 - x0, y1 - y0),
                        flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=border)
