"""Putting faces back: colour transfer, masks, inverse warp and blending against closed forms."""

import cv2
import numpy as np
import pytest

from jaxswap import convert_faces
from jaxswap.faces import composite as blend
from jaxswap.faces import geometry as g
from jaxswap.faces import warp

skimage_data = pytest.importorskip("skimage.data")


def similarity(angle_deg: float, scale: float, centre, to) -> np.ndarray:
  """frame -> crop: rotate/scale about `centre` (frame) and move it to `to` (crop)."""
  m = cv2.getRotationMatrix2D(tuple(map(float, centre)), angle_deg, scale)
  m[:, 2] += np.asarray(to, float) - np.asarray(centre, float)
  return m


def test_rescale_matrix_equals_a_fresh_alignment_at_the_new_size():
  pts = np.random.default_rng(0).uniform(100, 300, (g.NUM_LANDMARKS, 2))
  m256 = g.alignment_matrix(pts, 256, 0.85)
  for size in (64, 128, 333):
    np.testing.assert_allclose(warp.rescale_matrix(m256, 256, size),
                               g.alignment_matrix(pts, size, 0.85), atol=1e-9)


def test_avg_moves_the_masked_mean_to_the_reference():
  rng = np.random.default_rng(1)
  src = rng.uniform(0.2, 0.5, (32, 32, 3)).astype(np.float32)
  ref = rng.uniform(0.4, 0.7, (32, 32, 3)).astype(np.float32)
  mask = np.zeros((32, 32), bool)
  mask[8:24, 4:28] = True
  out = blend.color_avg(src, ref, mask)
  np.testing.assert_allclose(out[mask].mean(0), ref[mask].mean(0), atol=1e-5)
  np.testing.assert_allclose(out - src, np.broadcast_to(out[0, 0] - src[0, 0], src.shape),
                             atol=1e-6)  # a pure shift


def test_reinhard_moves_lab_mean_and_std_to_the_reference():
  rng = np.random.default_rng(2)
  src = rng.uniform(0.35, 0.6, (40, 40, 3)).astype(np.float32)
  ref = (rng.uniform(0.3, 0.5, (40, 40, 3)) * [1.0, 0.9, 0.8]).astype(np.float32)
  mask = np.zeros((40, 40), bool)
  mask[5:35, 10:30] = True
  lab = lambda x: cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2LAB)  # noqa: E731
  # The moment match itself is exact.
  moved = blend.match_moments(lab(src), lab(ref), mask)
  np.testing.assert_allclose(moved[mask].mean(0), lab(ref)[mask].mean(0), atol=1e-3)
  np.testing.assert_allclose(moved[mask].std(0), lab(ref)[mask].std(0), rtol=1e-4)
  # End to end through RGB: OpenCV's float L*a*b* round trip is good to ~0.1 L (of 100).
  out = blend.color_rct(src, ref, mask)
  assert out.min() > 0 and out.max() < 1  # nothing clipped
  np.testing.assert_allclose(lab(out)[mask].mean(0), lab(ref)[mask].mean(0), atol=0.25)
  np.testing.assert_allclose(lab(out)[mask].std(0), lab(ref)[mask].std(0), rtol=0.02, atol=0.1)


def test_histogram_match_inverts_a_monotone_map():
  rng = np.random.default_rng(3)
  ref = rng.integers(0, 128, (24, 24, 3)).astype(np.float32) / 255.0
  src = (2.0 * ref * 255.0 + 1.0) / 255.0  # strictly increasing, so ranks are kept
  mask = np.ones((24, 24), bool)
  np.testing.assert_allclose(blend.color_hist(src, ref, mask), ref, atol=1e-6)
  # Over a partial mask the masked values still map exactly.
  mask[:, :12] = False
  np.testing.assert_allclose(blend.color_hist(src, ref, mask)[mask], ref[mask], atol=1e-6)


