"""Behaviour of the synthetic two-identity renderer: its pictures must mean what the params say."""

import numpy as np
import pytest

from jaxswap.data import synthetic
from jaxswap.errors import JaxswapError

NOSE = synthetic.LANDMARK_NAMES.index("nose_tip")


def _neutral(n: int = 1, **overrides) -> dict[str, np.ndarray]:
  """A frontal, relaxed, evenly lit face; overrides set single params for all n faces."""
  base = {name: 0.0 for name in synthetic.PARAM_NAMES}
  base.update(scale=1.0, eye_open=1.0)
  base.update(overrides)
  return {k: np.full(n, v, np.float32) for k, v in base.items()}


def _stack(*params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([p[k] for p in params]) for k in synthetic.PARAM_NAMES}


def _luma(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_public_constants():
  assert synthetic.IDENTITIES == ("a", "b")
  assert set(synthetic.PARAM_NAMES) == set(synthetic.PARAM_RANGES)
  assert {"yaw", "pitch", "roll", "scale", "mouth_open", "smile", "eye_open", "gaze_x",
          "light_angle"} <= set(synthetic.PARAM_NAMES)
  assert synthetic.NUM_LANDMARKS == len(synthetic.LANDMARK_NAMES) >= 9


def test_sample_params_ranges_cover_aligned_crops():
  p = synthetic.sample_params(np.random.default_rng(0), 5000)
  assert set(p) == set(synthetic.PARAM_NAMES)
  for name, (lo, hi) in synthetic.PARAM_RANGES.items():
    v = p[name]
    assert v.dtype == np.float32 and v.shape == (5000,)
    assert lo <= v.min() and v.max() <= hi, name
    # Uses the whole range, not a corner of it.
    assert v.min() < lo + 0.05 * (hi - lo) and v.max() > hi - 0.05 * (hi - lo), name
  # Aligned crops: small rotations, scale within 5 %.
  assert np.abs(p["roll"]).max() < np.deg2rad(5)
  assert np.abs(p["yaw"]).max() < np.deg2rad(20)
  assert np.abs(p["scale"] - 1).max() <= 0.05 + 1e-6
  again = synthetic.sample_params(np.random.default_rng(0), 5000)
  assert all(np.array_equal(p[k], again[k]) for k in p)


def test_render_is_deterministic_and_independent_of_batching():
  p = synthetic.sample_params(np.random.default_rng(1), 40)  # more than one internal chunk
  first = synthetic.render("b", p)
  second = synthetic.render(1, p)
  for key in ("image", "mask", "priority", "landmarks"):
    np.testing.assert_array_equal(first[key], second[key])
  tail = synthetic.render("b", {k: v[29:] for k, v in p.items()})
  for key in ("image", "mask", "priority", "landmarks"):
    np.testing.assert_array_equal(first[key][29:], tail[key])


def test_outputs_types_and_masks():
  p = synthetic.sample_params(np.random.default_rng(2), 16)
  for ident in synthetic.IDENTITIES:
    out = synthetic.render(ident, p, 64)
    assert out["image"].dtype == np.uint8 and out["image"].shape == (16, 64, 64, 3)
    assert out["mask"].dtype == np.uint8 and out["mask"].shape == (16, 64, 64, 1)
    assert out["priority"].shape == (16, 64, 64, 1)
    assert out["landmarks"].dtype == np.float32
    assert out["landmarks"].shape == (16, synthetic.NUM_LANDMARKS, 2)
    assert set(np.unique(out["mask"])) == {0, 255}
    # The face fills a good part of the crop but not its corners (background/hair).
    frac = (out["mask"] > 0).mean(axis=(1, 2, 3))
    assert np.all(frac > 0.2) and np.all(frac < 0.6)
    assert not out["mask"][:, :4, :4].any() and not out["mask"][:, :4, -4:].any()
    # Eyes and mouth are on the face.
    assert out["priority"].any(axis=(1, 2, 3)).all()
    assert not np.any((out["priority"] > 0) & (out["mask"] == 0))


def test_identities_differ_much_more_than_nearby_params():
  rng = np.random.default_rng(3)
  p = synthetic.sample_params(rng, 32)
  a = synthetic.render("a", p)["image"].astype(np.int32)
  b = synthetic.render("b", p)["image"].astype(np.int32)
  nudged = {k: (v + 0.01 * (hi - lo) * rng.standard_normal(32)).astype(np.float32)
            for (k, v), (lo, hi) in zip(p.items(), synthetic.PARAM_RANGES.values())}
  a2 = synthetic.render("a", nudged)["image"].astype(np.int32)
  cross = np.abs(a - b).mean()
  near = np.abs(a - a2).mean()
  assert cross > 40
  assert 0 < near < cross / 10


def test_mouth_open_darkens_the_mouth():
  out = synthetic.render("a", _stack(_neutral(mouth_open=0.0), _neutral(mouth_open=1.0)), 64)
  below_nose = np.arange(64)[:, None] > out["landmarks"][0, NOSE, 1]
  dark = []
  for i in range(2):
    mouth = (out["priority"][i, ..., 0] > 0) & below_nose
    dark.append(int(((_luma(out["image"][i]) < 90) & mouth).sum()))
  assert dark[0] < 5 and dark[1] > dark[0] + 12, dark
  lips = synthetic.LANDMARK_NAMES.index("upper_lip"), synthetic.LANDMARK_NAMES.index("lower_lip")
  gap = out["landmarks"][:, lips[1], 1] - out["landmarks"][:, lips[0], 1]
  assert gap[1] > gap[0] + 3


def test_yaw_moves_features_right_nose_most():
  out = synthetic.render("b", _stack(_neutral(yaw=-0.25), _neutral(yaw=0.0), _neutral(yaw=0.25)))
  x = out["landmarks"][..., 0]
  assert np.all(x[2] > x[1]) and np.all(x[1] > x[0])
  eyes = [synthetic.LANDMARK_NAMES.index(k) for k in ("left_eye", "right_eye")]
  assert (x[2, NOSE] - x[0, NOSE]) > (x[2, eyes] - x[0, eyes]).max()  # the nose sticks out
  # Frontal faces are mirror-symmetric about the crop's vertical centre line.
  centre = (x[1, eyes[0]] + x[1, eyes[1]]) / 2
  np.testing.assert_allclose(centre, 31.5, atol=1e-3)


def test_smile_lifts_corners_and_eye_open_shows_the_whites():
  out = synthetic.render("a", _stack(_neutral(smile=-0.5), _neutral(smile=1.0)), 128)
  corners = [synthetic.LANDMARK_NAMES.index(k) for k in ("mouth_left", "mouth_right")]
  y = out["landmarks"][:, corners, 1]
  assert np.all(y[1] < y[0] - 3)  # image y points down
  out = synthetic.render("a", _stack(_neutral(eye_open=1.0), _neutral(eye_open=0.1)), 128)
  above_nose = np.arange(128)[:, None] < out["landmarks"][0, NOSE, 1]
  white = [int(((out["image"][i].min(-1) > 225) & (out["priority"][i, ..., 0] > 0)
                & above_nose).sum()) for i in range(2)]
  assert white[1] < white[0] / 4, white


def test_gaze_moves_the_irises():
  out = synthetic.render("a", _stack(_neutral(gaze_x=-1.0), _neutral(gaze_x=1.0)), 128)
  img = out["image"].astype(np.int32)
  blue = (img[..., 2] - img[..., 0] > 80) & (out["priority"][..., 0] > 0)  # a's irises are blue
  cols = np.arange(128)
  centroid = [(blue[i] * cols).sum() / blue[i].sum() for i in range(2)]
  assert centroid[1] > centroid[0] + 3


def test_light_brightens_the_lit_side_only():
  lit = _stack(_neutral(light_strength=0.0), _neutral(light_angle=0.0, light_strength=0.5))
  out = synthetic.render("a", lit)
  face = out["mask"][0, ..., 0] > 0
  luma = _luma(out["image"])
  right = face & (np.arange(64) >= 32)[None, :]
  left = face & (np.arange(64) < 32)[None, :]
  even = luma[0][right].mean() - luma[0][left].mean()
  side = luma[1][right].mean() - luma[1][left].mean()
  assert abs(even) < 3 and side > 20
  np.testing.assert_array_equal(out["image"][0, :3, :3], out["image"][1, :3, :3])  # background


def test_landmarks_lie_inside_the_face_mask():
  p = synthetic.sample_params(np.random.default_rng(4), 256)
  for ident in synthetic.IDENTITIES:
    out = synthetic.render(ident, p)
    lm = np.rint(out["landmarks"]).astype(int)
    faces = np.arange(256)[:, None]
    assert np.all(out["mask"][faces, lm[..., 1], lm[..., 0], 0] == 255), ident


def test_trajectory_is_smooth_and_in_range():
  n = 300
  p = synthetic.trajectory_params(np.random.default_rng(5), n)
  perm = np.random.default_rng(6).permutation(n)
  for name, (lo, hi) in synthetic.PARAM_RANGES.items():
    v = p[name]
    assert v.dtype == np.float32 and v.shape == (n,)
    assert lo <= v.min() and v.max() <= hi
    step = np.abs(np.diff(v)).mean()
    jump = np.abs(v - v[perm]).mean()
    assert step < 0.1 * jump and step < 0.03 * (hi - lo), name
  images = synthetic.render("a", p)["image"].astype(np.int32)
  step = np.abs(np.diff(images, axis=0)).mean()
  jump = np.abs(images - images[perm]).mean()
  assert step < 0.25 * jump, (step, jump)


def test_sizes_scale_proportionally():
  p = synthetic.sample_params(np.random.default_rng(7), 8)
  small = synthetic.render("a", p, 64)
  large = synthetic.render("a", p, 128)
  # OpenCV pixel-centre convention: x_128 + 0.5 = 2 (x_64 + 0.5).
  np.testing.assert_allclose(large["landmarks"] + 0.5, 2 * (small["landmarks"] + 0.5),
                             atol=1e-3)
  pooled = large["image"].astype(np.float32).reshape(8, 64, 2, 64, 2, 3).mean((2, 4))
  assert np.abs(pooled - small["image"]).mean() < 6
  np.testing.assert_allclose((large["mask"] > 0).mean((1, 2, 3)),
                             (small["mask"] > 0).mean((1, 2, 3)), atol=0.02)


@pytest.mark.parametrize("identity", ["c", 2, -1, None])
def test_unknown_identity_is_a_user_error(identity):
  with pytest.raises(JaxswapError, match="identity"):
    synthetic.render(identity, _neutral())


def test_bad_params_are_user_errors():
  p = _neutral(2)
  del p["smile"]
  with pytest.raises(JaxswapError, match="smile"):
    synthetic.render("a", p)
  p = _neutral(2)
  p["yaw"] = np.zeros(3, np.float32)
  with pytest.raises(JaxswapError, match="same length"):
    synthetic.render("a", p)
