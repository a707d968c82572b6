"""Losses against float64 numpy references and closed-form cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxswap.configs import default
from jaxswap import losses


def _gauss(size=11, sigma=1.5):
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-0.5 * (x / sigma) ** 2)
  return g / g.sum()


def _blur_ref(z, size=11, sigma=1.5):
  """Valid separable Gaussian correlation of (B, H, W, C) in float64."""
  g = _gauss(size, sigma)
  z = np.lib.stride_tricks.sliding_window_view(z, size, axis=1) @ g
  return np.lib.stride_tricks.sliding_window_view(z, size, axis=2) @ g


def _ssim_ref_terms(a, b, size=11, sigma=1.5, k1=0.01, k2=0.03):
  """Per-image, per-channel (B, C) mean SSIM and contrast-structure, straight from the paper."""
  a, b = np.float64(a), np.float64(b)
  mu_a, mu_b = _blur_ref(a, size, sigma), _blur_ref(b, size, sigma)
  var_a = _blur_ref(a * a, size, sigma) - mu_a**2
  var_b = _blur_ref(b * b, size, sigma) - mu_b**2
  cov = _blur_ref(a * b, size, sigma) - mu_a * mu_b
  c1, c2 = k1**2, k2**2
  cs = (2 * cov + c2) / (var_a + var_b + c2)
  lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
  return (lum * cs).mean(axis=(1, 2)), cs.mean(axis=(1, 2))


def _ms_ssim_ref(a, b, weights, size=11):
  a, b = np.float64(a), np.float64(b)
  vals = []
  for i in range(len(weights)):
    if i:
      a, b = (x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, -1).mean((2, 4))
              for x in (a, b))
    s, cs = _ssim_ref_terms(a, b, size)
    vals.append(s if i == len(weights) - 1 else cs)
  out = np.prod([np.maximum(v, 0) ** w for v, w in zip(vals, weights)], axis=0)
  return out.mean(-1)


def _images(seed, shape=(3, 32, 32, 3), noise=0.1):
  """Smooth-ish images and a noisy copy, so SSIM lands mid-range rather than near 0."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 1, shape)
  base = (base + np.roll(base, 1, 1) + np.roll(base, 1, 2)) / 3
  other = np.clip(base + noise * rng.standard_normal(shape), 0, 1)
  return np.float32(base), np.float32(other)


def test_ssim_of_image_with_itself_is_one():
  a, _ = _images(0)
  np.testing.assert_allclose(losses.ssim(a, a), 1.0, atol=1e-6)


def test_ssim_matches_float64_reference():
  a, b = _images(1)
  ref, _ = _ssim_ref_terms(a, b)
  got = losses.ssim(a, b)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, ref.mean(-1), atol=1e-5)
  assert 0.2 < ref.mean() < 0.95  # A mid-range case, not a trivial 0 or 1.
  # Independent uniform noise: SSIM near 0, still matching.
  rng = np.random.default_rng(2)
  u, v = np.float32(rng.uniform(size=(2, 32, 32, 3))), np.float32(rng.uniform(size=(2, 32, 32, 3)))
  np.testing.assert_allclose(losses.ssim(u, v), _ssim_ref_terms(u, v)[0].mean(-1), atol=1e-5)


def test_ssim_agrees_with_dm_pix_default_filter():
  import dm_pix as pix
  a, b = _images(3)
  np.testing.assert_allclose(losses.ssim(a, b), pix.ssim(a, b), atol=1e-6)


@pytest.mark.parametrize("method", losses.BLUR_METHODS)
def test_both_blur_forms_match_the_float64_blur_and_each_others_gradient(method):
  a, b = _images(5, shape=(2, 24, 20, 3))
  blur = losses.gaussian_filter(11, 1.5, method)
  np.testing.assert_allclose(blur(a), _blur_ref(a), atol=1e-6)
  grad = lambda m: jax.grad(  # noqa: E731
      lambda x: jnp.sum(losses.gaussian_filter(11, 1.5, m)(x) * b[:, 5:19, 5:15]))(a)
  np.testing.assert_allclose(grad(method), grad("band" if method == "shift" else "shift"),
                             atol=1e-6)


