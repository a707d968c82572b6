"""jaxswap.geometry against closed-form cases: known transforms, exact pixel counts."""

import cv2
import numpy as np
import pytest
from scipy.spatial import ConvexHull

from jaxswap.faces import geometry as g


def similarity(scale, angle, tx, ty):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [0, 0, 1.0]])


def test_umeyama_recovers_exact_similarity():
  rng = np.random.default_rng(0)
  src = rng.uniform(-50, 50, (40, 2))
  truth = similarity(1.7, 0.6, 12.5, -3.25)
  dst = g.transform_points(truth, src)
  np.testing.assert_allclose(g.umeyama(src, dst), truth, atol=1e-10)


def test_umeyama_rigid_and_3d():
  rng = np.random.default_rng(1)
  src = rng.normal(size=(30, 3))
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  rot = q * np.sign(np.linalg.det(q))  # a proper rotation
  dst = src @ rot.T + [1.0, 2.0, 3.0]
  m = g.umeyama(src, dst, estimate_scale=False)
  np.testing.assert_allclose(m[:3, :3], rot, atol=1e-10)
  np.testing.assert_allclose(m[:3, 3], [1, 2, 3], atol=1e-10)


def test_umeyama_never_reflects():
  rng = np.random.default_rng(2)
  src = rng.normal(size=(20, 2))
  m = g.umeyama(src, src * [-1, 1])  # a mirror image: best proper fit is no reflection
  assert np.linalg.det(m[:2, :2]) > 0


def test_umeyama_under_noise_is_close():
  rng = np.random.default_rng(3)
  src = rng.uniform(0, 200, (100, 2))
  truth = similarity(0.8, -0.3, 40.0, 25.0)
  dst = g.transform_points(truth, src) + rng.normal(0, 0.5, (100, 2))
  m = g.umeyama(src, dst)
  # 0.5 px noise on 100 points ~80 px apart: parameters good to ~0.05 px / 0.03 degrees.
  assert abs(g.matrix_scale(m) - 0.8) < 2e-3
  assert abs(g.matrix_angle(m) + 0.3) < 2e-3
  np.testing.assert_allclose(g.transform_points(m, src), g.transform_points(truth, src),
                             atol=0.3)


def test_alignment_matrix_puts_template_on_crop():
  rng = np.random.default_rng(4)
  face = rng.uniform(0, 500, (g.NUM_LANDMARKS, 2))  # non-stable points must not matter
  face[g.STABLE_POINTS] = g.TEMPLATE * 180
  truth = similarity(1.3, 0.4, 300, 120)
  frame_pts = g.transform_points(truth, face)
  m = g.alignment_matrix(frame_pts, 256, 0.85)
  np.testing.assert_allclose(g.transform_points(m, frame_pts[g.STABLE_POINTS]),
                             g.template_points(256, 0.85), atol=1e-9)
  # The unit face box maps to the centred square of side coverage * size.
  np.testing.assert_allclose(g.template_points(100, 0.5)[0],
                             (g.TEMPLATE[0] - 0.5) * 50 + 50)


def test_template_is_symmetric_and_level():
  pos = {int(i): p for i, p in zip(g.STABLE_POINTS, g.TEMPLATE)}
  for right, left in [(33, 263), (133, 362), (61, 291), (70, 300), (105, 334), (98, 327)]:
    assert pos[right][1] == pytest.approx(pos[left][1], abs=1e-4)
    assert pos[right][0] + pos[left][0] == pytest.approx(1.0, abs=1e-4)
  for mid in (1, 4, 6, 0, 17, 168):
    assert pos[mid][0] == pytest.approx(0.5, abs=1e-4)
  assert pos[168][1] < pos[4][1] < pos[0][1] < pos[17][1]  # nose bridge, tip, lips: top down


def test_invert_compose_transform():
  m = similarity(2.0, 0.3, 5, 7)[:2]
  inv = g.invert_affine(m)
  np.testing.assert_allclose(g.compose(m, inv), np.eye(3)[:2], atol=1e-12)
  pts = np.array([[1.0, 2.0], [-3.0, 4.0]])
  np.testing.assert_allclose(g.transform_points(inv, g.transform_points(m, pts)), pts)
  np.testing.assert_allclose(g.transform_points(m, pts), g.transform_points(g.to_3x3(m), pts))


def test_aligned_crop_inverse_warp_round_trips():
  # A smooth image: bilinear/cubic interpolation is nearly exact on it.
  yy, xx = np.mgrid[0:300, 0:400].astype(np.float32)
  image = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0),
                    128 + 60 * np.sin((xx + yy) / 31.0)], -1).astype(np.uint8)
  m = similarity(1.6, 0.35, -180, -40)[:2]  # frame -> face, enlarging
  crop = cv2.warpAffine(image, m, (128, 128), flags=cv2.INTER_CUBIC)
  back = cv2.warpAffine(crop, g.invert_affine(m), (400, 300), flags=cv2.INTER_CUBIC)
  # Frame pixels whose image lies well inside the crop.
  pts = g.transform_points(m, np.stack([xx.ravel(), yy.ravel()], -1)).reshape(300, 400, 2)
  inside = np.all((pts > 4) & (pts < 123), -1)
  assert inside.sum() > 3000
  diff = np.abs(back.astype(float) - image)[inside]
  assert diff.mean() < 1.0 and diff.max() <= 6


