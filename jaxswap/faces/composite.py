"""Putting a swapped face back into its frame: colour match, mask, inverse warp, blend, watermark.

Pure numpy/OpenCV functions so each can be tested against a closed-form case. Conventions:
faces and references are float32 RGB in [0, 1] (what the model emits), masks float32 in [0, 1]
or bool, frames RGB uint8; matrices are 2x3 frame -> face maps (`jaxswap.faces.geometry`). The one
guarantee that matters downstream: a frame pixel whose mask weight is 0 is returned bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from jaxswap.errors import JaxswapError
from jaxswap.faces import geometry, warp

COLOR_MODES = ("none", "avg", "rct", "hist")
BLEND_MODES = ("alpha", "seamless")
MASKS = ("brows", "components", "extended", "learned", "learned*components")
MASK_BLUR_PX = 16  # the blur kernel's side in mask pixels at least (mask_size)
MASK_MIN_PX = 128

# ----------------------------------------------------------------------------------------------
# Colour transfer (in the aligned crop, statistics over the mask only)
# ----------------------------------------------------------------------------------------------


def _mask_u8(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
  """uint8 0/1 mask for OpenCV's masked statistics; None (every pixel) where it is empty."""
  m = np.asarray(mask).reshape(shape)
  m = m.view(np.uint8) if m.dtype == bool else (m != 0).view(np.uint8)
  return m if m.any() else None


