"""paste_face against the full-resolution reference it replaces: same weights, same colours.

The blend draws its mask at `mask_size` (not the face's frame size), over the mask's support only,
with OpenCV's fused arithmetic; these tests pin that to the straightforward version (kept here as
the reference): frame pixels of weight 0 keep their bits, the weight profile and the colour
transfer match within stated tolerances, and the alpha and seamless blends are bit for bit.
"""

import cv2
import numpy as np
import pytest

from jaxswap.faces import composite as blend
from jaxswap.faces import geometry as g
from jaxswap.faces import warp

skimage_data = pytest.importorskip("skimage.data")
SIZE = 64


def fake_mesh(size: int) -> np.ndarray:
  """478 aligned-crop points whose face oval is an ellipse and whose brows sit at 30 %."""
  pts = np.full((g.NUM_LANDMARKS, 2), size / 2.0)
  for k, idx in enumerate(g.FACE_OVAL):
    t = -np.pi / 2 + 2 * np.pi * k / len(g.FACE_OVAL)
    pts[idx] = (size / 2 + 0.33 * size * np.cos(t), 0.53 * size + 0.4 * size * np.sin(t))
  for idx in g.RIGHT_BROW + g.LEFT_BROW:
    pts[idx, 1] = 0.3 * size
  return pts


def scene(angle: float, face_px: float, centre=(256.0, 230.0)):
  """frame -> 64 px crop matrix of a face `face_px` frame pixels wide, and its landmarks."""
  m = cv2.getRotationMatrix2D(centre, angle, SIZE / face_px)
  m[:, 2] += np.array([SIZE / 2, SIZE / 2]) - centre
  return m, g.transform_points(g.invert_affine(m), fake_mesh(SIZE))


def reference_alpha(matrix, landmarks, w, h, erode=2.0, blur=8.0):
  """The full-resolution weights: mask at the face's frame size, ROI of the whole crop."""
  size_s = int(np.clip(round(SIZE / g.matrix_scale(matrix)), SIZE, 1024))
  m_s = warp.rescale_matrix(matrix, SIZE, size_s)
  alpha_s = blend.face_mask("components", landmarks, None, m_s, size_s)
  alpha_s = blend.erode_blur(alpha_s, erode * size_s / 100.0, blur * size_s / 100.0)
  roi = warp.face_roi(m_s, size_s, w, h)
  return on_canvas(warp.warp_to_frame(alpha_s, m_s, roi), roi, w, h)


def on_canvas(alpha, roi, w, h):
  canvas = np.zeros((h, w), np.float32)
  x0, y0, x1, y1 = roi
  canvas[y0:y1, x0:x1] = alpha
  return canvas


def reference_alpha_blend(frame_roi, face, alpha):
  a = alpha[..., None]
  mixed = frame_roi.astype(np.float32) + a * (face - frame_roi.astype(np.float32))
  return np.where(a > 0, np.clip(np.rint(mixed), 0, 255).astype(np.uint8), frame_roi)


def reference_rct(src, ref, mask):
  lab = lambda x: cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2LAB)  # noqa: E731
  s, r = lab(src), lab(ref)
  sm, rm = (s[mask], r[mask]) if mask.any() else (s.reshape(-1, 3), r.reshape(-1, 3))
  out = ((s - sm.mean(0)) * (rm.std(0) / np.maximum(sm.std(0), 1e-6)) + rm.mean(0))
  return np.clip(cv2.cvtColor(out.astype(np.float32), cv2.COLOR_LAB2RGB), 0.0, 1.0)


@pytest.mark.parametrize("angle,face_px,erode,blur", [(12.0, 300.0, 2.0, 8.0),
                                                      (-30.0, 700.0, 2.0, 8.0),
                                                      (5.0, 900.0, -3.0, 20.0),
                                                      (0.0, 90.0, 2.0, 8.0)])
def test_weights_match_the_full_resolution_mask(angle, face_px, erode, blur):
  h, w = 512, 512
  m, lm = scene(angle, face_px)
  roi, alpha, small, _ = blend.frame_alpha(m, lm, None, (w, h), size=SIZE, erode=erode,
                                           blur=blur)
  new = on_canvas(alpha, roi, w, h)
  old = reference_alpha(m, lm, w, h, erode, blur)
  diff = np.abs(new - old)
  band = ((old > 0) & (old < 1)) | ((new > 0) & (new < 1))  # the blurred edge
  # Drawn up to 5x coarser, the hull's edge is off by up to half a mask pixel before a Gaussian
  # ~16 mask pixels wide: a weight error up to ~0.05 where the edge is steepest, about what the
  # reference's own pixel quantisation of the hull makes (measured 0.040..0.055, band mean < 0.005).
  assert diff.max() < 0.07 and diff[band].mean() < 0.006, (diff.max(), diff[band].mean())
  assert abs(new.sum() - old.sum()) < 0.005 * old.sum()
  assert old[new == 0].max(initial=0) < 1e-3  # nothing cut off, only the Gaussian's far tail
  assert small.shape == (SIZE, SIZE) and small.any()


