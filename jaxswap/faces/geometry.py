"""Face geometry as small pure numpy functions: template, Umeyama, crop matrices, mask polygons.

Coordinates are pixels with (0, 0) at the centre of the top-left pixel, the convention of
`cv2.warpAffine`, so a matrix from here warps an image with OpenCV and maps points with
`transform_points` consistently. Matrices are 2x3 affine maps `frame -> face` unless named
otherwise.

Mean-face template
------------------
`TEMPLATE` holds, for the `STABLE_POINTS` of the mediapipe 478-point face mesh (eye contours,
eyebrows, nose, outer lips; never the jaw line, which slides with the mouth and head turns), the
2-D mean face in normalised coordinates. It was made once, offline, from mediapipe 0.10.14
`face_mesh` landmarks (refine_landmarks=True) of 1,000+ frames and photos of 12 people:
  1. frames turned more than ~15 degrees (nose-to-cheek distance asymmetry > 0.15) were dropped;
  2. generalised Procrustes analysis (similarity transforms fitted on the stable points), every
     person weighted equally;
  3. the mean was made exactly left-right symmetric (averaged with its mirror image, using the
     mesh's left/right point correspondence) and rotated so the eye and mouth corners are level;
  4. it was scaled so the mean face oval (`FACE_OVAL`: upper forehead to chin, cheek to cheek)
     spans 1.0 at its larger side (height; its width is 0.84) and centred on (0.5, 0.5).
So in template units the oval runs y 0 -> 1, x 0.08 -> 0.92; eyes sit at y ~0.32, the nose tip at
y ~0.53 and the mouth at y ~0.68-0.81. `alignment_matrix(..., coverage=c)` maps that unit face
box onto the centred square of side c * size: c = 1 puts the oval's top and bottom on the crop's
edges; smaller values leave a margin of background around the face.
"""

from __future__ import annotations

import cv2
import numpy as np

NUM_LANDMARKS = 478  # mediapipe face_mesh with refine_landmarks=True (468 + 2 x 5 iris points)

# Index sets of the mediapipe mesh (from mediapipe.solutions.face_mesh_connections). "Left" and
# "right" are the subject's: the right eye appears on the image's left in a frontal photo.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67,
             109)  # ordered ring, clockwise in the image from the top of the forehead
# The part of the oval at or below the eyebrows (cheeks and jaw): with the brows, the
# "components" outline.
LOWER_FACE_OVAL = (389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149,
                   150, 136, 172, 58, 132, 93, 234, 127, 162)
RIGHT_EYE = (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246)
LEFT_EYE = (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466)
RIGHT_BROW = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107)
LEFT_BROW = (276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326,
        327, 344, 440)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40,
              185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80,
              191)
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre first
LEFT_IRIS = (473, 474, 475, 476, 477)

