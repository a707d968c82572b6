"""Reconstruction losses: pixel (MAE, MSE), structural (DSSIM, MS-SSIM), mask and eye/mouth terms.

All maths runs in float32 whatever the compute dtype of the network (bf16 predictions are cast
first), so loss values and their gradients do not depend on the activation precision.

The Gaussian window is separable and feeds `dm_pix.ssim` through its `filter_fn` hook, in one of
two forms with the same "valid" result (`blur_method`). On a CPU: two banded matrix products
(rows, then columns), ~18x faster for forward + backward than dm-pix's default vmapped 1-D
convolutions and 13-40x faster than shifted sums there (256 to 64 px). On GPUs/TPUs: the
shifted, weighted sums of the 11 taps, elementwise work XLA fuses into a few memory-bound
kernels, where the band matrices (mostly zeros) would cost ~23x the multiply-adds at 256 px, in
full float32 (matrix units are kept off for SSIM): liae256's step on an H200, 78.3 -> 73.8 ms.
"""

from collections.abc import Callable, Sequence
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-8
# Per-scale terms are floored here before the fractional powers of MS-SSIM: a zero would give
# an infinite gradient (tf.image.ssim_multiscale uses relu, which can produce NaN gradients).
_MS_SSIM_FLOOR = 1e-6
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003.
# config.loss.eye_mouth_loss: the image loss's own MAE/MSE terms, or a plain MAE (DeepFaceLab).
EYE_MOUTH_LOSSES = ("pixel", "mae")


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def mae(pred: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Mean absolute error; with a (B, H, W, 1) weight, that of the weighted images (see below)."""
  return jnp.mean(jnp.abs(_weighted(pred, weight) - _weighted(target, weight)))


def mse(pred: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Mean squared error; with a (B, H, W, 1) weight, that of the weighted images (see below)."""
  return jnp.mean(jnp.square(_weighted(pred, weight) - _weighted(target, weight)))


def _weighted(x: jax.Array, weight: jax.Array | None) -> jax.Array:
  """x * weight, as faceswap and DeepFaceLab mask both images before a loss.

  The loss of the masked images is then a mean over ALL pixels, not over the mask's area: a
  region covering a tenth of the face contributes a tenth as much as the whole face at the same
  weight. That is the meaning of DeepFaceLab's eyes/mouth priority and faceswap's eye and mouth
  multipliers, so their numbers carry over.
  """
  x = _f32(x)
  if weight is None:
    return x
  return x * jnp.broadcast_to(_f32(weight), x.shape[:-1] + (1,))


def _gaussian(filter_size: int, filter_sigma: float) -> np.ndarray:
  x = np.arange(filter_size, dtype=np.float64) - (filter_size - 1) / 2.0
  g = np.exp(-0.5 * (x / filter_sigma) ** 2)
  return g / g.sum()


def _band(n: int, taps: np.ndarray) -> np.ndarray:
  """(n - k + 1, n) matrix whose product with a length-n signal is its valid convolution."""
  k = taps.shape[0]
  m = np.zeros((n - k + 1, n), np.float32)
  for i in range(n - k + 1):
    m[i, i:i + k] = taps
  return m


BLUR_METHODS = ("band", "shift")


def blur_method(backend: str) -> str:
  """The faster form of the SSIM window on a backend: "band" on CPUs, "shift" elsewhere."""
  return "band" if backend == "cpu" else "shift"


def gaussian_filter(filter_size: int, filter_sigma: float,
                    method: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """Separable "valid" Gaussian blur of (B, H, W, C) arrays, as dm_pix.ssim's filter_fn.

  method: "band" (banded matrix products), "shift" (weighted sums of shifted slices) or None,
  the default backend's `blur_method`. Both give the same result to float32 rounding.
  """
  taps = _gaussian(filter_size, filter_sigma)
  method = method or blur_method(jax.default_backend())
  if method not in BLUR_METHODS:
    raise ValueError(f"blur method {method!r} is not one of {BLUR_METHODS}")

  def shifted_sum(z: jax.Array, axis: int) -> jax.Array:
    n = z.shape[axis] - filter_size + 1
    out = None
    for i, t in enumerate(taps):
      term = jnp.float32(t) * jax.lax.slice_in_dim(z, i, i + n, axis=axis)
      out = term if out is None else out + term
    return out

  def blur(z: jax.Array) -> jax.Array:
    if method == "shift":
      return shifted_sum(shifted_sum(z, z.ndim - 3), z.ndim - 2)
    rows = jnp.asarray(_band(z.shape[-3], taps))
    cols = jnp.asarray(_band(z.shape[-2], taps))
    hi = jax.lax.Precision.HIGHEST  # Keep GPUs off TF32: SSIM subtracts nearly equal moments.
    z = jnp.einsum("oh,...hwc->...owc", rows, z, precision=hi)
    return jnp.einsum("pw,...owc->...opc", cols, z, precision=hi)

  return blur


def _check_size(a: jax.Array, filter_size: int) -> None:
  if min(a.shape[-3], a.shape[-2]) < filter_size:
    raise ValueError(
        f"SSIM window {filter_size} is larger than the {a.shape[-3]}x{a.shape[-2]} image"
    )


def ssim(a: jax.Array, b: jax.Array, max_val: float = 1.0, filter_size: int = 11,
         filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Per-image SSIM (B,) of (B, H, W, C) images: Gaussian window, valid filtering, channel mean."""
  a, b = _f32(a), _f32(b)
  _check_size(a, filter_size)
  return pix.ssim(a, b, max_val=max_val, filter_size=filter_size, filter_sigma=filter_sigma,
                  k1=k1, k2=k2, filter_fn=gaussian_filter(filter_size, filter_sigma))


def dssim(a: jax.Array, b: jax.Array, **kw: Any) -> jax.Array:
  """Structural dissimilarity (1 - SSIM) / 2, averaged over the batch."""
  return jnp.mean((1.0 - ssim(a, b, **kw)) / 2.0)


def _ssim_and_cs(a: jax.Array, b: jax.Array, blur: Callable[[jax.Array], jax.Array],
                 max_val: float, k1: float, k2: float) -> tuple[jax.Array, jax.Array]:
  """(B, C) spatial means of the SSIM map and of its contrast-structure factor.

  Same moments and clipping as dm_pix.ssim, which does not expose the cs factor MS-SSIM needs.
  """
  mu0, mu1 = blur(a), blur(b)
  mu00, mu11, mu01 = mu0 * mu0, mu1 * mu1, mu0 * mu1
  eps = jnp.finfo(jnp.float32).eps ** 2
  s00 = jnp.maximum(eps, blur(a * a) - mu00)
  s11 = jnp.maximum(eps, blur(b * b) - mu11)
  s01 = blur(a * b) - mu01
  s01 = jnp.sign(s01) * jnp.minimum(jnp.sqrt(s00 * s11), jnp.abs(s01))
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  cs = (2.0 * s01 + c2) / (s00 + s11 + c2)
  lum = (2.0 * mu01 + c1) / (mu00 + mu11 + c1)
  return jnp.mean(lum * cs, axis=(-3, -2)), jnp.mean(cs, axis=(-3, -2))


def _downsample(x: jax.Array) -> jax.Array:
  """2x2 average pool; an odd edge is replicated first, as tf.image.ssim_multiscale does."""
  h, w = x.shape[-3], x.shape[-2]
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim_schedule(size: int, filter_size: int,
                     weights: Sequence[float] = MS_SSIM_WEIGHTS) -> tuple[int, tuple[float, ...]]:
  """(filter_size, per-scale weights) actually used for an image whose short side is `size`.

  Small faces cannot hold every scale: only scales whose side (size // 2**i) is at least the
  window are kept, and their weights are renormalised to sum to 1 (DeepFaceLab's rule). At 64 px
  with an 11-tap window that is 3 scales (64, 32, 16). If even the full image is smaller than the
  window, the window shrinks to the image and a single scale remains (plain SSIM).
  """
  kept = [w for i, w in enumerate(weights) if size // 2**i >= filter_size]
  if not kept:
    return size, (1.0,)
  if len(kept) == len(weights):
    return filter_size, tuple(weights)  # Untouched: the published weights sum to 1.0001.
  total = sum(kept)
  return filter_size, tuple(w / total for w in kept)


def ms_ssim(a: jax.Array, b: jax.Array, max_val: float = 1.0, filter_size: int = 11,
            filter_sigma: float = 1.5, weights: Sequence[float] = MS_SSIM_WEIGHTS,
            k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Per-image multi-scale SSIM (B,) (Wang, Simoncelli & Bovik 2003).

  prod_i cs_i ** w_i over the finer scales times ssim ** w_last at the coarsest, per channel,
  then averaged over channels, as tf.image.ssim_multiscale. See `ms_ssim_schedule` for how the
  scales and window adapt to small images.
  """
  a, b = _f32(a), _f32(b)
  filter_size, scale_weights = ms_ssim_schedule(min(a.shape[-3], a.shape[-2]), filter_size,
                                                weights)
  blur = gaussian_filter(filter_size, filter_sigma)
  factors = []
  for i in range(len(scale_weights)):
    if i:
      a, b = _downsample(a), _downsample(b)
    ssim_c, cs_c = _ssim_and_cs(a, b, blur, max_val, k1, k2)
    factors.append(ssim_c if i == len(scale_weights) - 1 else cs_c)
  stacked = jnp.maximum(jnp.stack(factors), _MS_SSIM_FLOOR)  # (scales, B, C)
  powers = jnp.asarray(scale_weights, jnp.float32)[:, None, None]
  return jnp.mean(jnp.prod(stacked**powers, axis=0), axis=-1)


def laplacian(x: jax.Array) -> jax.Array:
  """4-neighbour Laplacian of (B, H, W, C) images over the interior ((H-2) x (W-2)): the edges."""
  x = _f32(x)
  c = x[:, 1:-1, 1:-1]
  return 4.0 * c - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]


def laplacian_loss(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute difference of the Laplacians: penalises missing edges and texture.

  Pixel and SSIM losses are satisfied on average by a slightly blurred face (blur costs little
  where the face is smooth); this term puts a price on the lost high frequencies directly, an
  offline alternative to an adversarial sharpness term.
  """
  return jnp.mean(jnp.abs(laplacian(a) - laplacian(b)))


def _pixel_terms(pred: jax.Array, target: jax.Array, cfg: Any, weight: jax.Array | None,
                 prefix: str = "") -> dict[str, tuple[float, jax.Array]]:
  terms = {}
  if cfg.mae > 0:
    terms[prefix + "mae"] = (cfg.mae, mae(pred, target, weight))
  if cfg.mse > 0:
    terms[prefix + "mse"] = (cfg.mse, mse(pred, target, weight))
  return terms


def reconstruction_loss(
    pred: jax.Array,
    target: jax.Array,
    cfg: Any,
    mask: jax.Array | None = None,
    priority: jax.Array | None = None,
    pred_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One decoder's loss (cfg = config.loss) and its individual terms by name.

  total = mae * MAE + mse * MSE + dssim * DSSIM + ms_ssim * (1 - MS-SSIM)
        + laplacian * mean|Laplacian(pred) - Laplacian(target)|
        + eye_mouth_weight * (mae * MAE + mse * MSE, weighted by `priority`)
          (eye_mouth_loss "pixel"; with "mae": eye_mouth_weight * MAE weighted by `priority`)
        + mask * MSE(pred_mask, mask).
  With cfg.masked and a mask, every term compares the masked images (a mean over all pixels, as
  the references do); the priority terms compare the priority-masked images. If neither MAE nor
  MSE is configured, the priority term uses plain MAE so that eye_mouth_weight still acts.
  Zero-weight terms are not computed.
  """
  pred, target = _f32(pred), _f32(target)
  use_mask = bool(cfg.masked) and mask is not None
  weight = _f32(mask) if use_mask else None

  terms = _pixel_terms(pred, target, cfg, weight)
  if cfg.dssim > 0 or cfg.ms_ssim > 0:
    a, b = (pred * weight, target * weight) if use_mask else (pred, target)
    if cfg.dssim > 0:
      terms["dssim"] = (cfg.dssim, dssim(a, b))
    if cfg.ms_ssim > 0:
      terms["ms_ssim"] = (cfg.ms_ssim, 1.0 - jnp.mean(ms_ssim(a, b)))
  if cfg.laplacian > 0:
    a, b = (pred * weight, target * weight) if use_mask else (pred, target)
    terms["laplacian"] = (cfg.laplacian, laplacian_loss(a, b))
  if cfg.eye_mouth_weight > 0 and priority is not None:
    prio = {}
    if cfg.eye_mouth_loss == "pixel":
      prio = _pixel_terms(pred, target, cfg, _f32(priority), prefix="priority_")
    if not prio:
      prio = {"priority_mae": (1.0, mae(pred, target, _f32(priority)))}
    terms.update({k: (cfg.eye_mouth_weight * w, v) for k, (w, v) in prio.items()})
  if cfg.mask > 0 and pred_mask is not None and mask is not None:
    terms["mask"] = (cfg.mask, mse(pred_mask, mask))

  total = jnp.zeros((), jnp.float32)
  for w, v in terms.values():
    total = total + jnp.float32(w) * v
  return total, {k: v.astype(jnp.float32) for k, (_, v) in terms.items()}
