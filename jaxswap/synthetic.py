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

import dataclasses

import numpy as np

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
_F = np.float32


@dataclasses.dataclass(frozen=True)
class _Look:
  """What makes an identity itself (face-frame units); the shared parameters never change it."""
  skin: tuple
  hair: tuple
  brow: tuple
  iris: tuple
  lips: tuple
  background: tuple
  shirt: tuple
  face_w: float
  face_h: float
  jaw: float
  eye_x: float
  eye_y: float
  eye_w: float
  eye_h: float
  eye_tilt: float
  iris_r: float
  brow_y: float
  brow_w: float
  brow_t: float
  brow_arch: float
  nose_y: float
  nose_w: float
  nose_bridge: float
  mouth_y: float
  mouth_w: float
  lip_up: float
  lip_lo: float
  blush: float
  hair_style: str


_LOOKS = {
    "a": _Look(skin=(0.98, 0.82, 0.70), hair=(0.28, 0.16, 0.09), brow=(0.22, 0.13, 0.08),
               iris=(0.20, 0.45, 0.85), lips=(0.88, 0.38, 0.45), background=(0.56, 0.74, 0.88),
               shirt=(0.85, 0.25, 0.25), face_w=0.60, face_h=0.76, jaw=0.25, eye_x=0.25,
               eye_y=-0.06, eye_w=0.12, eye_h=0.075, eye_tilt=0.0, iris_r=0.062, brow_y=-0.23,
               brow_w=0.12, brow_t=0.016, brow_arch=0.03, nose_y=0.17, nose_w=0.05,
               nose_bridge=0.0, mouth_y=0.40, mouth_w=0.15, lip_up=0.022, lip_lo=0.032,
               blush=0.35, hair_style="fringe"),
    "b": _Look(skin=(0.70, 0.49, 0.34), hair=(0.90, 0.74, 0.36), brow=(0.45, 0.32, 0.16),
               iris=(0.30, 0.55, 0.22), lips=(0.62, 0.28, 0.26), background=(0.62, 0.52, 0.74),
               shirt=(0.20, 0.32, 0.50), face_w=0.54, face_h=0.80, jaw=0.42, eye_x=0.23,
               eye_y=-0.07, eye_w=0.10, eye_h=0.055, eye_tilt=0.025, iris_r=0.048, brow_y=-0.21,
               brow_w=0.13, brow_t=0.032, brow_arch=0.015, nose_y=0.21, nose_w=0.065,
               nose_bridge=0.28, mouth_y=0.46, mouth_w=0.18, lip_up=0.03, lip_lo=0.04,
               blush=0.0, hair_style="side"),
}


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


def _look(identity: int | str) -> _Look:
  if isinstance(identity, (int, np.integer)) and 0 <= int(identity) < len(IDENTITIES):
    return _LOOKS[IDENTITIES[int(identity)]]
  if isinstance(identity, str) and identity in _LOOKS:
    return _LOOKS[identity]
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


def _layout(p: dict[str, np.ndarray], lk: _Look) -> dict[str, np.ndarray]:
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


def _landmarks(g: dict[str, np.ndarray], lk: _Look) -> tuple[np.ndarray, np.ndarray]:
  xs = [g["lex"], g["rex"], g["leo"], g["lei"], g["rei"], g["reo"], g["nx"], g["mlx"], g["mrx"],
        g["mx"], g["mx"], g["lbx"], g["rbx"]]
  ys = [g["ley"], g["rey"], g["leoy"], g["leiy"], g["reiy"], g["reoy"], g["ny"], g["mly"],
        g["mry"], g["my"] - g["open_up"] - lk.lip_up * 0.7, g["my"] + g["open_lo"] + lk.lip_lo,
        g["lby"], g["rby"]]
  return np.stack(xs, 1), np.stack(ys, 1)