_TEMPLATE_ROWS = (  # (mesh index, x, y) of the mean face, see the module docstring
    (0, 0.5000, 0.6836), (1, 0.5000, 0.5704), (2, 0.5000, 0.6021), (4, 0.5000, 0.5308),
    (5, 0.5000, 0.4773), (6, 0.5000, 0.3458), (7, 0.2419, 0.3278), (17, 0.5000, 0.8071),
    (19, 0.5000, 0.5891), (33, 0.2283, 0.3188), (37, 0.4516, 0.6752), (39, 0.4055, 0.6853),
    (40, 0.3750, 0.6963), (45, 0.4645, 0.5305), (46, 0.1734, 0.2438), (48, 0.3813, 0.5484),
    (52, 0.2578, 0.2060), (53, 0.2073, 0.2177), (55, 0.4206, 0.2425), (61, 0.3376, 0.7165),
    (63, 0.1880, 0.1926), (64, 0.3791, 0.5626), (65, 0.3272, 0.2114), (66, 0.3206, 0.1805),
    (70, 0.1526, 0.2254), (84, 0.4504, 0.8023), (91, 0.3750, 0.7620), (94, 0.5000, 0.5959),
    (97, 0.4501, 0.5983), (98, 0.3910, 0.5834), (105, 0.2451, 0.1756), (107, 0.4084, 0.1927),
    (115, 0.4045, 0.5383), (133, 0.3950, 0.3303), (144, 0.2774, 0.3381), (145, 0.3081, 0.3400),
    (146, 0.3533, 0.7387), (153, 0.3384, 0.3377), (154, 0.3671, 0.3337), (155, 0.3859, 0.3323),
    (157, 0.3610, 0.3056), (158, 0.3291, 0.2958), (159, 0.2973, 0.2942), (160, 0.2664, 0.2993),
    (161, 0.2474, 0.3075), (163, 0.2565, 0.3334), (168, 0.5000, 0.2967), (173, 0.3840, 0.3204),
    (181, 0.4081, 0.7864), (185, 0.3527, 0.7061), (195, 0.5000, 0.4325), (197, 0.5000, 0.3908),
    (220, 0.4327, 0.5334), (246, 0.2365, 0.3137), (249, 0.7581, 0.3278), (263, 0.7717, 0.3188),
    (267, 0.5484, 0.6752), (269, 0.5945, 0.6853), (270, 0.6250, 0.6963), (275, 0.5355, 0.5305),
    (276, 0.8266, 0.2438), (278, 0.6187, 0.5484), (282, 0.7422, 0.2060), (283, 0.7927, 0.2177),
    (285, 0.5794, 0.2425), (291, 0.6624, 0.7165), (293, 0.8120, 0.1926), (294, 0.6209, 0.5626),
    (295, 0.6728, 0.2114), (296, 0.6794, 0.1805), (300, 0.8474, 0.2254), (314, 0.5496, 0.8023),
    (321, 0.6250, 0.7620), (326, 0.5499, 0.5983), (327, 0.6090, 0.5834), (334, 0.7549, 0.1756),
    (336, 0.5916, 0.1927), (344, 0.5955, 0.5383), (362, 0.6050, 0.3303), (373, 0.7226, 0.3381),
    (374, 0.6919, 0.3400), (375, 0.6467, 0.7387), (380, 0.6616, 0.3377), (381, 0.6329, 0.3337),
    (382, 0.6141, 0.3323), (384, 0.6390, 0.3056), (385, 0.6709, 0.2958), (386, 0.7027, 0.2942),
    (387, 0.7336, 0.2993), (388, 0.7526, 0.3075), (390, 0.7435, 0.3334), (398, 0.6160, 0.3204),
    (405, 0.5919, 0.7864), (409, 0.6473, 0.7061), (440, 0.5673, 0.5334), (466, 0.7635, 0.3137),
)
STABLE_POINTS = np.array([r[0] for r in _TEMPLATE_ROWS], np.int64)
TEMPLATE = np.array([r[1:] for r in _TEMPLATE_ROWS], np.float64)
MASK_TYPES = ("components", "extended")  # the masks extraction writes for training
HULL_TYPES = MASK_TYPES + ("brows",)  # the outlines a conversion can blend with
BROW_LIFT = 0.5  # "brows": the brows raised by this x their height above the eyes


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
  """Least-squares similarity (or rigid) transform taking src points onto dst (Umeyama 1991).

  src, dst: (N, D). Returns the (D+1, D+1) homogeneous matrix. Reflections are excluded, so a
  mirrored face is never "aligned" by flipping it.
  """
  src = np.asarray(src, np.float64)
  dst = np.asarray(dst, np.float64)
  n, dim = src.shape
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  cov = dst_c.T @ src_c / n
  u, s, vt = np.linalg.svd(cov)
  d = np.ones(dim)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    d[-1] = -1.0
  rot = u @ np.diag(d) @ vt
  src_var = (src_c ** 2).sum() / n
  scale = (s * d).sum() / src_var if estimate_scale and src_var > 0 else 1.0
  out = np.eye(dim + 1)
  out[:dim, :dim] = scale * rot
  out[:dim, dim] = dst_mean - scale * rot @ src_mean
  return out