def test_sharpen_steepens_edges_and_leaves_flat_regions_and_amount_zero_alone():
  edge = np.zeros((32, 32, 3), np.float32)
  edge[:, 16:] = 0.6
  edge = cv2.GaussianBlur(edge, (0, 0), 2.0) + 0.2  # a soft edge, as a blurry decoder draws it
  assert blend.sharpen(edge, 0.0) is edge
  out = blend.sharpen(edge, 100.0, radius=2.0)
  assert out.dtype == np.float32 and out.shape == edge.shape
  lap = lambda x: cv2.Laplacian(x[..., 0], cv2.CV_32F).var()
  # More edge energy, the more the larger the amount and the closer the radius to the blur's.
  gains = [lap(blend.sharpen(edge, a, r)) / lap(edge) for a, r in ((100, 1), (200, 1), (100, 2))]
  assert 1.2 < gains[0] < gains[1] and gains[0] < gains[2] and lap(out) > 2 * lap(edge)
  np.testing.assert_allclose(out[:, :4], edge[:, :4], atol=1e-5)  # flat: unchanged
  assert np.abs(np.diff(out[0, :, 0])).max() > 1.2 * np.abs(np.diff(edge[0, :, 0])).max()
  hard = np.zeros((8, 8, 3), np.float32)
  hard[:, 4:] = 1.0
  out = blend.sharpen(hard, 300.0)
  assert out.min() >= 0.0 and out.max() <= 1.0  # overshoot is clipped to the valid range


def test_erode_then_blur_has_a_closed_form_support():
  mask = np.zeros((100, 100), np.float32)
  mask[30:70, 30:70] = 1.0
  eroded = blend.erode_blur(mask, 5, 0)
  assert eroded.sum() == 30 * 30 and eroded[35:65, 35:65].all()
  grown = blend.erode_blur(mask, -3, 0)
  assert grown[27:73, 27:73].sum() >= 44 * 44 and not grown[:26].any()
  blurred = blend.erode_blur(mask, 0, 9)  # 9x9 kernel: reaches 4 px outside, no further
  assert blurred[26:74, 26:74].sum() == pytest.approx(mask.sum(), rel=1e-5)
  outside = np.ones_like(mask, bool)
  outside[26:74, 26:74] = False
  assert not blurred[outside].any() and np.all(blurred[40:60, 40:60] == 1.0)
  assert 0.5 < blurred[50, 30] < 0.75 and 0.25 < blurred[50, 29] < 0.5  # half-way at the edge


def test_alpha_blend_keeps_bits_where_alpha_is_zero():
  rng = np.random.default_rng(4)
  frame = rng.integers(0, 256, (10, 12, 3), np.uint8)
  face = rng.uniform(0, 255, (10, 12, 3)).astype(np.float32)
  alpha = np.zeros((10, 12), np.float32)
  alpha[:, 6:] = 1.0
  alpha[:, 9:] = 0.5
  out = blend.alpha_blend(frame, face, alpha)
  np.testing.assert_array_equal(out[:, :6], frame[:, :6])
  np.testing.assert_array_equal(out[:, 6:9], np.rint(face[:, 6:9]).astype(np.uint8))
  np.testing.assert_allclose(out[:, 9:], (frame[:, 9:] + face[:, 9:]) / 2.0, atol=0.51)


def test_inverse_warp_round_trip_reproduces_the_frame():
  frame = cv2.GaussianBlur(skimage_data.astronaut(), (0, 0), 1.5)
  for angle, scale in ((12.0, 1.15), (-25.0, 0.9)):
    size = 200
    m = similarity(angle, scale, (230, 150), (size / 2, size / 2))
    crop = warp.align_face(frame, m, size)
    roi = warp.face_roi(m, size, frame.shape[1], frame.shape[0])
    back = warp.warp_to_frame(crop.astype(np.float32), m, roi, cv2.INTER_CUBIC)
    x0, y0, x1, y1 = roi
    # Frame pixels whose pre-image lies at least 4 crop pixels inside the crop.
    inside = warp.warp_to_frame(np.ones((size, size), np.float32), m, roi, cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((9, 9), np.uint8)) > 0
    diff = np.abs(back - frame[y0:y1, x0:x1].astype(np.float32))[inside]
    assert inside.sum() > 0.5 * (size / scale) ** 2
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 2.0, (angle, diff.mean())