# --------------------------------------------------------------------------------------------
# Pixel fields. Every shape is a signed distance d (face units, < 0 inside) turned into coverage
# over one pixel; features only touch the window of rows/columns that can contain them.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Canvas:
  qx: np.ndarray        # (m, S, S) face-frame x of every pixel centre
  qy: np.ndarray
  inv_px: np.ndarray    # (m, 1, 1) pixels per face unit
  img: np.ndarray       # (3, m, S, S) float32 in [0, 1]: planar, so painting runs on long rows
  to_px: object         # face-frame (x, y) arrays (m,) -> pixel (col, row) arrays

  def window(self, x, y, r):
    """Slices covering a disc of radius r (face units) around (x, y) in every face of the chunk."""
    s = self.qx.shape[1]
    col, row = self.to_px(x, y)
    rad = np.max(r * self.inv_px[:, 0, 0]) + 2.0
    r0, r1 = int(np.floor(row.min() - rad)), int(np.ceil(row.max() + rad)) + 1
    c0, c1 = int(np.floor(col.min() - rad)), int(np.ceil(col.max() + rad)) + 1
    return (slice(None), slice(max(r0, 0), min(r1, s)), slice(max(c0, 0), min(c1, s)))

  def coords(self, win, x=None, y=None):
    """Pixel coordinates inside a window, relative to per-face points (m,) when given."""
    qx, qy = self.qx[win], self.qy[win]
    if x is not None:
      qx, qy = qx - x[:, None, None], qy - y[:, None, None]
    return qx, qy, self.inv_px

  def paint(self, win, alpha, colour, shade=None):
    """Composites a colour (3,) — optionally times a per-pixel shade — over the window."""
    for c, plane in zip(np.asarray(colour, _F), self.img):
      view = plane[win]
      delta = (c if shade is None else shade * c) - view
      delta *= alpha
      view += delta


def _cover(d, inv_px):
  """Coverage of a pixel by the region d < 0: a linear ramp 1/inv_px face units wide.

  With inv_px = pixels per face unit this is a one-pixel anti-aliased edge; a constant gives a
  soft edge (blush, shadows) whose width scales with the image.
  """
  return np.clip(0.5 - d * inv_px, 0.0, 1.0)


def _ellipse(x, y, a, b):
  """Approximate signed distance to an axis-aligned ellipse centred at the origin."""
  f = (x / a) ** 2 + (y / b) ** 2 - 1.0
  grad = 2.0 * np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2) + 1e-6
  return f / grad


def _tri(x):
  """Triangle wave in [0, 1] with period 1: cheap strands and fringe locks."""
  return np.abs(x - np.floor(x) - 0.5) * 2.0


def _span(x, xl, xc, xr):
  """Maps x to t in [-1, 1] across a feature whose left/centre/right projections may differ."""
  xl, xc, xr = (v[:, None, None] for v in (xl, xc, xr))
  half = np.where(x < xc, xc - xl, xr - xc)
  return (x - xc) / half, half


def _col(v):
  return v[:, None, None]


# --------------------------------------------------------------------------------------------
# Layers, back to front.
# --------------------------------------------------------------------------------------------


def _hair_shade(qx, qy, lk):
  slant = qx + 0.45 * qy if lk.hair_style == "side" else qx
  return (0.82 + 0.3 * _tri(slant * 8.0)).astype(_F)


def _long_hair(hx, qy, lk: _Look):
  """Straight-cut hair hanging from the widest point of the cap, flaring a little."""
  width = lk.face_w + 0.12 + 0.08 * np.clip(qy + 0.15, 0.0, 1.0)
  return np.maximum(np.maximum(np.abs(hx) - width, qy - 0.72), -0.15 - qy)


def _back_layers(cv: _Canvas, g, lk: _Look):
  """Back hair, neck, shirt and ears; returns their union coverage (what lighting shades)."""
  full = (slice(None),) * 3
  qx, qy, inv = cv.coords(full)
  hx = qx - _col(g["back_x"])
  if lk.hair_style == "fringe":
    d_hair = np.maximum(_ellipse(hx, qy + 0.2, lk.face_w + 0.08, 0.72), qy - 0.1)
  else:
    d_cap = _ellipse(hx, qy + 0.15, lk.face_w + 0.12, 0.8)
    d_hair = np.minimum(d_cap, _long_hair(hx, qy, lk))
  a_hair = _cover(d_hair, inv)
  cv.paint(full, a_hair, np.asarray(lk.hair) * 0.72, _hair_shade(qx, qy, lk))
  fx = np.abs(qx - _col(g["face_x"]))
  a_neck = _cover(np.maximum(fx - 0.36 * lk.face_w, 0.3 - qy), inv)
  cv.paint(full, a_neck, np.asarray(lk.skin) * 0.8)
  shoulder = 0.9 - 0.5 * np.clip(fx - 0.3, 0.0, 1.0)
  a_shirt = _cover(shoulder - qy, inv)
  cv.paint(full, a_shirt, lk.shirt)
  fg = np.maximum(np.maximum(a_hair, a_neck), a_shirt)
  if lk.hair_style == "fringe":  # short hair leaves the ears visible
    for s in (-1.0, 1.0):
      ex = g["face_x"] + s * (lk.face_w - 0.01) - 0.1 * g["sy"]
      ey = np.zeros_like(ex) + 0.02
      win = cv.window(ex, ey, 0.14)
      x, y, inv_w = cv.coords(win, ex, ey)
      a_ear = _cover(_ellipse(x, y, 0.075, 0.13), inv_w)
      cv.paint(win, a_ear, np.asarray(lk.skin) * 0.95)
      cv.paint(win, _cover(_ellipse(x - s * 0.01, y, 0.035, 0.08), inv_w) * 0.6,
               np.asarray(lk.skin) * 0.7)
      fg[win] = np.maximum(fg[win], a_ear)
  return fg