def test_blur_form_follows_the_backend():
  assert losses.blur_method("cpu") == "band"
  assert losses.blur_method("gpu") == losses.blur_method("tpu") == "shift"
  with pytest.raises(ValueError, match="blur method 'fft'"):
    losses.gaussian_filter(11, 1.5, "fft")


def test_dssim_is_mean_of_half_one_minus_ssim():
  a, b = _images(4)
  ref = np.mean((1 - _ssim_ref_terms(a, b)[0].mean(-1)) / 2)
  np.testing.assert_allclose(losses.dssim(a, b), ref, atol=1e-6)


def test_ms_ssim_schedule_for_small_faces():
  w = losses.MS_SSIM_WEIGHTS
  size, weights = losses.ms_ssim_schedule(64, 11)
  assert size == 11
  np.testing.assert_allclose(weights, np.array(w[:3]) / sum(w[:3]))
  assert losses.ms_ssim_schedule(256, 11) == (11, pytest.approx(w))
  assert losses.ms_ssim_schedule(8, 11) == (8, (1.0,))


def test_ms_ssim_matches_reference_at_64px():
  a, b = _images(5, shape=(2, 64, 64, 3), noise=0.05)
  _, weights = losses.ms_ssim_schedule(64, 11)
  ref = _ms_ssim_ref(a, b, weights)
  np.testing.assert_allclose(losses.ms_ssim(a, b), ref, atol=2e-5)


def test_ms_ssim_identity_and_monotonic_in_noise():
  rng = np.random.default_rng(6)
  a, _ = _images(6, shape=(2, 64, 64, 3))
  np.testing.assert_allclose(losses.ms_ssim(a, a), 1.0, atol=1e-5)
  noise = rng.standard_normal(a.shape).astype(np.float32)
  scores = [np.asarray(losses.ms_ssim(a, np.clip(a + s * noise, 0, 1)))
            for s in (0.01, 0.03, 0.1, 0.3)]
  for hi, lo in zip(scores, scores[1:]):
    assert np.all(lo < hi)


def test_ms_ssim_tiny_image_falls_back_to_ssim():
  a, b = _images(7, shape=(2, 8, 8, 3))
  np.testing.assert_allclose(losses.ms_ssim(a, a), 1.0, atol=1e-5)
  ref = _ssim_ref_terms(a, b, size=8)[0]
  np.testing.assert_allclose(losses.ms_ssim(a, b), np.maximum(ref, 0).mean(-1), atol=1e-5)


def test_masked_mae_and_mse_by_hand():
  pred = np.zeros((1, 2, 2, 3), np.float32)
  target = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3) / 12
  w = np.array([1.0, 0.5, 0.0, 0.0], np.float32).reshape(1, 2, 2, 1)
  # Pixel (0,0): errors 0, 1, 2 (/12) weight 1; pixel (0,1): 3, 4, 5 weight 0.5. Like faceswap
  # and DeepFaceLab, the loss is that of the masked images: a mean over all 4 pixels x 3 channels.
  expected = (1.0 * (0 + 1 + 2) + 0.5 * (3 + 4 + 5)) / 12 / 12
  np.testing.assert_allclose(losses.mae(pred, target, w), expected, rtol=1e-6)
  expected_sq = (1.0 * (0 + 1 + 4) + 0.25 * (9 + 16 + 25)) / 144 / 12
  np.testing.assert_allclose(losses.mse(pred, target, w), expected_sq, rtol=1e-6)
  np.testing.assert_allclose(losses.mae(pred, target), target.mean(), rtol=1e-6)
  assert float(losses.mae(pred, target, np.zeros_like(w))) == 0.0