def test_a_strong_cubic_enlargement_in_two_passes_matches_one_cubic_warp():
  # A 96 px crop, smooth at its own pixels as a model's output is, drawn 2.2x and 3x larger and
  # turned: the resize + linear warp path against OpenCV's one-pass cubic warp of that matrix.
  crop = cv2.resize(skimage_data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
  crop = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), 1.0)
  for angle, scale in ((17.0, 1 / 3), (-40.0, 0.45)):
    assert scale < warp.CUBIC_IN_TWO_BELOW
    m = similarity(angle, scale, (320, 240), (48, 48))
    roi = warp.face_roi(m, 96, 640, 480)
    x0, y0, x1, y1 = roi
    to_roi = g.compose(m, [[1, 0, x0], [0, 1, y0]])
    one = cv2.warpAffine(crop, to_roi, (x1 - x0, y1 - y0),
                         flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    two = warp.warp_to_frame(crop, m, roi, cv2.INTER_CUBIC, cv2.BORDER_REPLICATE)
    assert two.shape == one.shape
    diff = np.abs(two - one)
    # Away from the crop's edge (where the two border rules differ) they agree to a level.
    inside = warp.warp_to_frame(np.ones((96, 96), np.float32), m, roi, cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((15, 15), np.uint8)) > 0
    assert inside.sum() > 0.5 * (96 / scale) ** 2
    assert diff[inside].mean() < 0.4 and np.percentile(diff[inside], 99) < 2.5, angle


def test_seamless_blend_leaves_pixels_outside_the_mask():
  frame = skimage_data.astronaut()[:200, :200].copy()
  roi = (40, 50, 140, 150)
  face = np.zeros((100, 100, 3), np.float32)
  face[:, ::8] = 255.0  # stripes: a gradient field the clone must carry over
  alpha = np.zeros((100, 100), np.float32)
  cv2.circle(alpha, (50, 50), 30, 1.0, -1)
  alpha = blend.erode_blur(alpha, 0, 9)
  out = blend.seamless_blend(frame, roi, face, alpha)
  region = frame[50:150, 40:140]
  np.testing.assert_array_equal(out[alpha == 0], region[alpha == 0])
  assert np.abs(out[alpha == 1].astype(float) - region[alpha == 1]).mean() > 5


def test_watermark_only_marks_the_bottom_left_corner():
  frame = np.full((121, 161, 3), 90, np.uint8)
  out = blend.watermark(frame)
  changed = np.any(out != frame, -1)
  ys, xs = np.nonzero(changed)
  assert changed.sum() > 200 and ys.min() > 121 // 2 and xs.min() < 10
  assert np.array_equal(out[:60], frame[:60])


def test_smoothing_averages_each_track_and_keeps_a_steady_one():
  base = similarity(5.0, 0.5, (80, 60), (32, 32))
  jitter = [np.array([[0, 0, d], [0, 0, -d]]) for d in (0.0, 2.0, -2.0, 2.0, -2.0, 0.0)]
  frames = [(i, [convert_faces.Job(base + j, None)]) for i, j in enumerate(jitter)]
  out = list(convert_faces.smooth_stream(iter(frames), 1, 64))
  assert [f for f, _ in out] == list(range(6))
  m = [jobs[0].matrix for _, jobs in out]
  np.testing.assert_allclose(m[2], base + np.mean(jitter[1:4], 0))
  np.testing.assert_allclose(m[0], base + np.mean(jitter[0:2], 0))
  steady = list(convert_faces.smooth_stream(iter([(i, [convert_faces.Job(base, None)])
                                                  for i in range(4)]), 2, 64))
  for _, jobs in steady:
    np.testing.assert_allclose(jobs[0].matrix, base)
