"""Drawing the synthetic identities: what each looks like, and the layers that paint it.

Split from jaxswap.synthetic (the parameters, geometry and the public `render`) to keep each file
readable. Used only by jaxswap.synthetic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

F32 = _F = np.float32  # every field is float32: half the memory traffic of float64


@dataclasses.dataclass(frozen=True)
class Look:
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


LOOKS = {
    "a": Look(skin=(0.98, 0.82, 0.70), hair=(0.28, 0.16, 0.09), brow=(0.22, 0.13, 0.08),
               iris=(0.20, 0.45, 0.85), lips=(0.88, 0.38, 0.45), background=(0.56, 0.74, 0.88),
               shirt=(0.85, 0.25, 0.25), face_w=0.60, face_h=0.76, jaw=0.25, eye_x=0.25,
               eye_y=-0.06, eye_w=0.12, eye_h=0.075, eye_tilt=0.0, iris_r=0.062, brow_y=-0.23,
               brow_w=0.12, brow_t=0.016, brow_arch=0.03, nose_y=0.17, nose_w=0.05,
               nose_bridge=0.0, mouth_y=0.40, mouth_w=0.15, lip_up=0.022, lip_lo=0.032,
               blush=0.35, hair_style="fringe"),
    "b": Look(skin=(0.70, 0.49, 0.34), hair=(0.90, 0.74, 0.36), brow=(0.45, 0.32, 0.16),
               iris=(0.30, 0.55, 0.22), lips=(0.62, 0.28, 0.26), background=(0.62, 0.52, 0.74),
               shirt=(0.20, 0.32, 0.50), face_w=0.54, face_h=0.80, jaw=0.42, eye_x=0.23,
               eye_y=-0.07, eye_w=0.10, eye_h=0.055, eye_tilt=0.025, iris_r=0.048, brow_y=-0.21,
               brow_w=0.13, brow_t=0.032, brow_arch=0.015, nose_y=0.21, nose_w=0.065,
               nose_bridge=0.28, mouth_y=0.46, mouth_w=0.18, lip_up=0.03, lip_lo=0.04,
               blush=0.0, hair_style="side"),
}


# --------------------------------------------------------------------------------------------
# Pixel fields. Every shape is a signed distance d (face units, < 0 inside) turned into coverage
# over one pixel; features only touch the window of rows/columns that can contain them.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Canvas:
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


def col(v):
  return v[:, None, None]


# --------------------------------------------------------------------------------------------
# Layers, back to front.
# --------------------------------------------------------------------------------------------


def _hair_shade(qx, qy, lk):
  slant = qx + 0.45 * qy if lk.hair_style == "side" else qx
  return (0.82 + 0.3 * _tri(slant * 8.0)).astype(_F)


def _long_hair(hx, qy, lk: Look):
  """Straight-cut hair hanging from the widest point of the cap, flaring a little."""
  width = lk.face_w + 0.12 + 0.08 * np.clip(qy + 0.15, 0.0, 1.0)
  return np.maximum(np.maximum(np.abs(hx) - width, qy - 0.72), -0.15 - qy)


def back_layers(cv: Canvas, g, lk: Look):
  """Back hair, neck, shirt and ears; returns their union coverage (what lighting shades)."""
  full = (slice(None),) * 3
  qx, qy, inv = cv.coords(full)
  hx = qx - col(g["back_x"])
  if lk.hair_style == "fringe":
    d_hair = np.maximum(_ellipse(hx, qy + 0.2, lk.face_w + 0.08, 0.72), qy - 0.1)
  else:
    d_cap = _ellipse(hx, qy + 0.15, lk.face_w + 0.12, 0.8)
    d_hair = np.minimum(d_cap, _long_hair(hx, qy, lk))
  a_hair = _cover(d_hair, inv)
  cv.paint(full, a_hair, np.asarray(lk.hair) * 0.72, _hair_shade(qx, qy, lk))
  fx = np.abs(qx - col(g["face_x"]))
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


def face(cv: Canvas, g, lk: Look):
  """The skin oval, narrowing into a jaw whose chin follows the yaw.

  Returns its coverage and its squared normalised radius (1 on the outline), which lets hair
  follow the face's edge.
  """
  full = (slice(None),) * 3
  qx, qy, inv = cv.coords(full)
  down = np.clip(qy / lk.face_h, 0.0, 1.0) ** 2
  fx = (qx - col(g["face_x"]) - 0.25 * col(g["sy"]) * down) / (1.0 - lk.jaw * down)
  a_face = _cover(_ellipse(fx, qy, lk.face_w, lk.face_h), inv)
  cv.paint(full, a_face, lk.skin)
  return a_face, (fx / lk.face_w) ** 2 + (qy / lk.face_h) ** 2


def cheeks_nose(cv: Canvas, g, lk: Look):
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
    s = np.clip((y - col(top)) / col(ny - top), 0.0, 1.0)
    line = col(g["nbx"]) + s * col(nx - g["nbx"]) + 0.045
    d = np.maximum(np.abs(x - line) - 0.006, np.maximum(col(top) - y, y - col(ny) + 0.01))
    cv.paint(win, _cover(d, 40.0) * 0.6, skin * 0.72)
  win = cv.window(nx, ny, 0.16)
  x, y, inv = cv.coords(win, nx, ny)
  cv.paint(win, _cover(_ellipse(x - 0.01, y - 0.01, lk.nose_w * 1.2, 0.04), 25.0) * 0.55,
           skin * 0.75)
  cv.paint(win, _cover(_ellipse(x + 0.01, y - 0.012, lk.nose_w * 0.5, 0.02), 33.0) * 0.5,
           np.minimum(skin * 1.15, 1.0))
  for s in (-1.0, 1.0):
    off = s * lk.nose_w * 0.6 * (1.0 - 0.4 * s * col(g["sy"]))
    cv.paint(win, _cover(_ellipse(x - off, y - 0.022, 0.017, 0.011), inv) * 0.9, skin * 0.4)


def eye(cv: Canvas, g, lk: Look, p, k: str, prio: np.ndarray):
  """An almond between two lids (the upper one closes with eye_open), iris following the gaze."""
  if k == "l":
    xl, yl, xr, yr = g["leo"], g["leoy"], g["lei"], g["leiy"]
  else:
    xl, yl, xr, yr = g["rei"], g["reiy"], g["reo"], g["reoy"]
  xc, yc = g[k + "ex"], g[k + "ey"]
  win = cv.window(xc, yc, 1.6 * lk.eye_w + 0.04)
  qx, qy, inv = cv.coords(win)
  t, half = _span(qx, xl, xc, xr)
  y0 = col(yc) + (np.where(t < 0, col(yl), col(yr)) - col(yc)) * t * t
  h = np.clip(1.0 - t * t, 0.0, 1.0)
  e_up, e_lo = lk.eye_h * col(g["cp"]), 0.5 * lk.eye_h * col(g["cp"])
  lower = y0 + e_lo * h
  upper = lower - (e_up + e_lo) * col(p["eye_open"]) * h
  edge = (np.abs(t) - 1.0) * half
  a_eye = _cover(np.maximum(np.maximum(upper - qy, qy - lower), edge), inv)
  cv.paint(win, a_eye, (0.97, 0.96, 0.94))
  r = lk.iris_r
  ix = col(xc + p["gaze_x"] * 0.4 * (xr - xl) / 2)
  iy = col(yc + (p["gaze_y"] * 0.3 - 0.25) * e_up[:, 0, 0])
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
  zone = _ellipse(qx - col(xc), qy - col(yc) + 0.2 * lk.eye_h, 1.35 * half, 1.6 * lk.eye_h)
  prio[win] |= zone < 0


def brow(cv: Canvas, g, lk: Look, k: str):
  side = -1.0 if k == "l" else 1.0
  bx, by, bw = g[k + "bx"], g[k + "by"], g[k + "bw"]
  win = cv.window(bx, by, lk.brow_w * 1.2 + 0.06)
  x, y, inv = cv.coords(win, bx, by)
  t = x / col(bw)
  yb = -lk.brow_arch * (1.0 - t * t) + 0.015 * side * t
  th = lk.brow_t * (1.0 - 0.3 * side * t - 0.3 * t * t)
  d = np.maximum(np.abs(y - yb) - th, (np.abs(t) - 1.0) * col(bw))
  cv.paint(win, _cover(d, inv), lk.brow)


def mouth(cv: Canvas, g, lk: Look, prio: np.ndarray):
  """Lips around an opening whose centre line bends through the (smile-raised) corners."""
  xc, yc = g["mx"], g["my"]
  win = cv.window(xc, yc, lk.mouth_w * 1.4 + 0.15)
  qx, qy, inv = cv.coords(win)
  t, half = _span(qx, g["mlx"], xc, g["mrx"])
  cl = col(yc) + (np.where(t < 0, col(g["mly"]), col(g["mry"])) - col(yc)) * t * t
  h = np.clip(1.0 - t * t, 0.0, 1.0)
  hs = np.sqrt(h)
  in_up = cl - col(g["open_up"]) * h
  in_lo = cl + col(g["open_lo"]) * h
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
  mid = (col(g["mly"]) + col(g["mry"])) / 2
  top = col(yc - g["open_up"]) - lk.lip_up - 0.03
  bottom = col(yc + g["open_lo"]) + lk.lip_lo + 0.03
  centre = (np.minimum(top, mid - 0.03) + bottom) / 2
  zone = _ellipse(qx - col(xc), qy - centre, 1.2 * half,
                  (bottom - np.minimum(top, mid - 0.03)) / 2)
  prio[win] |= zone < 0


def front_hair(cv: Canvas, g, lk: Look, face_r2: np.ndarray):
  """Hair in front of the face: a fringe for 'a', a side part and long locks for 'b'."""
  full = (slice(None),) * 3
  qx, qy, inv = cv.coords(full)
  hx = qx - col(g["back_x"])
  u = qx - col(g["front_x"])
  fy = col(g["front_y"])
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


def light(cv: Canvas, g, lk: Look, p, fg: np.ndarray):
  """Lambert shading of a head-sized ellipsoid lit from light_angle; background stays flat."""
  nx = (cv.qx - col(g["face_x"])) / (lk.face_w + 0.15)
  ny = (cv.qy + 0.05) / (lk.face_h + 0.15)
  nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
  ang = p["light_angle"]
  lam = np.clip(nx * col(0.7 * np.cos(ang)) + ny * col(0.7 * np.sin(ang)) + 0.71 * nz, 0, 1)
  shade = 1.0 + fg * col(p["light_strength"]) * (1.3 * lam - 1.0)
  cv.img *= shade


def background(lk: Look, size: int) -> np.ndarray:
  ramp = 1.08 - 0.16 * (np.arange(size, dtype=_F) + 0.5) / size
  return np.asarray(lk.background, _F)[:, None, None] * ramp[:, None] * np.ones(size, _F)
