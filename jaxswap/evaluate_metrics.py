"""What the evaluator measures on a pair of frames, from 68-point landmarks and pixels (no dlib).

Every measure compares the swap with the source frame it was made from, in the same place:
- head pose (`jaxswap.faces.pose`): the rotation solvePnP finds for a generic 3D face (eye
  corners, nose, mouth corners: points that stay put when the expression changes) fitted to each
  frame's landmarks, with the same pinhole camera (focal length = the longer image side,
  centred). The error is the angle of the relative rotation R_swap R_source^T (geodesic distance
  on SO(3), degrees), which counts yaw, pitch and roll together and does not depend on an
  Euler-angle convention. Over a clip, the
  mean of the relative rotations is the pose *bias* (a constant offset in every frame); the error
  left once it is removed is how far the swap strays from the head's motion. Per axis, the
  *follow* slope (swap angle regressed on source angle) says how much of the motion the swap
  makes: 1 turns with the head, 0 stays put. A decoder that never saw a pose (A's footage lacks
  it) draws the nearest one it knows, which shows as a slope well below 1 on that axis and a
  bias; `pose.outside_fraction` counts the source frames posed outside the span of A's footage.
- expression: eye and mouth landmarks (36-47, 48-67) of the swap mapped onto the source's by a
  least-squares similarity (Umeyama), then the mean point distance divided by the source's
  inter-ocular distance (outer eye corners 36-45, the 300-W convention). A different head position
  or size costs nothing; an eye that closes or a mouth that opens does.
- openness of the eyes and the mouth (`openness`), the swap's against the source's: the absolute
  difference per frame, and over a clip the follow slope of the swap's openness on the source's.
  A swap that keeps its eyes open through a blink, or its mouth shut while the source speaks,
  has a slope near 0 there even when its mean expression error is small.
- sharpness: variance of the Laplacian of the grey image inside the source face's landmark hull.
- flicker: mean absolute grey-level change from frame t to t+1 inside the same hull.
The sharpness and flicker of the swap are divided by the source's, so 1.0 means "like the input".
"""

from __future__ import annotations

import cv2
import numpy as np

from jaxswap.faces import geometry

EXPRESSION_POINTS = np.arange(36, 68)


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
  """Degrees of the rotation taking b to a."""
  cos = (np.trace(a @ b.T) - 1.0) / 2.0
  return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def mean_rotation(rotations) -> np.ndarray:
  """The chordal L2 mean of 3x3 rotations: their average projected back onto SO(3) (SVD)."""
  u, _, vt = np.linalg.svd(np.mean(np.asarray(rotations, np.float64), axis=0))
  d = np.sign(np.linalg.det(u @ vt))
  return u @ np.diag([1.0, 1.0, d]) @ vt


def follow_slopes(source_values, swap_values, min_spread: float | list = 1.0) -> list:
  """Per column (yaw, pitch, roll; or eyes, mouth): the least-squares slope of swap on source.

  1 when the swap moves as the source does, 0 when it holds one value whatever the source does.
  None for a column in which the source varies less than `min_spread` (standard deviation; one
  for every column or one each) or when fewer than 3 frames have both: nothing to follow.
  """
  src, swap = (np.asarray(a, np.float64) for a in (source_values, swap_values))
  cols = src.shape[-1] if src.ndim == 2 else 3
  src, swap = src.reshape(-1, cols), swap.reshape(-1, cols)
  spread = np.broadcast_to(np.asarray(min_spread, np.float64), (cols,))
  ok = np.all(np.isfinite(src), axis=1) & np.all(np.isfinite(swap), axis=1)
  if ok.sum() < 3:
    return [None] * cols
  x, y = src[ok] - src[ok].mean(0), swap[ok] - swap[ok].mean(0)
  return [float(x[:, k] @ y[:, k] / (x[:, k] @ x[:, k])) if x[:, k].std() >= spread[k] else None
          for k in range(cols)]


def inter_ocular(points: np.ndarray) -> float:
  return float(np.linalg.norm(points[45] - points[36]))