def _face(cv: _Canvas, g, lk: _Look):
  """The skin oval, narrowing into a jaw whose chin follows the yaw.

  Returns its coverage and its squared normalised radius (1 on the outline), which lets hair
  follow the face's edge.
  """
  full = (slice(None),) * 3
  qx, qy, inv = cv.coords(full)
  down = np.clip(qy / lk.face_h, 0.0, 1.0) ** 2
  fx = (qx - _col(g["face_x"]) - 0.25 * _col(g["sy"]) * down) / (1.0 - lk.jaw * down)
  a_face = _cover(_ellipse(fx, qy, lk.face_w, lk.face_h), inv)
  cv.paint(full, a_face, lk.skin)
  return a_face, (fx / lk.face_w) ** 2 + (qy / lk.face_h) ** 2


def _cheeks_nose(cv: _Canvas, g, lk: _Look):
  skin = np.asarray(lk.skin, _F)
  if lk.blush > 0:
    for k in ("l", "r"):
      cx, cy = g[k + "ex"], g[k + "ey"] + 0.2
      win = cv.window(cx, cy, 0.14)
      x, y, _ = cv.coords(win, cx, cy)
      cv.paint(win, _cover(_ellipse(x, y, 0.08, 0.05), 12.5) * lk.blush, (0.95, 0.45, 0.5))
  nx, ny = g["nx"], g["ny"]
  if lk.nose_bridge > 0:
    top = g["nby"]
    win = cv.window(nx, (ny + top) / 2, lk.nose_bridge / 2 + 0.1)
    x, y, _ = cv.coords(win)
    s = np.clip((y - _col(top)) / _col(ny - top), 0.0, 1.0)
    line = _col(g["nbx"]) + s * _col(nx - g["nbx"]) + 0.045
    d = np.maximum(np.abs(x - line) - 0.006, np.maximum(_col(top) - y, y - _col(ny) + 0.01))
    cv.paint(win, _cover(d, 40.0) * 0.6, skin * 0.72)
  win = cv.window(nx, ny, 0.16)
  x, y, inv = cv.coords(win, nx, ny)
  cv.paint(win, _cover(_ellipse(x - 0.01, y - 0.01, lk.nose_w * 1.2, 0.04), 25.0) * 0.55,
           skin * 0.75)
  cv.paint(win, _cover(_ellipse(x + 0.01, y - 0.012, lk.nose_w * 0.5, 0.02), 33.0) * 0.5,
           np.minimum(skin * 1.15, 1.0))
  for s in (-1.0, 1.0):
    off = s * lk.nose_w * 0.6 * (1.0 - 0.4 * s * _col(g["sy"]))
    cv.paint(win, _cover(_ellipse(x - off, y - 0.022, 0.017, 0.011), inv) * 0.9, skin * 0.4)