def masked_moments(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std over the mask, or the whole image if it is empty."""
  mean, std = cv2.meanStdDev(image, mask=_mask_u8(mask, image.shape[:2]))
  return mean.ravel(), std.ravel()


def color_avg(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Shifts each RGB channel so its mean over the mask is the reference's."""
  m = _mask_u8(mask, src.shape[:2])
  shift = np.subtract(cv2.mean(ref, mask=m)[:3], cv2.mean(src, mask=m)[:3], dtype=np.float32)
  return np.clip(src + shift, 0.0, 1.0, dtype=np.float32)


def match_moments(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Per channel, an affine map that makes src's masked mean and std the ref's."""
  s_mean, s_std = masked_moments(src, mask)
  r_mean, r_std = masked_moments(ref, mask)
  gain = r_std / np.maximum(s_std, 1e-6)
  affine = np.concatenate([np.diag(gain), (r_mean - s_mean * gain)[:, None]], 1)
  return cv2.transform(np.ascontiguousarray(src, np.float32), affine)  # one pass, float32


def color_rct(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Reinhard et al. 2001: moment matching in CIE L*a*b*, where channels are decorrelated."""
  src_lab = cv2.cvtColor(np.ascontiguousarray(src, np.float32), cv2.COLOR_RGB2LAB)
  ref_lab = cv2.cvtColor(np.ascontiguousarray(ref, np.float32), cv2.COLOR_RGB2LAB)
  out = cv2.cvtColor(match_moments(src_lab, ref_lab, mask), cv2.COLOR_LAB2RGB)
  return np.clip(out, 0.0, 1.0, out=out)


def match_histogram(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """One channel: src values mapped through src's masked CDF onto ref's masked quantiles."""
  m = np.asarray(mask, bool).reshape(src.shape)
  s_vals, s_counts = np.unique(src[m] if m.any() else src, return_counts=True)
  r_vals, r_counts = np.unique(ref[m] if m.any() else ref, return_counts=True)
  s_q = np.cumsum(s_counts) / s_counts.sum()
  r_q = np.cumsum(r_counts) / r_counts.sum()
  mapped = np.interp(s_q, r_q, r_vals)
  return np.interp(src, s_vals, mapped).astype(src.dtype)


def color_hist(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Per-channel histogram matching over the mask."""
  return np.stack([match_histogram(src[..., c], ref[..., c], mask) for c in range(3)], -1)


def color_transfer(mode: str, src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
  if mode == "none":
    return src
  return {"avg": color_avg, "rct": color_rct, "hist": color_hist}[mode](src, ref, mask)


def sharpen(face: np.ndarray, amount: float, radius: float = 1.0) -> np.ndarray:
  """Unsharp mask of a face in [0, 1]: face + amount/100 * (face - Gaussian(face, radius)).

  What faceswap's "sharpen" and DeepFaceLab's merger `blursharpen_amount` do to the model's output
  before it is scaled up into the frame: a 128 px face drawn over a 250 px one loses the detail
  its pixels do not hold, and a boost of the finest scale it does hold brings back the contrast
  of edges. `radius` is the Gaussian's sigma in pixels of the model's output.
  """
  if amount <= 0:
    return face
  face = np.asarray(face, np.float32)
  blurred = cv2.GaussianBlur(face, (0, 0), radius, borderType=cv2.BORDER_REFLECT)
  return np.clip(cv2.addWeighted(face, 1.0 + amount / 100.0, blurred, -amount / 100.0, 0.0),
                 0.0, 1.0)


# Band edges of `frame_detail`, as Gaussian sigmas in crop pixels (a Gaussian of sigma s halves an
# image's amplitude at 0.187 / s cycles per pixel). 0.375: the crop's own Nyquist (0.5); above it
# a model's output scaled up holds nothing. 0.6 (0.31 cycles/px): where a half-resolution
# ("-d") decoder's output has long since faded too: `quick`'s B->B reconstructions of its training
# faces keep 0.59 of the crop's amplitude at 0.175 cycles/px and 0.14-0.21 at 0.25-0.4 (pair 3).
DETAIL_SIGMA = 0.375
SKIN_DETAIL_SIGMA = 0.6
_MIN_SIGMA = 0.5  # frame pixels: a narrower Gaussian leaves (almost) no band to take


def skin_band_applies(frame_px_per_face_px: float) -> bool:
  """Whether `frame_detail` has a skin band at this enlargement (else its `skin` is unused)."""
  return SKIN_DETAIL_SIGMA * frame_px_per_face_px >= _MIN_SIGMA


def frame_detail(frame_roi: np.ndarray, frame_px_per_face_px: float,
                 skin: np.ndarray | None = None) -> np.ndarray | None:
  """The frame's own detail a face model's output scaled up cannot hold, float32, or None.

  Everywhere, the band finer than the crop's pixels (frame - Gaussian(frame), sigma DETAIL_SIGMA
  crop pixels, in frame pixels): skin texture, lashes, hair strands. Where `skin` (float32
  weights over the ROI, see `skin_weight`) is given, that much of the band down to
  SKIN_DETAIL_SIGMA is added as well: pores, stubble and fine creases that a half-resolution
  decoder draws as smooth skin. Not over the eyes, brows and mouth, where the source's own edges
  would fight the swapped face's. None where the face is not enlarged enough for either band
  (its sigma under half a frame pixel).
  """
  sigma = DETAIL_SIGMA * frame_px_per_face_px
  if not skin_band_applies(frame_px_per_face_px) or (sigma < _MIN_SIGMA and skin is None):
    return None
  roi = np.float32(frame_roi)
  blurred = (cv2.GaussianBlur(roi, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
             if sigma >= _MIN_SIGMA else roi)
  fine = cv2.subtract(roi, blurred)
  if skin is not None:
    band = cv2.subtract(blurred, cv2.GaussianBlur(roi, (0, 0),
                                                  SKIN_DETAIL_SIGMA * frame_px_per_face_px,
                                                  borderType=cv2.BORDER_REFLECT))
    fine = cv2.add(fine, cv2.multiply(band, cv2.merge([skin] * roi.shape[2])))
  return fine


SKIN_PX = 64  # `skin_weight` is drawn at this side (its edge is a blur over 3 % of it) and enlarged


def skin_weight(points: np.ndarray, side: int) -> np.ndarray:
  """float32 (side, side) weights over an aligned crop of that side: 0 on the eyes, brows and
  mouth (`feature_hulls` of the crop-pixel landmarks `points`), 1 elsewhere, with an edge blurred
  over 3 % of the crop's side (a thin brow's middle keeps ~0.1).

  A smooth map: drawn at SKIN_PX and enlarged (within 0.06 of drawing it at a 200 px crop's side,
  at under half the cost).
  """
  small = min(side, SKIN_PX)
  k = small / side
  features = np.zeros((small, small), bool)
  for hull in geometry.feature_hulls(points):
    features |= geometry.fill_convex((hull + 0.5) * k - 0.5, small, small)  # pixel centres
  soft = cv2.GaussianBlur(features.astype(np.float32), (0, 0), max(0.03 * small, 0.5))
  skin = cv2.subtract(np.ones_like(soft), soft)
  return skin if small == side else cv2.resize(skin, (side, side), interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def gaussian_sigma(ksize: int) -> float:
  """The sigma OpenCV derives from a kernel side when it is given none (`getGaussianKernel`)."""
  return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def erode_blur(mask: np.ndarray, erode: float, blur: float, scale: float = 1.0) -> np.ndarray:
  """float32 mask shrunk by `erode` pixels (negative grows it), then Gaussian-blurred.

  `blur` is the kernel's side in pixels (made odd); the kernel is finite, so weights stay exactly
  0 further than blur // 2 pixels outside the (eroded) mask: the frame there is untouched.
  `erode` and `blur` are in pixels of a mask `1 / scale` times as large as `mask`: a mask drawn
  at a lower resolution gets the same erosion (to its pixel) and the same Gaussian, scaled.
  """
  out = np.asarray(mask, np.float32)
  k = int(round(abs(erode) * scale))
  if k > 0:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    out = (cv2.erode if erode > 0 else cv2.dilate)(out, kernel, borderType=cv2.BORDER_CONSTANT,
                                                   borderValue=0)
  b = int(round(blur))
  if b >= 2:
    b += 1 - b % 2
    if scale == 1.0:
      return cv2.GaussianBlur(out, (b, b), 0, borderType=cv2.BORDER_CONSTANT)
    bs = max(3, int(round(b * scale)))
    bs += 1 - bs % 2
    sigma = gaussian_sigma(b) * scale
    out = cv2.GaussianBlur(out, (bs, bs), sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
  return out


def mask_size(size: int, size_s: int, blur: float) -> int:
  """Side of the drawn mask for a face `size_s` frame pixels wide and a `blur` % edge.

  The edge is a Gaussian: it needs only so many pixels across (MASK_BLUR_PX), not the face's
  frame resolution. Never below the model's crop (`size`) or MASK_MIN_PX; a hard edge (blur 0)
  keeps the face's resolution.
  """
  if blur <= 0:
    return size_s
  return int(min(size_s, max(size, MASK_MIN_PX, int(np.ceil(MASK_BLUR_PX * 100.0 / blur)))))


# ----------------------------------------------------------------------------------------------
# Blending
# ----------------------------------------------------------------------------------------------


def alpha_blend(frame_roi: np.ndarray, face_roi_rgb: np.ndarray, alpha: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
  """frame + alpha * (face - frame), rounded; pixels with alpha == 0 keep their exact bits.

  face_roi_rgb is float in [0, 255]; alpha (H, W) float in [0, 1]. OpenCV's float -> uint8
  conversion rounds half to even and saturates, as np.clip(np.rint(x), 0, 255) does. `out`
  (may be frame_roi itself, a view into the frame) receives the result in place.
  """
  frame_f = np.float32(frame_roi)
  diff = cv2.subtract(np.asarray(face_roi_rgb, np.float32), frame_f)
  a = np.ascontiguousarray(alpha, np.float32)
  cv2.multiply(diff, cv2.merge((a, a, a)), dst=diff)
  mixed = cv2.add(frame_f, diff, dtype=cv2.CV_8U)
  out = frame_roi.copy() if out is None else out
  # alpha 0 (or NaN): the frame's bits. OpenCV writes into a strided view in place.
  written = cv2.copyTo(mixed, cv2.compare(a, 0.0, cv2.CMP_GT), out)
  if written is not out:  # it reallocated (never for a matching uint8 view): copy back
    out[...] = written
  return out


def seamless_blend(frame: np.ndarray, roi: tuple[int, int, int, int], face_roi_rgb: np.ndarray,
                   alpha: np.ndarray) -> np.ndarray:
  """cv2.seamlessClone (Poisson) of the face into the ROI, then weighted by alpha.

  Returns the new ROI. Falls back to alpha blending where OpenCV refuses (a mask touching the
  frame's edge). The clone reads and writes only the mask's bounding box in the destination, so
  it is given the ROI and a 1 px margin, not a copy of the whole frame.
  """
  x0, y0, x1, y1 = roi
  frame_roi = frame[y0:y1, x0:x1]
  binary = cv2.compare(np.ascontiguousarray(alpha, np.float32), 0.5, cv2.CMP_GT)
  bx, by, bw, bh = cv2.boundingRect(binary)
  h, w = frame.shape[:2]
  if bw == 0 or bh == 0:
    return alpha_blend(frame_roi, face_roi_rgb, alpha)
  if x0 + bx < 1 or y0 + by < 1 or x0 + bx + bw > w - 1 or y0 + by + bh > h - 1:
    return alpha_blend(frame_roi, face_roi_rgb, alpha)
  src = cv2.add(np.asarray(face_roi_rgb, np.float32), 0.0, dtype=cv2.CV_8U)  # rint, saturate
  wx0, wy0 = max(x0 - 1, 0), max(y0 - 1, 0)  # the mask's box stays >= 1 px inside the window
  window = np.ascontiguousarray(frame[wy0:min(y1 + 1, h), wx0:min(x1 + 1, w)])
  centre = (int(x0 + bx + bw // 2 - wx0), int(y0 + by + bh // 2 - wy0))
  try:
    cloned = cv2.seamlessClone(src, window, binary, centre, cv2.NORMAL_CLONE)
  except cv2.error:
    return alpha_blend(frame_roi, face_roi_rgb, alpha)
  cloned = cloned[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
  return alpha_blend(frame_roi, np.float32(cloned), alpha)


def watermark(frame: np.ndarray, text: str = "SYNTHETIC (jaxswap)") -> np.ndarray:
  """A visible label in the bottom-left corner: white text on a half-transparent dark box."""
  h, w = frame.shape[:2]
  scale = max(0.3, h / 720.0 * 0.8)
  thick = max(1, int(round(scale * 2)))
  (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
  m = max(2, int(round(6 * scale)))
  x0, y1 = m, h - m
  y0, x1 = max(0, y1 - th - base - 2 * m), min(w, x0 + tw + 2 * m)
  out = frame.copy()
  out[y0:y1, x0:x1] = (out[y0:y1, x0:x1].astype(np.uint16) * 2 // 5).astype(np.uint8)
  cv2.putText(out, text, (x0 + m, y1 - m - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
              (255, 255, 255), thick, cv2.LINE_AA)
  return out


# ----------------------------------------------------------------------------------------------
# One face, start to end
# ----------------------------------------------------------------------------------------------


def face_mask(kind: str, landmarks: np.ndarray | None, learned: np.ndarray | None,
              matrix_s: np.ndarray, size_s: int) -> np.ndarray:
  """float32 (S, S) mask in the aligned crop of side S (landmarks in frame pixels)."""
  mask = None
  if kind in geometry.HULL_TYPES or kind == "learned*components":
    if landmarks is None:
      raise JaxswapError(f"--mask {kind} needs landmarks, which this face has none of; "
                         "use --mask learned")
    pts = geometry.transform_points(matrix_s, landmarks)
    hull = geometry.mask_hull(pts, kind if kind in geometry.HULL_TYPES else "components")
    mask = geometry.fill_convex(hull, size_s, size_s).astype(np.float32)
  if kind.startswith("learned"):
    if learned is None:
      raise JaxswapError(f"--mask {kind}: this run's model has no learned mask "
                         "(trained without --config.model.learn_mask=True)")
    grown = cv2.resize(np.asarray(learned, np.float32), (size_s, size_s),
                       interpolation=cv2.INTER_LINEAR)
    mask = grown if mask is None else cv2.multiply(mask, grown)
  return np.ones((size_s, size_s), np.float32) if mask is None else mask


class FaceWeights(NamedTuple):
  """Where and how much of a swapped face goes into its frame (`frame_alpha`)."""
  roi: tuple[int, int, int, int]  # x0, y0, x1, y1 in the frame
  alpha: np.ndarray  # float32 (H, W) over the ROI: the blend weights
  small: np.ndarray  # bool (size, size): the crop's mask, where colour statistics are taken
  skin: np.ndarray | None  # float32 (H, W) over the ROI (`skin_weight`), where asked for


def frame_alpha(matrix: np.ndarray, landmarks: np.ndarray | None, learned: np.ndarray | None,
                frame_size: tuple[int, int], *, size: int, mask: str = "components",
                erode: float = 2.0, blur: float = 8.0, skin: bool = False) -> FaceWeights | None:
  """A face's blend weights in the frame, or None where none of the mask falls in it.

  The percentages are of the face's side in frame pixels (size_s); the mask is drawn at
  mask_size <= size_s (its edge is a blur) and warped to the frame with linear interpolation,
  over just the frame box of its support. With `skin` (and landmarks), `skin_weight` is drawn in
  the same crop and warped to the frame as the mask is.
  """
  w, h = frame_size
  size_s = int(np.clip(round(size / geometry.matrix_scale(matrix)), size, 1024))
  size_m = mask_size(size, size_s, blur)
  m_m = warp.rescale_matrix(matrix, size, size_m)
  alpha_m = face_mask(mask, landmarks, learned, m_m, size_m)
  alpha_m = erode_blur(alpha_m, erode * size_s / 100.0, blur * size_s / 100.0, size_m / size_s)
  support = cv2.boundingRect(cv2.compare(alpha_m, 0.0, cv2.CMP_GT))
  roi = warp.face_roi(m_m, size_m, w, h, rect=support) if support[2] > 0 else None
  if roi is None:
    return None
  small = cv2.resize(alpha_m, (size, size), interpolation=cv2.INTER_AREA) > 0.5
  skin_m = (skin_weight(geometry.transform_points(m_m, landmarks), size_m)
            if skin and landmarks is not None else None)
  # One channel at a time: OpenCV's warp of a 2-channel float image is 5x a 1-channel one's.
  return FaceWeights(roi, warp.warp_to_frame(alpha_m, m_m, roi), small,
                     None if skin_m is None else warp.warp_to_frame(skin_m, m_m, roi))


def paste_face(frame: np.ndarray, matrix: np.ndarray, landmarks: np.ndarray | None,
               crop: np.ndarray, rgb: np.ndarray, learned: np.ndarray | None, *, size: int,
               mask: str = "components", erode: float = 2.0, blur: float = 8.0,
               color: str = "rct", blend: str = "alpha", detail: float = 0.0) -> None:
  """Draws one swapped face (`rgb`, the model's output for `crop`) into `frame` in place.

  `erode`/`blur` are percentages of the face's side in the frame (`frame_alpha`). `detail` (%)
  adds that much of the frame's own detail the model's output cannot hold (`frame_detail`: finer
  than the crop's pixels everywhere, finer than a half-resolution decoder's on the skin) to the
  face before it is blended: the texture a model's small output scaled up cannot have.
  """
  scale = 1.0 / geometry.matrix_scale(matrix)  # frame pixels per crop pixel
  weights = frame_alpha(matrix, landmarks, learned, (frame.shape[1], frame.shape[0]), size=size,
                        mask=mask, erode=erode, blur=blur,
                        skin=detail > 0 and skin_band_applies(scale))
  if weights is None:
    return
  roi, alpha, small, skin = weights
  out = color_transfer(color, rgb, crop.astype(np.float32) / 255.0, small)
  face = warp.warp_to_frame(np.multiply(out, 255.0, dtype=np.float32), matrix, roi,
                            cv2.INTER_CUBIC, cv2.BORDER_REPLICATE)
  x0, y0, x1, y1 = roi
  if detail > 0:
    fine = frame_detail(frame[y0:y1, x0:x1], scale, skin)
    if fine is not None:
      face = cv2.scaleAdd(fine, detail / 100.0, face)
  if blend == "seamless":
    frame[y0:y1, x0:x1] = seamless_blend(frame, roi, face, alpha)
  else:
    alpha_blend(frame[y0:y1, x0:x1], face, alpha, out=frame[y0:y1, x0:x1])
