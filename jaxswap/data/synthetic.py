"""Two parametric cartoon identities rendered under shared pose/expression parameters.

Why: a face-swap model is judged by how well B's expression survives on A's face, and real video
never shows that ground truth. Here it is exact: `render("a", params_of_a_frame_of_b)` *is* the
correct swap B->A. Pure numpy, vectorised over the batch and the pixels (anti-aliased signed
distance fields, small features computed only in their window): ~3000 faces/s at 64 px, one core.

Coordinates. Shapes are drawn in a face frame (x right, y down, origin between the cheeks; the skin
oval has half-axes of about 0.6 by 0.8); yaw/pitch rotate 3-D anchor points (x, y, depth) about the
head centre (positive yaw moves the features to the image's right, positive pitch moves them up);
roll, scale and shift then map the face frame to the crop, where [-1, 1] spans the whole crop.
Landmarks use the OpenCV convention: pixel (row i, column j) has its centre at x=j, y=i, so the
crop spans [-0.5, size - 0.5]. "left"/"right" are as seen in the image.
"""

from __future__ import annotations

import numpy as np

from jaxswap.data import synthetic_draw as draw
from jaxswap.errors import JaxswapError

IDENTITIES: tuple[str, ...] = ("a", "b")

# (low, high) of each shared parameter: angles in radians, shifts in fractions of the crop size.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-0.3, 0.3), "pitch": (-0.2, 0.2), "roll": (-0.07, 0.07),
    "scale": (0.95, 1.05), "shift_x": (-0.03, 0.03), "shift_y": (-0.03, 0.03),
    "mouth_open": (0.0, 1.0), "smile": (-0.5, 1.0), "eye_open": (0.1, 1.0),
    "gaze_x": (-1.0, 1.0), "gaze_y": (-1.0, 1.0),
    "light_angle": (-np.pi, np.pi), "light_strength": (0.0, 0.5),
}
PARAM_NAMES: tuple[str, ...] = tuple(PARAM_RANGES)
LANDMARK_NAMES: tuple[str, ...] = (
    "left_eye", "right_eye", "left_eye_outer", "left_eye_inner", "right_eye_inner",
    "right_eye_outer", "nose_tip", "mouth_left", "mouth_right", "upper_lip", "lower_lip",
    "left_brow", "right_brow")
NUM_LANDMARKS: int = len(LANDMARK_NAMES)

_CHUNK = 32  # faces per vectorised pass: keeps the per-pixel temporaries in cache.
_ZOOM = 1.15  # face frame -> crop: the skin oval spans ~70 % of an aligned crop's width
_CENTRE_Y = -0.04  # the face frame's origin sits slightly above the crop centre
_F = draw.F32


def _from_unit(name: str, u: np.ndarray) -> np.ndarray:
  """Maps u in [0, 1] into the parameter's range; eyes are mostly open, mouths mostly shut."""
  lo, hi = PARAM_RANGES[name]
  if name == "eye_open":
    u = 1.0 - (1.0 - u) ** 2
  elif name == "mouth_open":
    u = u ** 2
  return (lo + (hi - lo) * u).astype(_F)


def sample_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  """n independent draws (float32, shape (n,)) spanning the ranges of aligned face crops."""
  return {name: _from_unit(name, rng.random(n)) for name in PARAM_NAMES}