def _eye(cv: _Canvas, g, lk: _Look, p, k: str, prio: np.ndarray):
  """An almond between two lids (the upper one closes with eye_open), iris following the gaze."""
  if k == "l":
    xl, yl, xr, yr = g["leo"], g["leoy"], g["lei"], g["leiy"]
  else:
    xl, yl, xr, yr = g["rei"], g["reiy"], g["reo"], g["reoy"]
  xc, yc = g[k + "ex"], g[k + "ey"]
  win = cv.window(xc, yc, 1.6 * lk.eye_w + 0.04)
  qx, qy, inv = cv.coords(win)
  t, half = _span(qx, xl, xc, xr)
  y0 = _col(yc) + (np.where(t < 0, _col(yl), _col(yr)) - _col(yc)) * t * t
  h = np.clip(1.0 - t * t, 0.0, 1.0)
  e_up, e_lo = lk.eye_h * _col(g["cp"]), 0.5 * lk.eye_h * _col(g["cp"])
  lower = y0 + e_lo * h
  upper = lower - (e_up + e_lo) * _col(p["eye_open"]) * h
  edge = (np.abs(t) - 1.0) * half
  a_eye = _cover(np.maximum(np.maximum(upper - qy, qy - lower), edge), inv)
  cv.paint(win, a_eye, (0.97, 0.96, 0.94))
  r = lk.iris_r
  ix = _col(xc + p["gaze_x"] * 0.4 * (xr - xl) / 2)
  iy = _col(yc + (p["gaze_y"] * 0.3 - 0.25) * e_up[:, 0, 0])
  dist = np.sqrt((qx - ix) ** 2 + (qy - iy) ** 2)
  cv.paint(win, a_eye * _cover(dist - r, inv), lk.iris, 1.2 - 0.5 * np.minimum(dist / r, 1.0))
  cv.paint(win, a_eye * _cover(dist - 0.45 * r, inv), (0.05, 0.04, 0.05))
  glint = np.sqrt((qx - ix + 0.35 * r) ** 2 + (qy - iy + 0.35 * r) ** 2) - 0.22 * r
  cv.paint(win, a_eye * _cover(glint, inv) * 0.9, (1.0, 1.0, 1.0))
  lid_t = 0.008 + 0.006 * h
  cv.paint(win, _cover(np.maximum(np.abs(qy - upper) - lid_t, edge - 0.01), inv),
           (0.12, 0.07, 0.07))
  cv.paint(win, _cover(np.maximum(np.abs(qy - lower) - 0.003, edge), inv) * 0.35,
           (0.3, 0.15, 0.12))
  zone = _ellipse(qx - _col(xc), qy - _col(yc) + 0.2 * lk.eye_h, 1.35 * half, 1.6 * lk.eye_h)
  prio[win] |= zone < 0


def _brow(cv: _Canvas, g, lk: _Look, k: str):
  side = -1.0 if k == "l" else 1.0
  bx, by, bw = g[k + "bx"], g[k + "by"], g[k + "bw"]
  win = cv.window(bx, by, lk.brow_w * 1.2 + 0.06)
  x, y, inv = cv.coords(win, bx, by)
  t = x / _col(bw)
  yb = -lk.brow_arch * (1.0 - t * t) + 0.015 * side * t
  th = lk.brow_t * (1.0 - 0.3 * side * t - 0.3 * t * t)
  d = np.maximum(np.abs(y - yb) - th, (np.abs(t) - 1.0) * _col(bw))
  cv.paint(win, _cover(d, inv), lk.brow)


def _mouth(cv: _Canvas, g, lk: _Look, prio: np.ndarray):
  """Lips around an opening whose centre line bends through the (smile-raised) corners."""
  xc, yc = g["mx"], g["my"]
  win = cv.window(xc, yc, lk.mouth_w * 1.4 + 0.15)
  qx, qy, inv = cv.coords(win)
  t, half = _span(qx, g["mlx"], xc, g["mrx"])
  cl = _col(yc) + (np.where(t < 0, _col(g["mly"]), _col(g["mry"])) - _col(yc)) * t * t
  h = np.clip(1.0 - t * t, 0.0, 1.0)
  hs = np.sqrt(h)
  in_up = cl - _col(g["open_up"]) * h
  in_lo = cl + _col(g["open_lo"]) * h
  bow = 0.3 * lk.lip_up * np.clip(1.0 - 6.0 * np.abs(t), 0.0, 1.0)
  out_up = in_up - lk.lip_up * hs + bow
  out_lo = in_lo + lk.lip_lo * hs
  edge = (np.abs(t) - 1.0) * half
  lip_shade = np.where(qy > cl, 1.06, 0.9).astype(_F)
  cv.paint(win, _cover(np.maximum(np.maximum(out_up - qy, qy - out_lo), edge), inv), lk.lips,
           lip_shade)
  d_in = np.maximum(np.maximum(in_up - qy, qy - in_lo), edge)
  cv.paint(win, _cover(d_in, inv), (0.28, 0.05, 0.07))
  cv.paint(win, _cover(np.maximum(d_in, qy - in_up - 0.022 * h), inv), (0.96, 0.95, 0.9))
  cv.paint(win, _cover(np.maximum(d_in, in_lo - 0.025 * h - qy), inv) * 0.8, (0.8, 0.35, 0.4))
  mid = (_col(g["mly"]) + _col(g["mry"])) / 2
  top = _col(yc - g["open_up"]) - lk.lip_up - 0.03
  bottom = _col(yc + g["open_lo"]) + lk.lip_lo + 0.03
  centre = (np.minimum(top, mid - 0.03) + bottom) / 2
  zone = _ellipse(qx - _col(xc), qy - centre, 1.2 * half,
                  (bottom - np.minimum(top, mid - 0.03)) / 2)
  prio[win] |= zone < 0