def test_the_support_box_holds_every_pixel_a_linear_warp_draws():
  rng = np.random.default_rng(3)
  for angle, scale in ((0.0, 0.5), (33.0, 0.37), (-71.0, 1.3)):
    crop = np.zeros((100, 100), np.float32)
    x, y = rng.integers(5, 60, 2)
    crop[y:y + 30, x:x + 20] = rng.uniform(0.01, 1, (30, 20))
    m = cv2.getRotationMatrix2D((300.0, 260.0), angle, scale)
    m[:, 2] += np.array([50.0, 50.0]) - (300.0, 260.0)
    full = warp.face_roi(m, 100, 640, 480)
    tight = warp.face_roi(m, 100, 640, 480, rect=cv2.boundingRect((crop > 0).view(np.uint8)))
    expected = on_canvas(warp.warp_to_frame(crop, m, full), full, 640, 480)
    got = on_canvas(warp.warp_to_frame(crop, m, tight), tight, 640, 480)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (tight[2] - tight[0]) * (tight[3] - tight[1]) < (full[2] - full[0]) * (full[3] - full[1])


@pytest.mark.parametrize("blend_mode", ["alpha", "seamless"])
def test_pixels_of_weight_zero_keep_their_bits(blend_mode):
  frame = skimage_data.astronaut()
  h, w = frame.shape[:2]
  rng = np.random.default_rng(0)
  for angle, face_px in ((12.0, 300.0), (-30.0, 700.0)):
    m, lm = scene(angle, face_px)
    crop = warp.align_face(frame, m, SIZE)
    rgb = rng.uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)  # nothing like the frame
    out = frame.copy()
    blend.paste_face(out, m, lm, crop, rgb, None, size=SIZE, blend=blend_mode)
    roi, alpha, _, _ = blend.frame_alpha(m, lm, None, (w, h), size=SIZE)
    weight = on_canvas(alpha, roi, w, h)
    np.testing.assert_array_equal(out[weight == 0], frame[weight == 0])
    assert np.abs(out[weight > 0.5].astype(int) - frame[weight > 0.5]).mean() > 20


def test_alpha_blend_is_the_rounded_float_formula_bit_for_bit():
  rng = np.random.default_rng(1)
  frame = rng.integers(0, 256, (50, 70, 3), np.uint8)
  face = rng.uniform(-20, 275, (50, 70, 3)).astype(np.float32)  # cubic overshoot included
  face[::7] = np.floor(face[::7]) + 0.5  # ties round to even
  alpha = rng.uniform(0, 1, (50, 70)).astype(np.float32)
  alpha[:, :10] = 0.0
  alpha[:5] = 1.0
  np.testing.assert_array_equal(blend.alpha_blend(frame, face, alpha),
                                reference_alpha_blend(frame, face, alpha))
  face[:, :10] = np.nan  # a broken face where the weight is 0 leaves the frame alone
  np.testing.assert_array_equal(blend.alpha_blend(frame, face, alpha)[5:, :10], frame[5:, :10])


