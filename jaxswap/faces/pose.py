"""Head pose from 2-D landmarks (a generic 3D head + solvePnP) and pose coverage of face sets.

One generic head serves both landmark schemes jaxswap meets: dlib's 68 points (the evaluator's
independent judge) and mediapipe's 478-point mesh (extraction). Only its rough shape matters:
poses are compared with poses fitted with the same model, never read as absolute truths.

Coverage: a decoder learns to draw the poses its person's footage shows. Where the other person
turns or looks further, a swap holds the nearest pose it knows. `pose_range` of A's faces and
`outside_fraction` of B's tell how often that will happen before any training.
"""

from __future__ import annotations

import cv2
import numpy as np

# A generic head in millimetres (x to the image's right, y down, z away from the camera): typical
# adult proportions, with the in-plane layout set to the mean of dlib landmarks of near-frontal
# faces. Points that stay put when the expression changes: eye corners, nose, mouth corners.
HEAD = {
    "right_eye_outer": (-44.0, 0.0, 12.0), "right_eye_inner": (-19.0, 2.0, 2.0),
    "left_eye_inner": (19.0, 2.0, 2.0), "left_eye_outer": (44.0, 0.0, 12.0),
    "nose_bridge": (0.0, -4.0, -4.0), "nose_tip": (0.0, 35.0, -24.0),
    "right_nose_wing": (-14.0, 43.0, -8.0), "subnasale": (0.0, 48.0, -12.0),
    "left_nose_wing": (14.0, 43.0, -8.0), "right_mouth_corner": (-25.0, 72.0, 4.0),
    "left_mouth_corner": (25.0, 72.0, 4.0),
}
# Each scheme's index of those points ("right" is the subject's: the image's left when frontal).
DLIB68 = {"right_eye_outer": 36, "right_eye_inner": 39, "left_eye_inner": 42,
          "left_eye_outer": 45, "nose_bridge": 27, "nose_tip": 30, "right_nose_wing": 31,
          "subnasale": 33, "left_nose_wing": 35, "right_mouth_corner": 48,
          "left_mouth_corner": 54}
MEDIAPIPE478 = {"right_eye_outer": 33, "right_eye_inner": 133, "left_eye_inner": 362,
                "left_eye_outer": 263, "nose_bridge": 168, "nose_tip": 1, "right_nose_wing": 98,
                "subnasale": 2, "left_nose_wing": 327, "right_mouth_corner": 61,
                "left_mouth_corner": 291}
_OBJECT = np.array(list(HEAD.values()), np.float64)


def camera(height: int, width: int) -> np.ndarray:
  """A pinhole camera with the focal length the longer image side, centred."""
  f = float(max(height, width))
  return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float64)


def head_rotation(points: np.ndarray, height: int, width: int,
                  scheme: dict[str, int] = DLIB68) -> np.ndarray:
  """3x3 rotation of the generic head that projects onto these landmarks (NaN if none fits)."""
  image = np.asarray(points, np.float64)[[scheme[k] for k in HEAD]]
  if not np.all(np.isfinite(image)):
    return np.full((3, 3), np.nan)
  ok, rvec, _ = cv2.solvePnP(_OBJECT, image, camera(height, width), None,
                             flags=cv2.SOLVEPNP_SQPNP)
  if not ok:
    ok, rvec, _ = cv2.solvePnP(_OBJECT, image, camera(height, width), None)
  return cv2.Rodrigues(rvec)[0] if ok else np.full((3, 3), np.nan)


def yaw_pitch_roll(rotation: np.ndarray) -> tuple[float, float, float]:
  """Euler angles in degrees (for reading a pose, not for errors: they wrap)."""
  if not np.all(np.isfinite(rotation)):
    return (float("nan"),) * 3
  pitch, yaw, roll = cv2.RQDecomp3x3(rotation)[0]
  return float(yaw), float(pitch), float(roll)


def _finite(angles) -> np.ndarray:
  a = np.asarray(angles, np.float64).reshape(-1, 3)
  return a[np.all(np.isfinite(a), axis=1)]


def pose_range(angles, margin: float = 5.0, tail: float = 0.0) -> dict | None:
  """The yaw and pitch span of a set of (yaw, pitch, roll) poses, widened by `margin` degrees.

  `tail` > 0 leaves out that fraction of the poses at each end of each axis (a few misfitted
  faces in a large set should not stretch the span).
  """
  a = _finite(angles)
  if not len(a):
    return None
  lo, hi = np.quantile(a[:, :2], [tail, 1.0 - tail], axis=0)
  return {"yaw": [float(lo[0] - margin), float(hi[0] + margin)],
          "pitch": [float(lo[1] - margin), float(hi[1] + margin)], "margin_deg": margin}


def beyond(angles, span: dict) -> dict[str, np.ndarray]:
  """Per direction, which (finite) poses lie past `span` (from pose_range) that way.

  Directions are the image's, in this module's convention: pitch > 0 looks down, yaw > 0 turns
  the face towards the image's left.
  """
  a = _finite(angles)
  return {"down": a[:, 1] > span["pitch"][1], "up": a[:, 1] < span["pitch"][0],
          "left": a[:, 0] > span["yaw"][1], "right": a[:, 0] < span["yaw"][0]}


def outside_fraction(angles, span: dict) -> float | None:
  """The fraction of poses whose yaw or pitch lies outside `span` (from pose_range)."""
  ways = beyond(angles, span)
  if not len(ways["down"]):
    return None
  return float(np.mean(ways["down"] | ways["up"] | ways["left"] | ways["right"]))
