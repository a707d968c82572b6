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

skimage_data = pytest.importorskip("skimage.data")
SIZE = 64


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


def test_seamless_clone_in_a_window_equals_cloning_into_the_whole_frame():
  frame = skimage_data.astronaut()[:300, :280].copy()
  roi = (40, 50, 160, 170)
  face = np.zeros((120, 120, 3), np.float32)
  face[:, ::8] = 255.0
  alpha = np.zeros((120, 120), np.float32)
  cv2.circle(alpha, (60, 60), 40, 1.0, -1)
  alpha = blend.erode_blur(alpha, 0, 9)
  binary = (alpha > 0.5).astype(np.uint8) * 255
  ys, xs = np.nonzero(binary)
  centre = (int(40 + xs.min() + (xs.max() + 1 - xs.min()) // 2),
            int(50 + ys.min() + (ys.max() + 1 - ys.min()) // 2))
  cloned = cv2.seamlessClone(np.clip(np.rint(face), 0, 255).astype(np.uint8), frame, binary,
                             centre, cv2.NORMAL_CLONE)
  expected = reference_alpha_blend(frame[50:170, 40:160], cloned[50:170, 40:160].astype(
      np.float32), alpha)
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