@pytest.mark.parametrize("roi", [(40, 50, 160, 170), (0, 0, 120, 120), (160, 180, 280, 300)])
def test_seamless_clone_in_a_window_equals_cloning_into_the_whole_frame(roi):
  frame = skimage_data.astronaut()[:300, :280].copy()  # the last ROI ends at its corner
  x0, y0, x1, y1 = roi
  face = np.zeros((120, 120, 3), np.float32)
  face[:, ::8] = 255.0
  alpha = np.zeros((120, 120), np.float32)
  cv2.circle(alpha, (60, 60), 40, 1.0, -1)
  alpha = blend.erode_blur(alpha, 0, 9)
  binary = (alpha > 0.5).astype(np.uint8) * 255
  ys, xs = np.nonzero(binary)
  centre = (int(x0 + xs.min() + (xs.max() + 1 - xs.min()) // 2),
            int(y0 + ys.min() + (ys.max() + 1 - ys.min()) // 2))
  cloned = cv2.seamlessClone(np.clip(np.rint(face), 0, 255).astype(np.uint8), frame, binary,
                             centre, cv2.NORMAL_CLONE)
  expected = reference_alpha_blend(frame[y0:y1, x0:x1], cloned[y0:y1, x0:x1].astype(np.float32),
                                   alpha)
  np.testing.assert_array_equal(blend.seamless_blend(frame, roi, face, alpha), expected)


@pytest.mark.parametrize("partial", [True, False])
def test_colour_transfer_matches_the_numpy_statistics(partial):
  rng = np.random.default_rng(2)
  src = rng.uniform(0.2, 0.7, (SIZE, SIZE, 3)).astype(np.float32)
  ref = (rng.uniform(0.3, 0.6, (SIZE, SIZE, 3)) * [1.0, 0.85, 0.7]).astype(np.float32)
  mask = np.zeros((SIZE, SIZE), bool)
  if partial:
    mask[10:50, 14:44] = True  # else empty: statistics over the whole crop
  np.testing.assert_allclose(blend.color_rct(src, ref, mask), reference_rct(src, ref, mask),
                             atol=2e-5)
  m = mask if partial else np.ones_like(mask)
  expected = np.clip(src + (ref[m].mean(0) - src[m].mean(0)), 0, 1)
  np.testing.assert_allclose(blend.color_avg(src, ref, mask), expected, atol=1e-6)


def test_mask_size_is_bounded_by_the_face_and_keeps_a_hard_edge():
  assert blend.mask_size(64, 1024, 8.0) == 200  # a 16 px blur kernel across
  assert blend.mask_size(64, 150, 8.0) == 150  # never above the face's own size
  assert blend.mask_size(256, 1024, 8.0) == 256  # never below the model's crop
  assert blend.mask_size(64, 1024, 0.0) == 1024  # no blur: the edge needs every pixel


def test_detail_adds_the_frames_texture_finer_than_the_crop_and_nothing_coarser():
  """A face scaled up 300 / 64 = 4.7x: the frame's fine texture comes back, its broad shading
  does not, and weight-0 pixels keep their bits."""
  h, w = 480, 512
  yy, xx = np.mgrid[:h, :w]
  ramp = 60 + 100 * xx / w  # broad shading: far below the crop's Nyquist
  fine = 40 * ((xx + yy) % 2) - 20  # a one-pixel checkerboard: far above it
  m, lm = scene(0.0, 300.0)
  flat = np.full((SIZE, SIZE, 3), 0.5, np.float32)  # what a blurry decoder draws

  def paste(frame, detail):
    out = frame.copy()
    crop = warp.align_face(frame, m, SIZE)
    blend.paste_face(out, m, lm, crop, flat, None, size=SIZE, color="none", detail=detail)
    return out

  roi, alpha, _, _ = blend.frame_alpha(m, lm, None, (w, h), size=SIZE)
  weight = on_canvas(alpha, roi, w, h)
  inside = weight > 0.999  # the face, away from the blurred edge
  textured = np.repeat((ramp + fine)[..., None], 3, -1).clip(0, 255).astype(np.uint8)
  plain, kept = paste(textured, 0.0), paste(textured, 100.0)
  np.testing.assert_array_equal(kept[weight == 0], textured[weight == 0])
  lap = lambda x: cv2.Laplacian(np.float32(x[..., 0]), cv2.CV_32F)[inside].var()  # noqa: E731
  assert lap(plain) < 0.01 * lap(textured)  # the flat face: no texture
  assert 0.8 < lap(kept) / lap(textured) < 1.2  # the texture is back, at its own strength
  half = paste(textured, 50.0)
  assert 0.2 < lap(half) / lap(textured) < 0.3  # half the amplitude: a quarter of the variance
  # Broad shading is the model's business: a frame of only the ramp adds (almost) nothing.
  smooth = np.repeat(ramp[..., None], 3, -1).astype(np.uint8)
  diff = np.abs(paste(smooth, 100.0).astype(int) - paste(smooth, 0.0))[inside]
  assert diff.max() <= 1
  # A face smaller than its crop has no such band: nothing is added.
  m_small, _ = scene(0.0, 60.0)
  assert blend.frame_detail(textured[:60, :60], 1.0 / g.matrix_scale(m_small)) is None


def test_detail_on_the_skin_reaches_down_to_a_half_resolution_decoders_band():
  """Stripes at 0.37 cycles per crop pixel (between a "-d" decoder's reach and the crop's
  Nyquist): over the features only the part the crop cannot hold comes back; on the skin the
  rest of the band too (Gaussian responses 1 - 0.68 = 0.32 of the amplitude vs 1 - 0.38 = 0.62)."""
  scale = 4.0  # frame pixels per crop pixel
  xx = np.arange(240, dtype=np.float32)
  roi = np.repeat((128 + 40 * np.sin(2 * np.pi * xx * 0.37 / scale))[None, :, None], 200, 0)
  roi = np.repeat(roi, 3, -1)
  skin = np.zeros((200, 240), np.float32)
  skin[:, :120] = 1.0  # left half skin, right half eyes / brows / mouth
  amp = lambda d, cols: np.sqrt(2) * d[50:150, cols, 0].std()  # noqa: E731
  with_skin = blend.frame_detail(roi, scale, skin)
  features_only = blend.frame_detail(roi, scale)
  assert amp(with_skin, slice(30, 90)) == pytest.approx(0.62 * 40, rel=0.08)
  assert amp(with_skin, slice(150, 210)) == pytest.approx(0.32 * 40, rel=0.08)
  np.testing.assert_allclose(features_only[:, 150:210], with_skin[:, 150:210], atol=1e-3)
  assert amp(features_only, slice(30, 90)) == pytest.approx(0.32 * 40, rel=0.08)
  # Not enlarged enough for the fine band, but the skin's reaches half a frame pixel: skin only.
  mild = blend.frame_detail(roi, 1.0, skin)
  assert blend.frame_detail(roi, 1.0) is None and np.abs(mild[:, 150:210]).max() < 1e-3
  assert amp(mild, slice(30, 90)) > 1.0


def feature_mesh() -> np.ndarray:
  """Crop-pixel landmarks of a 170 px crop: round eyes and mouth, two thin brows, the rest on
  the chin."""
  lm = np.zeros((g.NUM_LANDMARKS, 2))
  lm[:] = (80.0, 130.0)
  ring = lambda c, r, n: c + r * np.stack(  # noqa: E731
      [np.cos(np.linspace(0, 2 * np.pi, n, endpoint=False)),
       np.sin(np.linspace(0, 2 * np.pi, n, endpoint=False))], -1)
  lm[list(g.RIGHT_EYE)] = ring(np.array([50.0, 50.0]), 10, len(g.RIGHT_EYE))
  lm[list(g.LEFT_EYE)] = ring(np.array([110.0, 50.0]), 10, len(g.LEFT_EYE))
  lm[list(g.LIPS_OUTER)] = ring(np.array([80.0, 110.0]), 14, len(g.LIPS_OUTER))
  for brow, x0 in ((g.RIGHT_BROW, 38.0), (g.LEFT_BROW, 98.0)):  # upper and lower contours
    lm[list(brow)] = [(x0 + 6 * (k % 5), 28.0 + 8 * (k // 5)) for k in range(len(brow))]
  return lm


SKIN_ZERO = ((50, 50), (110, 50), (80, 110))  # eyes, mouth
SKIN_THIN = ((50, 32), (110, 32))  # the brows' middles: thin, the blurred edge reaches in
SKIN_ONE = ((20, 90), (140, 90), (80, 10))  # cheeks, forehead


def test_skin_weight_is_zero_on_the_features_and_one_on_the_cheeks():
  w = blend.skin_weight(feature_mesh(), 170)
  assert w.shape == (170, 170) and w.dtype == np.float32
  for x, y in SKIN_ZERO:
    assert w[y, x] < 0.05, (x, y)
  for x, y in SKIN_THIN:
    assert w[y, x] < 0.15, (x, y)
  for x, y in SKIN_ONE:
    assert w[y, x] > 0.95, (x, y)


def test_skin_weight_reaches_the_frame_where_the_features_are():
  """frame_alpha(skin=True): the crop's skin weights warped with the mask onto the rotated,
  enlarged face in the frame (eyes and mouth found where the frame's landmarks put them)."""
  size, face_px, angle, centre = 170, 380.0, 20.0, (300.0, 260.0)
  m = cv2.getRotationMatrix2D(centre, angle, size / face_px)
  m[:, 2] += np.array([size / 2, size / 2]) - centre
  frame_lm = g.transform_points(g.invert_affine(m), feature_mesh())
  w, h = 640, 560
  weights = blend.frame_alpha(m, frame_lm, None, (w, h), size=size, mask="extended", erode=0,
                              blur=2, skin=True)
  assert blend.frame_alpha(m, frame_lm, None, (w, h), size=size).skin is None
  x0, y0 = weights.roi[:2]
  assert weights.skin.shape == weights.alpha.shape
  to_frame = lambda x, y: np.rint(g.transform_points(g.invert_affine(m), [(x, y)])[0]  # noqa: E731
                                  - (x0, y0)).astype(int)
  for (x, y), hi in [(p, 0.05) for p in SKIN_ZERO] + [(p, 0.15) for p in SKIN_THIN]:
    fx, fy = to_frame(x, y)
    assert weights.skin[fy, fx] < hi, (x, y)
  for x, y in SKIN_ONE[:2]:  # the cheeks (the forehead is outside the extended mask's box)
    fx, fy = to_frame(x, y)
    assert weights.skin[fy, fx] > 0.95, (x, y)