def test_convex_hull_matches_scipy():
  rng = np.random.default_rng(5)
  pts = rng.normal(size=(200, 2)) * [30, 10]
  hull = g.convex_hull(pts)
  ref = pts[ConvexHull(pts).vertices]
  assert {tuple(p) for p in hull} == {tuple(p) for p in ref}
  # Counter-clockwise in (x, y) algebra: positive signed area.
  x, y = hull[:, 0], hull[:, 1]
  assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0


def test_convex_hull_drops_collinear_points_and_starts_lowest():
  square = np.array([[4, 0], [0, 0], [4, 4], [2, 0], [0, 4], [0, 2], [1, 1], [4, 4]], float)
  np.testing.assert_array_equal(g.convex_hull(square), [[0, 0], [4, 0], [4, 4], [0, 4]])
  line = np.array([[3, 1], [17, 7], [10, 4]], float)  # all on one line: its two ends
  np.testing.assert_array_equal(g.convex_hull(line), [[3, 1], [17, 7]])
  assert len(g.convex_hull(np.array([[1, 1], [1, 1]], float))) == 1


def test_fill_convex_counts_pixel_centres():
  rect = np.array([[2, 3], [10, 3], [10, 8], [2, 8]], float)
  mask = g.fill_convex(g.convex_hull(rect), 20, 20)
  assert mask.sum() == 9 * 6 and mask[3:9, 2:11].all()
  n = 12  # right triangle x, y >= 0, x + y <= n: (n+1)(n+2)/2 lattice points
  tri = g.convex_hull(np.array([[0, 0], [n, 0], [0, n]], float))
  assert g.fill_convex(tri, 30, 30).sum() == (n + 1) * (n + 2) // 2
  assert not g.fill_convex(tri + 100, 30, 30).any()  # off-image: empty, no error


def test_fill_convex_matches_brute_force():
  rng = np.random.default_rng(7)
  for _ in range(5):
    hull = g.convex_hull(rng.uniform(-10, 70, (12, 2)))
    ys, xs = np.mgrid[0:60, 0:50]
    inside = np.ones(xs.shape, bool)
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):  # every pixel against every edge
      inside &= (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0]) >= -1e-9
    np.testing.assert_array_equal(g.fill_convex(hull, 60, 50), inside)


def test_masks_nest():
  rng = np.random.default_rng(6)
  face = np.zeros((g.NUM_LANDMARKS, 2))
  face[:] = rng.uniform(40, 90, (g.NUM_LANDMARKS, 2))
  face[list(g.FACE_OVAL)] = 64 + 60 * np.stack(
      [np.sin(np.linspace(0, 2 * np.pi, 36, endpoint=False)),
       -np.cos(np.linspace(0, 2 * np.pi, 36, endpoint=False))], -1)
  comp = g.face_mask(face, 128, "components") > 0
  ext = g.face_mask(face, 128, "extended") > 0
  prio = g.priority_mask(face, 128) > 0
  assert comp.sum() > 0 and np.all(ext[comp]) and ext.sum() > comp.sum()
  assert np.all(g.face_mask(face, 128, "brows")[comp] > 0)
  assert prio.any()
  with pytest.raises(ValueError, match="brows"):
    g.face_mask(face, 128, "nonsense")


def test_brows_mask_raises_the_brows_by_half_their_height():
  """faceswap's "extended": the outline's top is half the brow-eye gap above the brows."""
  face = np.zeros((g.NUM_LANDMARKS, 2))
  face[:, 0] = np.linspace(30, 98, g.NUM_LANDMARKS)
  face[:, 1] = 70.0
  face[list(g.LOWER_FACE_OVAL), 1] = 100.0  # cheeks and jaw well below
  for eye, brow in ((g.RIGHT_EYE, g.RIGHT_BROW), (g.LEFT_EYE, g.LEFT_BROW)):
    face[list(eye), 1] = 60.0
    face[list(brow), 1] = 40.0  # brows 20 px above the eyes
  hull = g.mask_hull(face, "brows")
  assert hull[:, 1].min() == pytest.approx(30.0)  # 40 - 0.5 * 20
  comp = g.mask_hull(face, "components")
  assert comp[:, 1].min() == pytest.approx(40.0)
  mask = g.face_mask(face, 128, "brows")
  x = int(face[list(g.RIGHT_BROW), 0].mean())
  assert mask[32, x] == 255 and mask[28, x] == 0
  assert g.face_mask(face, 128, "components")[35, x] == 0
