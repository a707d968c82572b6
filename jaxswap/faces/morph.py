"""Landmark morph: moves a swapped face's features onto the source face's landmarks.

A decoder draws its person's features where its training faces had them: a mouth it saw half open
comes out half open, eyes it rarely saw shut stay open through a blink, and its person's nose and
mouth sit a little higher or lower than the source's, which reads as a tilt of the head. The morph
finds the 478 mesh landmarks of the swapped face itself (mediapipe, as in extraction), and warps the
face so that its eyes, brows, nose, lips and face outline move `strength` of the way onto the
source face's landmarks in the same aligned crop: a thin-plate spline through those points, held
still on the crop's border. The pixels are the model's; only where they sit changes.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from jaxswap.faces import geometry

# The points that carry expression and pose, in the subject's right-then-left order: each eye's
# corners and lids, the brows, the nose's bridge, tip and wings, both lip contours and the cheek
# and jaw line (the forehead's top is left where the model drew it). Every other point of the
# denser contours: with the border's points the spline's system stays under 100 unknowns, which
# OpenBLAS solves on the calling thread (larger ones wake its thread pool, and the conversion's
# blend threads, each morphing faces, then contend with it: a third of the frame rate, measured).
MORPH_POINTS = np.array(
    (33, 160, 159, 158, 133, 153, 145, 144) + (263, 387, 386, 385, 362, 380, 374, 373)  # eyes
    + (70, 63, 105, 66, 107) + (300, 293, 334, 296, 336)  # brows
    + (168, 6, 195, 4, 1, 2, 98, 327, 64, 294)  # nose
    + (61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91)  # outer lips
    + (78, 81, 13, 311, 308, 402, 14, 178)  # inner lips
    + (356, 323, 288, 365, 378, 377, 152, 148, 149, 136, 58, 93, 127),  # cheeks and jaw
    np.int64)

_BORDER_STEPS = 4  # fixed points per crop side
_GRID = 33  # the spline is evaluated on this grid and interpolated up to the crop
_SMOOTHING = 1e-3  # thin-plate regularisation (crop side = 1): tolerates landmark noise
# A mean landmark shift above this (in the source's inter-ocular distances) means the mesh did not
# find the swapped face's features (it typically is 0.1-0.25: 0.09 on pair 1, 0.21 on pair 2).
MAX_SHIFT = 0.5


def _tps_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """U(|a_i - b_j|) for point sets a (M, 2), b (N, 2): U(r) = r^2 log r = r2 log(r2) / 2."""
  r2 = np.square(a[:, None, 0] - b[None, :, 0]) + np.square(a[:, None, 1] - b[None, :, 1])
  np.maximum(r2, 1e-20, out=r2)  # U(0) = 0 without a log of 0
  return 0.5 * r2 * np.log(r2)


def backward_map(targets: np.ndarray, sources: np.ndarray, size: int) -> tuple[np.ndarray,
                                                                               np.ndarray]:
  """cv2.remap maps (map_x, map_y) of a size x size crop taking `sources` to `targets`.

  A pixel of the result at targets[i] samples the input at sources[i]; the crop's border samples
  itself. targets, sources: (N, 2) crop pixels.
  """
  edge = np.linspace(0.0, size - 1.0, _BORDER_STEPS + 1)[:-1]  # each corner once
  lo, hi = np.zeros_like(edge), np.full_like(edge, size - 1.0)
  back = hi - edge
  border = np.concatenate([np.stack(p, 1) for p in ((edge, lo), (hi, edge), (back, hi),
                                                     (lo, back))])  # clockwise round the edge
  ctrl = np.concatenate([np.asarray(targets, np.float64), border]) / size
  value = np.concatenate([np.asarray(sources, np.float64) - targets, np.zeros_like(border)]) / size
  n = len(ctrl)
  poly = np.concatenate([np.ones((n, 1)), ctrl], 1)
  system = np.zeros((n + 3, n + 3))
  system[:n, :n] = _tps_kernel(ctrl, ctrl) + _SMOOTHING * np.eye(n)
  system[:n, n:] = poly
  system[n:, :n] = poly.T
  coef = np.linalg.solve(system, np.concatenate([value, np.zeros((3, 2))]))
  g = np.linspace(0.0, (size - 1.0) / size, _GRID)
  gx, gy = np.meshgrid(g, g)
  grid = np.stack([np.ones(gx.size), gx.ravel(), gy.ravel()], 1)
  # float32 here is 7x faster (numpy's vectorised log) and ~1e-3 px from float64 on a crop.
  k = _tps_kernel(grid[:, 1:].astype(np.float32), ctrl.astype(np.float32)).astype(np.float64)
  shift = k @ coef[:n] + grid @ coef[n:]
  shift = (shift * size).reshape(_GRID, _GRID, 2).astype(np.float32)
  shift = cv2.resize(shift, (size, size), interpolation=cv2.INTER_LINEAR)
  base = np.arange(size, dtype=np.float32)
  return base[None, :] + shift[..., 0], base[:, None] + shift[..., 1]


def face_landmarks(detector, rgb: np.ndarray) -> np.ndarray | None:
  """(478, 2) mesh landmarks of the face filling an aligned crop (float [0, 1] or uint8 RGB)."""
  img = rgb if rgb.dtype == np.uint8 else np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return detector.crop_landmarks(img)


def morph_face(detector, rgb: np.ndarray, learned: np.ndarray | None, target: np.ndarray,
               strength: float) -> tuple[np.ndarray, np.ndarray | None, bool]:
  """Warps a swapped face (and its learned mask) toward the source's landmarks `target`.

  detector: a `detect.FaceDetector` (finds the swapped face's own landmarks); rgb: float32
  (S, S, 3) in [0, 1]; target: (478, 2) source landmarks in the same crop's pixels. Returns
  (rgb, learned, morphed); morphed is False, and the inputs come back unchanged, when no landmarks
  are found on the swapped face or they lie implausibly far from the source's.
  """
  if strength <= 0:
    return rgb, learned, False
  found = face_landmarks(detector, rgb)
  if found is None:
    return rgb, learned, False
  size = rgb.shape[0]
  target = np.asarray(target, np.float64)
  src = found[MORPH_POINTS].astype(np.float64)
  iod = np.linalg.norm(target[list(geometry.RIGHT_EYE)].mean(0) -
                       target[list(geometry.LEFT_EYE)].mean(0))
  if np.linalg.norm(target[MORPH_POINTS] - src, axis=1).mean() > MAX_SHIFT * max(iod, 1.0):
    return rgb, learned, False
  dst = src + strength * (target[MORPH_POINTS] - src)
  map_x, map_y = backward_map(dst, src, size)
  out = cv2.remap(rgb, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
  np.clip(out, 0.0, 1.0, out=out)
  if learned is not None:
    learned = cv2.remap(learned, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
  return out, learned, True


class Morpher:
  """`morph_face` at one strength from any number of threads; `close()` frees the detectors.

  mediapipe graphs are stateful, so each calling thread gets its own detector on first use (the
  conversion's blend pool); they all belong to this object and are closed with it.
  """

  def __init__(self, strength: float):
    self.strength = strength
    self._local = threading.local()
    self._detectors: list = []
    self._lock = threading.Lock()

  def _detector(self):
    detector = getattr(self._local, "detector", None)
    if detector is None:
      from jaxswap.faces import detect  # pylint: disable=g-import-not-at-top
      detector = self._local.detector = detect.FaceDetector()
      with self._lock:
        self._detectors.append(detector)
    return detector

  def __call__(self, rgb: np.ndarray, learned: np.ndarray | None, target: np.ndarray):
    if self.strength <= 0:
      return rgb, learned, False
    return morph_face(self._detector(), rgb, learned, target, self.strength)

  def close(self) -> None:
    with self._lock:
      detectors, self._detectors = self._detectors, []
    for detector in detectors:
      detector.close()

  def __enter__(self) -> "Morpher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