def _loss_cfg(**kw):
  cfg = default.get_config().loss
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def test_reconstruction_loss_combines_configured_weights():
  pred, target = _images(8, shape=(2, 64, 64, 3))
  cfg = _loss_cfg(mae=2.0, mse=3.0, dssim=5.0, ms_ssim=7.0)
  total, terms = losses.reconstruction_loss(pred, target, cfg)
  assert set(terms) == {"mae", "mse", "dssim", "ms_ssim"}
  d = np.float64(pred) - target
  ssim_ref = _ssim_ref_terms(pred, target)[0].mean(-1)
  _, weights = losses.ms_ssim_schedule(64, 11)
  expected = {
      "mae": np.abs(d).mean(),
      "mse": (d**2).mean(),
      "dssim": np.mean((1 - ssim_ref) / 2),
      "ms_ssim": 1 - _ms_ssim_ref(pred, target, weights).mean(),
  }
  for k, v in expected.items():
    np.testing.assert_allclose(terms[k], v, atol=2e-5, err_msg=k)
  want = 2 * expected["mae"] + 3 * expected["mse"] + 5 * expected["dssim"] + 7 * expected["ms_ssim"]
  np.testing.assert_allclose(total, want, rtol=1e-5)


def test_reconstruction_loss_mask_priority_and_mask_terms():
  pred, target = _images(9, shape=(2, 32, 32, 3))
  rng = np.random.default_rng(9)
  mask = np.float32(rng.uniform(size=(2, 32, 32, 1)) > 0.4)
  priority = np.float32(rng.uniform(size=(2, 32, 32, 1)) > 0.8)
  pred_mask = np.float32(rng.uniform(size=(2, 32, 32, 1)))
  cfg = _loss_cfg(mae=1.5, mse=0.5, dssim=2.0, masked=True, eye_mouth_weight=3.0, mask=4.0)
  total, terms = losses.reconstruction_loss(pred, target, cfg, mask=mask, priority=priority,
                                            pred_mask=pred_mask)
  assert set(terms) == {"mae", "mse", "dssim", "priority_mae", "priority_mse", "mask"}
  d = np.float64(pred) - target

  def wmean(e, w):  # binary masks: mean over all pixels of the masked error
    return (w * e).mean()

  np.testing.assert_allclose(terms["mae"], wmean(np.abs(d), mask), rtol=1e-5)
  np.testing.assert_allclose(terms["mse"], wmean(d**2, mask), rtol=1e-5)
  np.testing.assert_allclose(terms["priority_mae"], wmean(np.abs(d), priority), rtol=1e-5)
  np.testing.assert_allclose(terms["priority_mse"], wmean(d**2, priority), rtol=1e-5)
  ssim_ref = _ssim_ref_terms(pred * mask, target * mask)[0].mean(-1)
  np.testing.assert_allclose(terms["dssim"], np.mean((1 - ssim_ref) / 2), atol=1e-5)
  np.testing.assert_allclose(terms["mask"], ((np.float64(pred_mask) - mask) ** 2).mean(),
                             rtol=1e-5)
  want = (1.5 * terms["mae"] + 0.5 * terms["mse"] + 2.0 * terms["dssim"]
          + 3.0 * (1.5 * terms["priority_mae"] + 0.5 * terms["priority_mse"])
          + 4.0 * terms["mask"])
  np.testing.assert_allclose(total, want, rtol=1e-5)

  # Without the masked flag the mask only feeds the mask term.
  cfg.masked = False
  _, plain = losses.reconstruction_loss(pred, target, cfg, mask=mask, pred_mask=pred_mask)
  np.testing.assert_allclose(plain["mae"], np.abs(d).mean(), rtol=1e-5)
  assert "priority_mae" not in plain