def expression_error(swap: np.ndarray, source: np.ndarray) -> float:
  """Eye + mouth landmark distance after a similarity fit, in source inter-ocular units."""
  src = np.asarray(source, np.float64)[EXPRESSION_POINTS]
  dst = np.asarray(swap, np.float64)[EXPRESSION_POINTS]
  m = geometry.umeyama(dst, src)
  fitted = dst @ m[:2, :2].T + m[:2, 2]
  return float(np.linalg.norm(fitted - src, axis=1).mean() / max(inter_ocular(source), 1e-6))


RIGHT_EYE_68, LEFT_EYE_68 = (36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47)
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper and lower inner lip, left to right
# Spreads below which a clip's openness does not move enough to follow (standard deviations):
# about a fifth of an open eye's aspect ratio, a twentieth of an inter-ocular distance.
OPENNESS_MIN_SPREAD = (0.02, 0.02)


def _eye_aspect(points: np.ndarray, eye) -> float:
  p = points[list(eye)]
  height = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
  return float(height / (2.0 * max(np.linalg.norm(p[0] - p[3]), 1e-6)))


def openness(points: np.ndarray) -> tuple[float, float]:
  """(eyes, mouth): how open one face's eyes and mouth are, from its 68 landmarks.

  eyes: the eye aspect ratio (Soukupova & Cech 2016: the two lid-to-lid heights over the eye's
  width), the mean of both eyes: about 0.3 open, under 0.2 closed. mouth: the mean gap between
  the inner lips over the inter-ocular distance: 0 closed, about 0.3 wide open.
  """
  p = np.asarray(points, np.float64)
  eyes = (_eye_aspect(p, RIGHT_EYE_68) + _eye_aspect(p, LEFT_EYE_68)) / 2.0
  gap = np.mean([np.linalg.norm(p[a] - p[b]) for a, b in INNER_LIP_PAIRS])
  return eyes, float(gap / max(inter_ocular(p), 1e-6))


def face_region(points: np.ndarray, height: int, width: int, margin: int = 2):
  """(row slice, column slice, bool mask) of the landmarks' convex hull, clipped to the frame.

  The slices carry `margin` extra pixels so a 3x3 filter inside the mask sees real neighbours.
  """
  pts = np.asarray(points, np.float64)
  x0 = int(np.clip(np.floor(pts[:, 0].min()) - margin, 0, width))
  y0 = int(np.clip(np.floor(pts[:, 1].min()) - margin, 0, height))
  x1 = int(np.clip(np.ceil(pts[:, 0].max()) + margin + 1, 0, width))
  y1 = int(np.clip(np.ceil(pts[:, 1].max()) + margin + 1, 0, height))
  mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
  if mask.size:
    hull = cv2.convexHull(np.round(pts - (x0, y0)).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
  return slice(y0, y1), slice(x0, x1), mask.astype(bool)


def grey(rgb: np.ndarray) -> np.ndarray:
  return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def sharpness(rgb: np.ndarray, region) -> float:
  """Variance of the Laplacian inside the region (0 when the region is empty)."""
  rows, cols, mask = region
  if not mask.any():
    return 0.0
  lap = cv2.Laplacian(grey(rgb[rows, cols]).astype(np.float64), cv2.CV_64F)
  return float(lap[mask].var())


def change(rgb: np.ndarray, next_rgb: np.ndarray, region) -> float:
  """Mean absolute grey-level change between two frames inside the region."""
  rows, cols, mask = region
  if not mask.any():
    return 0.0
  a = grey(rgb[rows, cols]).astype(np.float64)
  b = grey(next_rgb[rows, cols]).astype(np.float64)
  return float(np.abs(b - a)[mask].mean())


def ratio(value: float | None, reference: float | None, eps: float = 1e-9) -> float | None:
  """value / reference; None when either is missing or the reference is ~0 (a still, flat face)."""
  if value is None or reference is None or abs(reference) < eps:
    return None
  return float(value / reference)