def trajectory_params(rng: np.random.Generator, n_frames: int) -> dict[str, np.ndarray]:
  """A video-like path: each parameter is a sum of three slow sinusoids (periods 60-360 frames)."""
  t = np.arange(n_frames, dtype=np.float64)[:, None]
  out = {}
  for name in PARAM_NAMES:
    freq = rng.uniform(1 / 360, 1 / 60, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    amp = rng.uniform(0.5, 1.0, 3)
    wave = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(1) / amp.sum()
    out[name] = _from_unit(name, (wave + 1.0) / 2.0)
  return out


def _look(identity: int | str) -> draw.Look:
  if isinstance(identity, (int, np.integer)) and 0 <= int(identity) < len(IDENTITIES):
    return draw.LOOKS[IDENTITIES[int(identity)]]
  if isinstance(identity, str) and identity in draw.LOOKS:
    return draw.LOOKS[identity]
  raise JaxswapError(f"synthetic identity must be one of {IDENTITIES} or 0/1, got {identity!r}")


def _check(params: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  missing = [k for k in PARAM_NAMES if k not in params]
  if missing:
    raise JaxswapError(f"synthetic params lack {missing}; expected keys {list(PARAM_NAMES)}")
  p = {k: np.asarray(params[k], np.float32).reshape(-1) for k in PARAM_NAMES}
  if len({v.shape for v in p.values()}) != 1:
    raise JaxswapError("synthetic params must all have the same length (one value per face)")
  if int(size) < 16:
    raise JaxswapError(f"synthetic render size must be >= 16 pixels, got {size}")
  return p


# --------------------------------------------------------------------------------------------
# Geometry: per-face anchor points in the face frame, arrays of shape (m,).
# --------------------------------------------------------------------------------------------


def _layout(p: dict[str, np.ndarray], lk: draw.Look) -> dict[str, np.ndarray]:
  """Projects the identity's 3-D anchors under the shared pose and expression."""
  sy, cy = np.sin(p["yaw"]), np.cos(p["yaw"])
  sp, cp = np.sin(p["pitch"]), np.cos(p["pitch"])

  def proj(x, y, z):
    return x * cy + z * sy, y * cp - (z * cy - x * sy) * sp

  g = {"cp": cp, "sy": sy}
  g["front_x"], g["front_y"] = proj(0.0, 0.0, 0.45)  # where a forehead/fringe point moves
  g["face_x"], _ = proj(0.0, 0.0, 0.2)
  g["back_x"], _ = proj(0.0, 0.0, -0.15)
  for s, k in ((-1.0, "l"), (1.0, "r")):
    g[k + "ex"], g[k + "ey"] = proj(s * lk.eye_x, lk.eye_y, 0.42)
    g[k + "ei"], g[k + "eiy"] = proj(s * (lk.eye_x - lk.eye_w), lk.eye_y + 0.005, 0.47)
    g[k + "eo"], g[k + "eoy"] = proj(s * (lk.eye_x + lk.eye_w), lk.eye_y - lk.eye_tilt, 0.33)
    brow_y = lk.brow_y - 0.03 * (p["eye_open"] - 0.7)  # wide eyes lift the brows
    g[k + "bx"], g[k + "by"] = proj(s * lk.eye_x, brow_y, 0.45)
    g[k + "bw"] = lk.brow_w * np.clip(np.cos(p["yaw"] + s * 0.55) / np.cos(0.55), 0.3, 1.2)
  g["nx"], g["ny"] = proj(0.0, lk.nose_y, 0.72)
  g["nbx"], g["nby"] = proj(0.0, lk.nose_y - lk.nose_bridge, 0.6)
  mw = lk.mouth_w * (1.0 + 0.15 * p["smile"] - 0.12 * p["mouth_open"])
  corner_y = lk.mouth_y - 0.05 * p["smile"]
  g["mx"], g["my"] = proj(0.0, lk.mouth_y, 0.52)
  g["mlx"], g["mly"] = proj(-mw, corner_y, 0.4)
  g["mrx"], g["mry"] = proj(mw, corner_y, 0.4)
  g["open_up"] = (0.004 + 0.03 * p["mouth_open"]) * cp
  g["open_lo"] = (0.004 + 0.085 * p["mouth_open"]) * cp
  return {k: np.asarray(v, _F) for k, v in g.items()}


def _landmarks(g: dict[str, np.ndarray], lk: draw.Look) -> tuple[np.ndarray, np.ndarray]:
  xs = [g["lex"], g["rex"], g["leo"], g["lei"], g["rei"], g["reo"], g["nx"], g["mlx"], g["mrx"],
        g["mx"], g["mx"], g["lbx"], g["rbx"]]
  ys = [g["ley"], g["rey"], g["leoy"], g["leiy"], g["reiy"], g["reoy"], g["ny"], g["mly"],
        g["mry"], g["my"] - g["open_up"] - lk.lip_up * 0.7, g["my"] + g["open_lo"] + lk.lip_lo,
        g["lby"], g["rby"]]
  return np.stack(xs, 1), np.stack(ys, 1)


def _render_chunk(lk: draw.Look, p: dict[str, np.ndarray], size: int, bg: np.ndarray):
  """One vectorised pass: pixel grid in the face frame, layers back to front, then lighting."""
  m = p["yaw"].shape[0]
  c, s = draw.col(np.cos(p["roll"])), draw.col(np.sin(p["roll"]))
  sc = draw.col(p["scale"])
  u = (np.arange(size, dtype=_F) + 0.5) * (2.0 / size) - 1.0
  ox, oy = 2.0 * p["shift_x"], 2.0 * p["shift_y"] + _CENTRE_Y  # face origin in the crop
  dx = u[None, None, :] - draw.col(ox)
  dy = u[None, :, None] - draw.col(oy)
  zoom = sc * _ZOOM
  qx = ((c * dx + s * dy) / zoom).astype(_F)
  qy = ((c * dy - s * dx) / zoom).astype(_F)

  def to_px(x, y):
    pad = (slice(None),) + (None,) * (x.ndim - 1)
    rc, rs = np.cos(p["roll"])[pad], np.sin(p["roll"])[pad]
    k = p["scale"][pad] * _ZOOM
    ux = k * (rc * x - rs * y) + ox[pad]
    uy = k * (rs * x + rc * y) + oy[pad]
    return (ux + 1.0) * (size / 2) - 0.5, (uy + 1.0) * (size / 2) - 0.5

  img = np.broadcast_to(bg[:, None], (3, m, size, size)).copy()
  cv = draw.Canvas(qx, qy, (zoom * (size / 2)).astype(_F), img, to_px)
  g = _layout(p, lk)
  prio = np.zeros((m, size, size), bool)
  fg = draw.back_layers(cv, g, lk)
  a_face, face_r2 = draw.face(cv, g, lk)
  draw.cheeks_nose(cv, g, lk)
  for k in ("l", "r"):
    draw.eye(cv, g, lk, p, k, prio)
    draw.brow(cv, g, lk, k)
  draw.mouth(cv, g, lk, prio)
  a_front = draw.front_hair(cv, g, lk, face_r2)
  fg = np.maximum(np.maximum(fg, a_face), a_front)
  draw.light(cv, g, lk, p, fg)
  image = np.clip(cv.img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8).transpose(1, 2, 3, 0)
  mask = a_face * (1.0 - a_front) >= 0.5
  lx, ly = _landmarks(g, lk)
  col, row = to_px(lx, ly)
  return image, mask, prio & mask, np.stack([col, row], -1).astype(_F)


def render(identity: int | str, params: dict[str, np.ndarray], size: int = 64
           ) -> dict[str, np.ndarray]:
  """Draws one identity under per-face shared parameters; same inputs give the same bits.

  Returns image (n, size, size, 3) uint8 RGB; mask (n, size, size, 1) uint8, 255 on visible skin
  of the face oval (no hair, ears, neck or background); priority (same shape) 255 on the eye and
  mouth regions; landmarks (n, NUM_LANDMARKS, 2) float32 (x, y) pixels, order LANDMARK_NAMES.
  """
  lk = _look(identity)
  p = _check(params, size)
  size = int(size)
  n = p["yaw"].shape[0]
  out = {"image": np.empty((n, size, size, 3), np.uint8),
         "mask": np.empty((n, size, size, 1), np.uint8),
         "priority": np.empty((n, size, size, 1), np.uint8),
         "landmarks": np.empty((n, NUM_LANDMARKS, 2), _F)}
  bg = draw.background(lk, size)
  chunk = max(1, _CHUNK * 64 * 64 // (size * size))
  for lo in range(0, n, chunk):
    part = {k: v[lo:lo + chunk] for k, v in p.items()}
    image, mask, prio, lms = _render_chunk(lk, part, size, bg)
    out["image"][lo:lo + chunk] = image
    out["mask"][lo:lo + chunk, ..., 0] = mask * np.uint8(255)
    out["priority"][lo:lo + chunk, ..., 0] = prio * np.uint8(255)
    out["landmarks"][lo:lo + chunk] = lms
  return out
