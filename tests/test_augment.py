"""Augmentation geometry and colour against closed-form cases and dm-pix references."""

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from jaxswap.configs import default
from jaxswap import augment as aug


def _smooth(batch=2, size=32, seed=0):
  """Smooth, mid-range colour images: sums of random low-frequency sinusoids."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.zeros((batch, size, size, 3))
  for _ in range(3):
    fx, fy, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.3, (batch, 1, 1, 3))
    out += np.sin(2 * np.pi * (fx * xx + fy * yy)[None, :, :, None] + ph)
  return np.float32(0.5 + 0.12 * out)


def _cfg(**kw):
  cfg = default.get_config().augment
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def _rotation_matrix(deg, size):
  """Output-to-input rotation about the centre, written out by hand."""
  t, c = np.deg2rad(deg), (size - 1) / 2
  r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
  m = np.eye(3)
  m[:2, :2], m[:2, 2] = r, c - r @ [c, c]
  return np.float32(m)


def test_identity_affine_returns_input():
  x = _smooth()
  m = aug.random_affine(jax.random.key(0), 2, 32, 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(m, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-6)
  np.testing.assert_allclose(aug.apply_affine(x, m), x, atol=1e-6)


def test_rotation_90_moves_a_bright_point():
  size = 32
  x = np.zeros((1, size, size, 1), np.float32)
  x[0, 3, 10, 0] = 1.0  # Row y=3, column x=10.
  out = np.asarray(aug.apply_affine(x, _rotation_matrix(90, size)[None]))
  # in = c + R90 (out - c): in_x = c - (out_y - c), in_y = c + (out_x - c), c = 15.5,
  # so input (10, 3) comes from output x = 3, y = 21.
  np.testing.assert_allclose(out[0, 21, 3, 0], 1.0, atol=1e-5)
  np.testing.assert_allclose(out.sum(), 1.0, atol=1e-5)


def test_rotation_10_moves_centroid_where_expected():
  size, deg = 64, 10.0
  x = np.zeros((1, size, size, 1), np.float32)
  yy, xx = np.mgrid[0:size, 0:size]
  x[0, :, :, 0] = np.exp(-((xx - 45.0) ** 2 + (yy - 20.0) ** 2) / (2 * 2.0**2))  # Blob at (45, 20).
  out = np.asarray(aug.apply_affine(x, _rotation_matrix(deg, size)[None]))[0, :, :, 0]
  # The blob's centre p_in maps to p_out = c + R(-theta) (p_in - c).
  t, c = np.deg2rad(deg), (size - 1) / 2
  r_inv = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
  want = c + r_inv @ (np.array([45.0, 20.0]) - c)
  got = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
  np.testing.assert_allclose(got, want, atol=0.05)


def test_flip_mirrors_horizontally():
  x = _smooth(seed=1)
  m = aug.random_affine(jax.random.key(1), 2, 32, 0.0, 0.0, 0.0, 1.0)
  np.testing.assert_allclose(aug.apply_affine(x, m), x[:, :, ::-1], atol=1e-6)


def test_random_affine_respects_ranges():
  size, rot, zoom, shift = 64, 10.0, 0.05, 0.05
  m = np.asarray(aug.random_affine(jax.random.key(2), 256, size, rot, zoom, shift, 0.5))
  np.testing.assert_allclose(m[:, 2], np.broadcast_to([0, 0, 1], (256, 3)), atol=0)
  a = m[:, :2, :2]
  sv = np.linalg.svd(a, compute_uv=False)
  np.testing.assert_allclose(sv[:, 0], sv[:, 1], rtol=1e-5)  # Similarity: no shear.
  assert np.all(sv[:, 0] >= 1 / (1 + zoom) - 1e-5) and np.all(sv[:, 0] <= 1 / (1 - zoom) + 1e-5)
  det = np.linalg.det(a)
  flips = det < 0
  assert 0.35 < flips.mean() < 0.65
  # The flip negates the first column (A = R / s @ diag(-1, 1)); undo it, read the angle.
  a_unflipped = a.copy()
  a_unflipped[flips, :, 0] *= -1
  angle = np.rad2deg(np.arctan2(a_unflipped[:, 1, 0], a_unflipped[:, 0, 0]))
  assert np.all(np.abs(angle) <= rot + 1e-4) and np.abs(angle).max() > rot / 2
  c = (size - 1) / 2
  centre_moves = m[:, :2, :2] @ [c, c] + m[:, :2, 2] - c
  assert np.all(np.abs(centre_moves) <= shift * size + 1e-4)


def test_zero_noise_warp_is_identity():
  coords = aug.random_warp_coords(jax.random.key(3), 2, 32, 5, 0.0)
  ys, xs = np.mgrid[0:32, 0:32]
  np.testing.assert_array_equal(coords, np.broadcast_to(np.stack([xs, ys], -1), (2, 32, 32, 2)))
  x = _smooth(seed=3)
  np.testing.assert_array_equal(aug.warp(x, coords), x)


def test_warp_field_is_bilinear_lattice_with_requested_noise():
  size, grid, sigma = 33, 5, 0.05  # Control points fall on pixels 0, 8, 16, 24, 32.
  coords = np.asarray(aug.random_warp_coords(jax.random.key(4), 64, size, grid, sigma))
  ys, xs = np.mgrid[0:size, 0:size]
  disp = coords - np.stack([xs, ys], -1)
  # Linear between control points along a lattice row and column.
  np.testing.assert_allclose(disp[:, 8, 4], (disp[:, 8, 0] + disp[:, 8, 8]) / 2, atol=1e-5)
  np.testing.assert_allclose(disp[:, 6, 16], (disp[:, 0, 16] * 2 + disp[:, 8, 16] * 6) / 8,
                             atol=1e-5)
  control = disp[:, ::8, ::8]  # 64 x 5 x 5 x 2 independent draws.
  np.testing.assert_allclose(control.std(), sigma * size, rtol=0.08)
  assert abs(control.mean()) < 0.1 * sigma * size


def test_warp_matches_dm_pix_interpolation_with_edge_clamp():
  rng = np.random.default_rng(5)
  x = np.float32(rng.uniform(size=(2, 16, 16, 3)))
  coords = np.float32(rng.uniform(-4, 20, size=(2, 16, 16, 2)))
  got = np.asarray(aug.warp(x, coords))
  for b in range(2):
    pts = np.stack([np.clip(coords[b, ..., 1], 0, 15), np.clip(coords[b, ..., 0], 0, 15)])
    for ch in range(3):
      want = pix.flat_nd_linear_interpolate(x[b, ..., ch], pts)
      np.testing.assert_allclose(got[b, ..., ch], want, atol=1e-6)


def test_noisy_warp_changes_image_but_keeps_mean():
  x = _smooth(batch=4, size=64, seed=6)
  coords = aug.random_warp_coords(jax.random.key(6), 4, 64, 5, 5.0 / 256.0)
  out = np.asarray(aug.warp(x, coords))
  assert np.abs(out - x).mean() > 0.005
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=0.01)


def test_color_jitter_closed_forms():
  rng = jax.random.key(7)
  x = _smooth(batch=4, seed=7)  # Values well inside (0, 1): no clipping below.
  b = np.asarray(aug.color_jitter(rng, x, 0.1, 0.0, 0.0, 0.0))
  delta = (b - x).reshape(4, -1)
  np.testing.assert_allclose(delta, delta[:, :1].repeat(delta.shape[1], 1), atol=1e-6)
  assert np.all(np.abs(delta) <= 0.1 + 1e-6) and np.ptp(delta[:, 0]) > 0
  c = np.asarray(aug.color_jitter(rng, x, 0.0, 0.3, 0.0, 0.0))
  np.testing.assert_allclose(c.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-6)
  gray = np.repeat(x[..., :1], 3, axis=-1)  # Saturation 0: hue and saturation leave it alone.
  np.testing.assert_allclose(aug.color_jitter(rng, gray, 0.0, 0.0, 0.5, 0.2), gray, atol=1e-6)
  h = np.asarray(aug.color_jitter(rng, x, 0.0, 0.0, 0.0, 0.1))
  assert np.abs(h - x).mean() > 1e-3 and h.min() >= 0 and h.max() <= 1


def test_augment_ranges_and_unwarped_targets():
  x = np.clip(_smooth(batch=3, seed=8) * 1.8 - 0.4, 0, 1)  # Saturated regions too.
  mask = np.float32(x[..., :1] > 0.5)
  cfg = _cfg(brightness=0.3, contrast=0.3)
  out = aug.augment(jax.random.key(8), x, mask, cfg)
  for a in (out.inputs, out.targets, out.extras):
    assert a.dtype == jnp.float32 and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  assert out.extras.shape == (3, 32, 32, 1)
  assert np.abs(np.asarray(out.inputs) - np.asarray(out.targets)).mean() > 1e-3
  cfg.warp = False
  nowarp = aug.augment(jax.random.key(8), x, mask, cfg)
  np.testing.assert_array_equal(nowarp.inputs, nowarp.targets)
  # Targets do not depend on the warp setting: same rng, same affine and colour.
  np.testing.assert_allclose(nowarp.targets, out.targets, atol=1e-6)
  np.testing.assert_allclose(nowarp.extras, out.extras, atol=1e-6)


def test_composed_warp_with_zero_noise_equals_targets():
  x = _smooth(batch=3, seed=9)
  out = aug.augment(jax.random.key(9), x, None, _cfg(warp=True, warp_sigma=0.0))
  assert out.extras is None
  np.testing.assert_allclose(out.inputs, out.targets, atol=1e-5)
  assert np.abs(np.asarray(out.targets) - x).mean() > 1e-3  # The affine and colour did act.


def test_extras_follow_target_geometry_without_colour():
  x = _smooth(batch=3, seed=10)
  cfg = _cfg(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, rotation_deg=30.0)
  out = aug.augment(jax.random.key(10), x, x[..., :2], cfg)
  np.testing.assert_allclose(out.extras, np.asarray(out.targets)[..., :2], atol=1e-6)
  m = aug.random_affine(jax.random.split(jax.random.key(10), 3)[0], 3, 32, 30.0, cfg.zoom,
                        cfg.shift, cfg.flip_prob)
  np.testing.assert_allclose(out.targets, aug.apply_affine(x, m), atol=1e-6)


def test_augment_jits_is_deterministic_and_accepts_uint8():
  x8 = np.uint8(np.round(_smooth(batch=2, seed=11) * 255))
  cfg = _cfg()
  f = jax.jit(lambda r, x: aug.augment(r, x, None, cfg))
  a, b = f(jax.random.key(11), x8), f(jax.random.key(11), x8)
  np.testing.assert_array_equal(a.inputs, b.inputs)
  np.testing.assert_array_equal(a.targets, b.targets)
  c = f(jax.random.key(12), x8)
  assert np.abs(np.asarray(a.inputs) - np.asarray(c.inputs)).mean() > 1e-3
  from_float = aug.augment(jax.random.key(11), np.float32(x8) / 255, None, cfg)
  np.testing.assert_allclose(a.inputs, from_float.inputs, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Training-time colour transfer (ct_mode rct)
# --------------------------------------------------------------------------------------------


def test_lab_matches_opencv_and_round_trips():
  import cv2  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  lab = np.asarray(aug.rgb_to_lab(x))
  ref = np.stack([cv2.cvtColor(i, cv2.COLOR_RGB2LAB) for i in x])
  np.testing.assert_allclose(lab, ref, atol=0.5)  # OpenCV's own tables differ by < 0.3
  np.testing.assert_allclose(np.asarray(aug.lab_to_rgb(lab)), x, atol=1e-4)


def _lab_moments(images, mask):
  lab = np.asarray(aug.rgb_to_lab(images), np.float64)
  w = mask[..., 0] > 0.5
  return (np.stack([lab[i][w[i]].mean(0) for i in range(len(lab))]),
          np.stack([lab[i][w[i]].std(0) for i in range(len(lab))]))


def test_reinhard_transfer_moves_face_statistics_to_the_reference():
  rng = np.random.default_rng(1)
  # Mid-range colours so that clipping to [0, 1] does not bend the statistics.
  images = (0.35 + 0.2 * rng.uniform(size=(3, 16, 16, 3))).astype(np.float32)
  refs = (0.25 + 0.3 * rng.uniform(size=(3, 16, 16, 3)) * [1.0, 0.7, 0.5]).astype(np.float32)
  mask = np.zeros((3, 16, 16, 1), np.float32)
  mask[:, 4:12, 4:12] = 1
  out = np.asarray(aug.reinhard_transfer(images, refs, mask, mask))
  mu_out, sd_out = _lab_moments(out, mask)
  mu_ref, sd_ref = _lab_moments(refs, mask)
  mu_in, _ = _lab_moments(images, mask)
  np.testing.assert_allclose(mu_out, mu_ref, atol=0.3)
  np.testing.assert_allclose(sd_out, sd_ref, rtol=0.05, atol=0.1)
  assert np.abs(mu_in - mu_ref).max() > 3  # they really moved
  # The whole image is recoloured with the face's statistics (background included).
  assert np.abs(out[:, 0, 0] - images[:, 0, 0]).max() > 1e-3


def test_train_step_recolours_a_toward_b_only_with_rct(monkeypatch):
  """With rct, A's training faces carry B's colours; B's faces are untouched."""
  from jaxswap import step  # pylint: disable=g-import-not-at-top
  from jaxswap.configs import tiny  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config()
  for k in ("rotation_deg", "zoom", "shift", "flip_prob", "brightness", "contrast",
            "saturation", "hue"):
    setattr(cfg.augment, k, 0.0)
  cfg.augment.warp = False
  n, s = 4, 16
  batch = {
      "image_a": np.full((n, s, s, 3), (200, 120, 90), np.uint8),  # warm, bright
      "image_b": np.full((n, s, s, 3), (60, 80, 140), np.uint8),  # cool, dark
      "mask_a": np.full((n, s, s, 1), 255, np.uint8),
      "mask_b": np.full((n, s, s, 1), 255, np.uint8),
      "priority_a": np.zeros((n, s, s, 1), np.uint8),
      "priority_b": np.zeros((n, s, s, 1), np.uint8),
  }
  rng = jax.random.PRNGKey(0)
  plain_a, plain_b = step._prepare(rng, batch, cfg)  # pylint: disable=protected-access
  cfg.augment.color_transfer = "rct"
  ct_a, ct_b = step._prepare(rng, batch, cfg)  # pylint: disable=protected-access
  np.testing.assert_allclose(plain_a.targets, batch["image_a"] / 255.0, atol=1e-6)
  np.testing.assert_allclose(ct_a.targets, batch["image_b"] / 255.0, atol=2e-3)
  np.testing.assert_allclose(ct_a.inputs, ct_a.targets, atol=1e-6)  # input and target alike
  np.testing.assert_array_equal(ct_b.targets, plain_b.targets)


def test_input_hsv_recolours_the_input_only():
  """DeepFaceLab's random_hsv_power: the network sees shifted colours, the target keeps them."""
  x = _smooth(batch=8, seed=12)
  cfg = _cfg(warp=False, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
  plain = aug.augment(jax.random.key(12), x, None, cfg)
  cfg.input_hsv = 0.6
  shifted = aug.augment(jax.random.key(12), x, None, cfg)
  np.testing.assert_array_equal(plain.inputs, plain.targets)
  np.testing.assert_allclose(shifted.targets, plain.targets, atol=1e-6)
  inputs, targets = np.asarray(shifted.inputs), np.asarray(shifted.targets)
  assert np.abs(inputs - targets).mean() > 0.01
  # Brightness moves by at most power / 2 (before clipping), per image.
  shift = np.abs(inputs.mean((1, 2, 3)) - targets.mean((1, 2, 3)))
  assert shift.max() <= 0.3 + 0.02, shift
  # Each image gets its own shift.
  assert np.std(inputs.mean((1, 2, 3)) - targets.mean((1, 2, 3))) > 0.01