def _front_hair(cv: _Canvas, g, lk: _Look, face_r2: np.ndarray):
  """Hair in front of the face: a fringe for 'a', a side part and long locks for 'b'."""
  full = (slice(None),) * 3
  qx, qy, inv = cv.coords(full)
  hx = qx - _col(g["back_x"])
  u = qx - _col(g["front_x"])
  fy = _col(g["front_y"])
  if lk.hair_style == "fringe":
    d_cap = _ellipse(hx, qy + 0.2, lk.face_w + 0.08, 0.72)
    edge = (-0.42 + fy + 0.06 * (1.0 - _tri(u * 7.0))
            + 1.2 * np.clip(np.abs(u) - 0.3, 0.0, 1.0) ** 2)
    d = np.maximum(d_cap, qy - edge)
  else:
    d_cap = _ellipse(hx, qy + 0.15, lk.face_w + 0.12, 0.8)
    v = u + 0.15
    edge = -0.52 + fy + np.where(v > 0, _F(0.45), _F(0.3)) * (v / (lk.face_w + 0.1)) ** 2
    d_top = np.maximum(d_cap, qy - edge)
    d_lock = np.maximum((0.72 - face_r2) * 0.3, qy - 0.4 - 0.06 * (1.0 - _tri(qx * 6.0)))
    d_lock = np.maximum(d_lock, _long_hair(hx, qy, lk))
    d = np.minimum(d_top, d_lock)
  a_hair = _cover(d, inv)
  cv.paint(full, a_hair, lk.hair, _hair_shade(qx, qy, lk))
  return a_hair


def _light(cv: _Canvas, g, lk: _Look, p, fg: np.ndarray):
  """Lambert shading of a head-sized ellipsoid lit from light_angle; background stays flat."""
  nx = (cv.qx - _col(g["face_x"])) / (lk.face_w + 0.15)
  ny = (cv.qy + 0.05) / (lk.face_h + 0.15)
  nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
  ang = p["light_angle"]
  lam = np.clip(nx * _col(0.7 * np.cos(ang)) + ny * _col(0.7 * np.sin(ang)) + 0.71 * nz, 0, 1)
  shade = 1.0 + fg * _col(p["light_strength"]) * (1.3 * lam - 1.0)
  cv.img *= shade


def _background(lk: _Look, size: int) -> np.ndarray:
  ramp = 1.08 - 0.16 * (np.arange(size, dtype=_F) + 0.5) / size
  return np.asarray(lk.background, _F)[:, None, None] * ramp[:, None] * np.ones(size, _F)


def _render_chunk(lk: _Look, p: dict[str, np.ndarray], size: int, bg: np.ndarray):
  """One vectorised pass: pixel grid in the face frame, layers back to front, then lighting."""
  m = p["yaw"].shape[0]
  c, s = _col(np.cos(p["roll"])), _col(np.sin(p["roll"]))
  sc = _col(p["scale"])
  u = (np.arange(size, dtype=_F) + 0.5) * (2.0 / size) - 1.0
  ox, oy = 2.0 * p["shift_x"], 2.0 * p["shift_y"] + _CENTRE_Y  # face origin in the crop
  dx = u[None, None, :] - _col(ox)
  dy = u[None, :, None] - _col(oy)
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
  cv = _Canvas(qx, qy, (zoom * (size / 2)).astype(_F), img, to_px)
  g = _layout(p, lk)
  prio = np.zeros((m, size, size), bool)
  fg = _back_layers(cv, g, lk)
  a_face, face_r2 = _face(cv, g, lk)
  _cheeks_nose(cv, g, lk)
  for k in ("l", "r"):
    _eye(cv, g, lk, p, k, prio)
    _brow(cv, g, lk, k)
  _mouth(cv, g, lk, prio)
  a_front = _front_hair(cv, g, lk, face_r2)
  fg = np.maximum(np.maximum(fg, a_face), a_front)
  _light(cv, g, lk, p, fg)
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
  bg = _background(lk, size)
  chunk = max(1, _CHUNK * 64 * 64 // (size * size))
  for lo in range(0, n, chunk):
    part = {k: v[lo:lo + chunk] for k, v in p.items()}
    image, mask, prio, lms = _render_chunk(lk, part, size, bg)
    out["image"][lo:lo + chunk] = image
    out["mask"][lo:lo + chunk, ..., 0] = mask * np.uint8(255)
    out["priority"][lo:lo + chunk, ..., 0] = prio * np.uint8(255)
    out["landmarks"][lo:lo + chunk] = lms
  return out