def template_points(size: int, coverage: float) -> np.ndarray:
  """The template's stable points in the pixels of a size x size crop at this coverage."""
  return (TEMPLATE - 0.5) * (coverage * size) + size / 2.0


def alignment_matrix(landmarks: np.ndarray, size: int, coverage: float) -> np.ndarray:
  """The 2x3 frame -> face matrix that puts a face's stable landmarks on the template.

  landmarks: (478, 2) mesh points in frame pixels (or already just the STABLE_POINTS rows).
  """
  pts = np.asarray(landmarks, np.float64)
  if pts.shape[0] != len(STABLE_POINTS):
    pts = pts[STABLE_POINTS]
  return umeyama(pts, template_points(size, coverage))[:2]


def to_3x3(matrix: np.ndarray) -> np.ndarray:
  m = np.asarray(matrix, np.float64)
  if m.shape == (3, 3):
    return m
  return np.vstack([m, [0.0, 0.0, 1.0]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
  """Inverse of a 2x3 affine map (face -> frame from frame -> face), as 2x3."""
  return np.linalg.inv(to_3x3(matrix))[:2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
  """2x3 matrix of `outer(inner(x))`."""
  return (to_3x3(outer) @ to_3x3(inner))[:2]


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Applies a 2x3 (or 3x3 homogeneous) affine map to (..., 2) points."""
  m = to_3x3(matrix)
  pts = np.asarray(points, np.float64)
  return pts @ m[:2, :2].T + m[:2, 2]


def matrix_scale(matrix: np.ndarray) -> float:
  """Isotropic scale of a similarity matrix (face pixels per frame pixel)."""
  return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, np.float64)[:2, :2]))))


def matrix_angle(matrix: np.ndarray) -> float:
  """Rotation of a similarity matrix, radians."""
  m = np.asarray(matrix, np.float64)
  return float(np.arctan2(m[1, 0], m[0, 0]))


# ----------------------------------------------------------------------------------------------
# Mask polygons
# ----------------------------------------------------------------------------------------------


def convex_hull(points: np.ndarray) -> np.ndarray:
  """Counter-clockwise (in x-right, y-down pixels: clockwise on screen) hull without collinear
  points, starting at the lowest (x, y): the output of Andrew's monotone chain.

  OpenCV finds which points are on the hull (conversion draws several per face, and a Python
  chain cost ~0.15 ms each); the points themselves stay float64.
  """
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  if len(pts) < 3:
    return np.unique(pts, axis=0)
  hull = pts[cv2.convexHull(pts.astype(np.float32), returnPoints=False)[:, 0]]
  if len(hull) < 3:  # all points on one line: its two ends
    return np.unique(hull, axis=0)
  x, y = hull[:, 0], hull[:, 1]
  if np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y) < 0:
    hull = hull[::-1]
  return np.roll(hull, -np.lexsort((hull[:, 1], hull[:, 0]))[0], axis=0)


def fill_convex(hull: np.ndarray, height: int, width: int) -> np.ndarray:
  """Boolean (H, W) mask of the pixel centres inside a convex polygon (edges included).

  Each edge bounds x on every row (a half-plane), so a row's inside is one interval: rows x
  edges work instead of pixels x edges.
  """
  mask = np.zeros((height, width), bool)
  hull = np.asarray(hull, np.float64)
  if len(hull) < 3:
    return mask
  a, b = hull, np.roll(hull, -1, axis=0)
  ex, ey = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
  ys = np.arange(height, dtype=np.float64)[:, None]
  # Inside edge (a, b) when ey * x <= ex * (y - ay) + ey * ax: an upper bound on x when ey > 0,
  # a lower bound when ey < 0, a whole row in or out when ey == 0.
  with np.errstate(divide="ignore", invalid="ignore"):
    bound = ex * (ys - a[:, 1]) / ey + a[:, 0]
  eps = 1e-9
  hi = np.where(ey > 0, bound + eps, np.inf).min(1)
  lo = np.where(ey < 0, bound - eps, -np.inf).max(1)
  flat_ok = np.all((ey != 0) | (ex * (ys - a[:, 1]) >= -eps), axis=1)
  xs = np.arange(width, dtype=np.float64)
  mask[:] = (xs >= lo[:, None]) & (xs <= hi[:, None]) & flat_ok[:, None]
  return mask


def components_hull(landmarks: np.ndarray) -> np.ndarray:
  """Outline of the face from the eyebrows down to the chin (faceswap's "components")."""
  pts = np.asarray(landmarks)
  return convex_hull(pts[list(LOWER_FACE_OVAL + RIGHT_BROW + LEFT_BROW)])


def extended_hull(landmarks: np.ndarray) -> np.ndarray:
  """The components outline extended up onto the forehead: the mesh's whole face oval."""
  pts = np.asarray(landmarks)
  return convex_hull(pts[list(FACE_OVAL + LOWER_FACE_OVAL + RIGHT_BROW + LEFT_BROW)])


def brows_hull(landmarks: np.ndarray, lift: float = BROW_LIFT) -> np.ndarray:
  """The components outline with each brow raised by `lift` x its height above its eye.

  faceswap's and DeepFaceLab's "extended" mask: the brows are inside with room to spare, the
  forehead and hairline above them are not (our `extended` takes the mesh's whole oval, up to the
  hairline).
  """
  pts = np.asarray(landmarks, np.float64)
  raised = [pts[list(brow)] + lift * (pts[list(brow)].mean(0) - pts[list(eye)].mean(0))
            for brow, eye in ((RIGHT_BROW, RIGHT_EYE), (LEFT_BROW, LEFT_EYE))]
  return convex_hull(np.concatenate([pts[list(LOWER_FACE_OVAL)]] + raised))


def _scaled_hull(points: np.ndarray, factor: float) -> np.ndarray:
  hull = convex_hull(points)
  centre = hull.mean(0)
  return centre + (hull - centre) * factor


def feature_hulls(landmarks: np.ndarray) -> list[np.ndarray]:
  """Outlines of the eyes (with lids and lashes), the mouth and the brows, each grown well past
  its contour: where a face's identity-bearing edges are (conversion keeps the frame's detail
  off them)."""
  pts = np.asarray(landmarks, np.float64)
  return priority_hulls(pts, 1.5) + [_scaled_hull(pts[list(b)], 1.6) for b in (RIGHT_BROW,
                                                                                LEFT_BROW)]


def priority_hulls(landmarks: np.ndarray, grow: float = 1.3) -> list[np.ndarray]:
  """Right eye, left eye and mouth outlines, grown about their centres by `grow`.

  Eye outlines are thin slits; growing them takes in the lids and lashes a loss should weight.
  """
  pts = np.asarray(landmarks)
  return [_scaled_hull(pts[list(idx)], grow) for idx in (RIGHT_EYE, LEFT_EYE, LIPS_OUTER)]


def mask_hull(landmarks: np.ndarray, kind: str = "components") -> np.ndarray:
  """The `kind` outline (a convex hull) of a face's landmarks."""
  if kind == "components":
    return components_hull(landmarks)
  if kind == "extended":
    return extended_hull(landmarks)
  if kind == "brows":
    return brows_hull(landmarks)
  raise ValueError(f"mask kind {kind!r} is not one of {HULL_TYPES}")


def face_mask(landmarks: np.ndarray, size: int, kind: str = "components") -> np.ndarray:
  """uint8 (size, size) mask, 255 inside the `kind` outline of aligned-crop landmarks."""
  return fill_convex(mask_hull(landmarks, kind), size, size).astype(np.uint8) * 255


def priority_mask(landmarks: np.ndarray, size: int, grow: float = 1.3) -> np.ndarray:
  """uint8 (size, size) mask, 255 on the eyes and mouth of aligned-crop landmarks."""
  mask = np.zeros((size, size), bool)
  for hull in priority_hulls(landmarks, grow):
    mask |= fill_convex(hull, size, size)
  return mask.astype(np.uint8) * 255