def test_priority_falls_back_to_mae_when_no_pixel_term():
  pred, target = _images(10, shape=(1, 16, 16, 3))
  priority = np.ones((1, 16, 16, 1), np.float32)
  cfg = _loss_cfg(mae=0.0, mse=0.0, ms_ssim=1.0, eye_mouth_weight=2.0)
  total, terms = losses.reconstruction_loss(pred, target, cfg, priority=priority)
  assert set(terms) == {"ms_ssim", "priority_mae"}
  np.testing.assert_allclose(terms["priority_mae"], np.abs(np.float64(pred) - target).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(total, terms["ms_ssim"] + 2.0 * terms["priority_mae"], rtol=1e-6)


def test_eye_mouth_mae_is_deepfacelabs_priority_term():
  # DeepFaceLab's SAEHD: 10 x DSSIM + 10 x MSE, and eyes_mouth_prio adds 300 x MAE on the
  # eye/mouth pixels (a mean over all pixels), whatever the image loss is made of.
  pred, target = _images(12, shape=(2, 32, 32, 3))
  priority = np.zeros((2, 32, 32, 1), np.float32)
  priority[:, 10:16, 8:24] = 1.0
  cfg = _loss_cfg(mae=0.0, mse=10.0, dssim=10.0, eye_mouth_weight=300.0, eye_mouth_loss="mae")
  total, terms = losses.reconstruction_loss(pred, target, cfg, priority=priority)
  assert set(terms) == {"mse", "dssim", "priority_mae"}
  d = np.float64(pred) - target
  np.testing.assert_allclose(terms["priority_mae"], (priority * np.abs(d)).mean(), rtol=1e-5)
  np.testing.assert_allclose(total, 10 * terms["mse"] + 10 * terms["dssim"]
                             + 300 * terms["priority_mae"], rtol=1e-5)
  cfg.eye_mouth_loss = "pixel"  # faceswap's meaning: the image loss's own MSE, multiplied
  _, pixel = losses.reconstruction_loss(pred, target, cfg, priority=priority)
  assert set(pixel) == {"mse", "dssim", "priority_mse"}


def test_bf16_inputs_jit_and_finite_gradients():
  pred, target = _images(11, shape=(2, 64, 64, 3))
  mask = np.ones((2, 64, 64, 1), np.float32)
  cfg = _loss_cfg(mae=1.0, mse=1.0, dssim=1.0, ms_ssim=1.0, mask=1.0)

  @jax.jit
  def loss(p):
    return losses.reconstruction_loss(p, target, cfg, mask=mask, pred_mask=mask * 0.5)[0]

  value = loss(jnp.asarray(pred, jnp.bfloat16))
  assert value.dtype == jnp.float32
  ref = loss(jnp.asarray(jnp.asarray(pred, jnp.bfloat16), jnp.float32))
  np.testing.assert_allclose(value, ref, rtol=1e-6)
  for p in (pred, target):  # Identical images: the MS-SSIM powers sit at their kink.
    g = jax.grad(loss)(jnp.asarray(p))
    assert np.all(np.isfinite(g))


def test_laplacian_term_prices_blur_that_pixel_losses_barely_see():
  import cv2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  sharp = rng.uniform(0.2, 0.8, size=(2, 32, 32, 3)).astype(np.float32)
  blurred = np.stack([cv2.GaussianBlur(i, (0, 0), 1.0) for i in sharp])
  # By hand on one interior pixel: 4 * centre - its 4 neighbours.
  lap = np.asarray(losses.laplacian(sharp))
  want = 4 * sharp[0, 5, 7] - sharp[0, 4, 7] - sharp[0, 6, 7] - sharp[0, 5, 6] - sharp[0, 5, 8]
  np.testing.assert_allclose(lap[0, 4, 6], want, rtol=1e-5)
  assert float(losses.laplacian_loss(sharp, sharp)) == 0.0
  edge = float(losses.laplacian_loss(blurred, sharp))
  assert edge > 3 * float(losses.mae(blurred, sharp))  # blur costs far more here
  # A constant shift has no edges: the term ignores it.
  assert float(losses.laplacian_loss(sharp + 0.1, sharp)) < 1e-5
  cfg = _loss_cfg(mae=0.0, laplacian=2.0)
  total, terms = losses.reconstruction_loss(blurred, sharp, cfg)
  assert set(terms) == {"laplacian"}
  np.testing.assert_allclose(total, 2.0 * edge, rtol=1e-5)
