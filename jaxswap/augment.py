"""On-device training augmentation: random affine, flip, random warp, colour jitter.

Everything here is a pure, jit-able function of an rng key and a batch, so the train step can
draw its augmentation from `fold_in(rng, step)` and stay deterministic across restarts.

Coordinates: pixel centres sit at integer positions, x is the column and y the row, and the image
centre is ((W - 1) / 2, (H - 1) / 2). Sampling maps hold (x, y) in their last axis. Resampling is
bilinear with edge clamping (the border pixel is replicated, like OpenCV's BORDER_REPLICATE that
faceswap uses).
"""

from typing import Any, NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np


class Augmented(NamedTuple):
  """What one identity's decoder trains on."""

  inputs: jax.Array  # (B, H, W, 3) warped + affine + flip + colour: what the encoder sees.
  targets: jax.Array  # (B, H, W, 3) affine + flip + colour, not warped: what to reproduce.
  extras: jax.Array | None  # (B, H, W, K) masks with the targets' geometry only, or None.


class ColorParams(NamedTuple):
  """Per-image colour jitter draws, sampled apart from the ops that apply them."""

  brightness: jax.Array  # (B,) additive delta.
  contrast: jax.Array  # (B,) multiplicative factor.
  saturation: jax.Array  # (B,) multiplicative factor.
  hue: jax.Array  # (B,) additive hue shift, in turns.


def _to_float(images: jax.Array) -> jax.Array:
  """uint8 batches come straight from the host; scale them like the float path expects."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _pixel_grid(height: int, width: int) -> jax.Array:
  """(H, W, 2) identity sampling map in (x, y) order."""
  ys, xs = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  return jnp.stack([xs, ys], axis=-1)


def random_affine(
    rng: jax.Array,
    batch: int,
    size: int,
    rotation_deg: float,
    zoom: float,
    shift: float,
    flip_prob: float,
) -> jax.Array:
  """(B, 3, 3) matrices mapping output pixel (x, y, 1) to input pixel coordinates.

  in = c + R(theta) / s @ F @ (out - c) + t, with c the image centre, theta uniform in
  +-rotation_deg, s uniform in 1 +- zoom (s > 1 magnifies), t uniform in +-shift * size per axis
  and F = diag(-1, 1) with probability flip_prob (a horizontal mirror about the centre).
  """
  k_rot, k_zoom, k_shift, k_flip = jax.random.split(rng, 4)
  theta = jnp.deg2rad(
      jax.random.uniform(k_rot, (batch,), minval=-rotation_deg, maxval=rotation_deg)
  )
  scale = jax.random.uniform(k_zoom, (batch,), minval=1.0 - zoom, maxval=1.0 + zoom)
  t = jax.random.uniform(k_shift, (batch, 2), minval=-shift * size, maxval=shift * size)
  flip = jax.random.bernoulli(k_flip, flip_prob, (batch,))
  fx = jnp.where(flip, -1.0, 1.0)
  cos, sin = jnp.cos(theta) / scale, jnp.sin(theta) / scale
  # Linear part A = R / s @ diag(fx, 1).
  a = jnp.stack(
      [jnp.stack([cos * fx, -sin], -1), jnp.stack([sin * fx, cos], -1)], axis=-2
  )  # (B, 2, 2)
  c = jnp.full((2,), (size - 1) / 2.0, jnp.float32)
  offset = c + t - a.sum(axis=-1) * c  # c + t - A @ (c, c); plain arithmetic, no TF32 matmul.
  top = jnp.concatenate([a, offset[:, :, None]], axis=-1)  # (B, 2, 3)
  bottom = jnp.broadcast_to(jnp.array([[0.0, 0.0, 1.0]], jnp.float32), (batch, 1, 3))
  return jnp.concatenate([top, bottom], axis=1).astype(jnp.float32)


def _affine_coords(matrices: jax.Array, coords: jax.Array) -> jax.Array:
  """Apply (B, 3, 3) matrices to a (B or 1, H, W, 2) map of (x, y) points.

  Written out elementwise: a matmul could run in TF32 on GPUs and cost pixels of accuracy.
  """
  m = matrices[:, None, None, :, :].astype(jnp.float32)
  x, y = coords[..., 0], coords[..., 1]
  return jnp.stack(
      [m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2],
       m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2]],
      axis=-1,
  )


def _sample_one(image: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear sample of one (H, W, C) image at (H', W', 2) (x, y) points, edge clamped.

  Same maths as `pix.flat_nd_linear_interpolate` (the tests compare against it), but it gathers
  whole C-channel rows per corner instead of one scalar per channel: ~5x faster on CPU.
  """
  height, width, channels = image.shape
  # Clamp first so an out-of-range point takes the border pixel (replicate border).
  x = jnp.clip(coords[..., 0], 0.0, width - 1.0)
  y = jnp.clip(coords[..., 1], 0.0, height - 1.0)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx, wy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, width - 1), jnp.minimum(y0 + 1, height - 1)
  rows = image.reshape(height * width, channels)
  at = lambda yy, xx: rows[yy * width + xx]
  top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
  bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
  return top * (1.0 - wy) + bottom * wy


def warp(images: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear resample of (B, H, W, C) images at (B, H', W', 2) (x, y) coords, edge clamped."""
  images = _to_float(images)
  coords = jnp.broadcast_to(coords, (images.shape[0],) + coords.shape[-3:])
  return jax.vmap(_sample_one)(images, coords.astype(jnp.float32))


def apply_affine(images: jax.Array, matrices: jax.Array) -> jax.Array:
  """Resample (B, H, W, C) images through output-to-input (B, 3, 3) matrices."""
  grid = _pixel_grid(images.shape[1], images.shape[2])[None]
  return warp(images, _affine_coords(matrices, grid))


def _upsample_matrix(grid: int, size: int) -> jax.Array:
  """(size, grid) bilinear weights taking lattice values to pixels, lattice ends on image ends."""
  u = jnp.arange(size, dtype=jnp.float32) * ((grid - 1) / max(size - 1, 1))
  return jnp.maximum(0.0, 1.0 - jnp.abs(u[:, None] - jnp.arange(grid, dtype=jnp.float32)))


def random_warp_coords(rng: jax.Array, batch: int, size: int, grid: int, sigma: float) -> jax.Array:
  """(B, H, W, 2) identity map plus a smooth random displacement field.

  A grid x grid control lattice spans the image (its corners are the image corners); each
  control point moves by N(0, (sigma * size)^2) pixels per axis and the displacements are
  bilinearly upsampled to every pixel. Unlike faceswap we keep the full image rather than
  cropping the centre of a larger warp, so this is only a smooth displacement field.
  """
  noise = jax.random.normal(rng, (batch, grid, grid, 2), jnp.float32) * (sigma * size)
  up = _upsample_matrix(grid, size)
  dense = jnp.einsum("hi,bijc,wj->bhwc", up, noise, up, precision=jax.lax.Precision.HIGHEST)
  return _pixel_grid(size, size)[None] + dense


def _sample_color(rng: jax.Array, batch: int, brightness: float, contrast: float,
                  saturation: float, hue: float) -> ColorParams:
  kb, kc, ks, kh = jax.random.split(rng, 4)
  uniform = lambda k, lo, hi: jax.random.uniform(k, (batch,), minval=lo, maxval=hi)
  return ColorParams(
      brightness=uniform(kb, -brightness, brightness),
      contrast=uniform(kc, 1.0 - contrast, 1.0 + contrast),
      saturation=uniform(ks, 1.0 - saturation, 1.0 + saturation),
      hue=uniform(kh, -hue, hue),
  )


def _apply_color(params: ColorParams, images: jax.Array, enabled: tuple[bool, ...]) -> jax.Array:
  """Per-image colour ops; `enabled` (static) skips ops whose range is zero."""
  use_b, use_c, use_s, use_h = enabled

  def one(p: ColorParams, image: jax.Array) -> jax.Array:
    if use_b:
      image = pix.adjust_brightness(image, p.brightness)
    if use_c:
      image = pix.adjust_contrast(image, p.contrast)
    # The HSV ops assume [0, 1]; clip before them.
    image = jnp.clip(image, 0.0, 1.0)
    if use_s:
      image = pix.adjust_saturation(image, p.saturation)
    if use_h:
      image = pix.adjust_hue(image, p.hue)
    return jnp.clip(image, 0.0, 1.0)

  return jax.vmap(one)(params, images)


def color_jitter(rng: jax.Array, images: jax.Array, brightness: float, contrast: float,
                 saturation: float, hue: float) -> jax.Array:
  """Per-image random brightness, contrast, saturation and hue, clipped to [0, 1]."""
  images = _to_float(images)
  params = _sample_color(rng, images.shape[0], brightness, contrast, saturation, hue)
  enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
  return _apply_color(params, images, enabled)


def augment(rng: jax.Array, images: jax.Array, extras: jax.Array | None, cfg: Any) -> Augmented:
  """Augment one identity's batch (cfg = config.augment).

  Colour jitter is applied once to the source, so input and target share it exactly (it is
  per-image and pointwise apart from contrast's image mean, so it commutes with the geometry up
  to interpolation). One affine + flip per image is shared by input, target and extras; the warp
  touches the input only and is composed with the affine, so the source is resampled once at
  affine(warp(p)), which blurs less than two resamples.
  """
  images = _to_float(images)
  batch, height, width, _ = images.shape
  if height != width:
    raise ValueError(f"augment expects square faces, got {height}x{width}")
  k_affine, k_warp, k_color, k_input = jax.random.split(rng, 4)

  enabled = (cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0)
  if any(enabled):
    params = _sample_color(k_color, batch, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    images = _apply_color(params, images, enabled)

  matrices = random_affine(
      k_affine, batch, height, cfg.rotation_deg, cfg.zoom, cfg.shift, cfg.flip_prob
  )
  target_coords = _affine_coords(matrices, _pixel_grid(height, width)[None])
  # Separate resamples rather than one of the channel-concatenated batch: slicing the channels
  # apart afterwards cost more than the second gather on CPU.
  targets = warp(images, target_coords)
  out_extras = None if extras is None else warp(extras, target_coords)
  if cfg.warp:
    warped = random_warp_coords(k_warp, batch, height, cfg.warp_grid, cfg.warp_sigma)
    inputs = warp(images, _affine_coords(matrices, warped))
  else:
    inputs = targets
  power = cfg.input_hsv
  if power > 0:  # the network's input only: the target keeps the person's true colours
    inputs = color_jitter(k_input, inputs, power / 2, 0.0, power / 2, power / 2)
  return Augmented(inputs=inputs, targets=targets, extras=out_extras)


# --------------------------------------------------------------------------------------------
# Training-time colour transfer (DeepFaceLab's ct_mode "rct")
# --------------------------------------------------------------------------------------------

# sRGB (D65) <-> CIE XYZ, with X and Z divided by the white point so white maps to (1, 1, 1):
# the same L*a*b* as OpenCV's float conversion of RGB in [0, 1].
# numpy, not jnp: a jnp constant here would create jax's backends at import, before the entry
# points could choose XLA_FLAGS (jaxswap.xla_flags).
_RGB_TO_XYZ = np.array([[0.412453 / 0.950456, 0.357580 / 0.950456, 0.180423 / 0.950456],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334 / 1.088754, 0.119193 / 1.088754, 0.950227 / 1.088754]],
                       np.float32)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ).astype(np.float32)
_DELTA = 6.0 / 29.0


def _elementwise_matmul(m: jax.Array, x: jax.Array) -> jax.Array:
  """(3, 3) @ per-pixel (..., 3), written out so it never runs in TF32 on a GPU."""
  return jnp.stack([m[i, 0] * x[..., 0] + m[i, 1] * x[..., 1] + m[i, 2] * x[..., 2]
                    for i in range(3)], axis=-1)


def _pow(x: jax.Array, p: float) -> jax.Array:
  """x ** p for x > 0 as exp(p log x): XLA:CPU's pow and cbrt are not vectorised, and cost 5x
  (pow) and 15x (cbrt) the exp/log pair here; float32 results agree to ~1e-7 relative."""
  return jnp.exp(p * jnp.log(x))


def _linear(c: jax.Array) -> jax.Array:
  """sRGB gamma removed."""
  return jnp.where(c > 0.04045, _pow((jnp.maximum(c, 0.04045) + 0.055) / 1.055, 2.4), c / 12.92)


def _gamma(c: jax.Array) -> jax.Array:
  c = jnp.clip(c, 0.0, 1.0)
  return jnp.where(c > 0.0031308, 1.055 * _pow(jnp.maximum(c, 0.0031308), 1 / 2.4) - 0.055,
                   12.92 * c)


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """sRGB in [0, 1] -> L* in [0, 100], a*, b* (OpenCV's float COLOR_RGB2Lab)."""
  xyz = _elementwise_matmul(_RGB_TO_XYZ, _linear(jnp.clip(rgb, 0.0, 1.0)))
  f = jnp.where(xyz > _DELTA**3, _pow(jnp.maximum(xyz, _DELTA**3), 1 / 3),
                xyz / (3 * _DELTA**2) + 4.0 / 29.0)
  return jnp.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                    200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: jax.Array) -> jax.Array:
  fy = (lab[..., 0] + 16.0) / 116.0
  f = jnp.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
  xyz = jnp.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
  return _gamma(_elementwise_matmul(_XYZ_TO_RGB, xyz))


def _masked_moments(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-image, per-channel mean and std of (B, H, W, C) x over (B, H, W, 1) mask weights."""
  w = mask / (jnp.sum(mask, axis=(1, 2), keepdims=True) + 1e-6)
  mean = jnp.sum(x * w, axis=(1, 2), keepdims=True)
  var = jnp.sum(jnp.square(x - mean) * w, axis=(1, 2), keepdims=True)
  return mean, jnp.sqrt(var + 1e-6)


def reinhard_transfer(images: jax.Array, references: jax.Array, mask: jax.Array | None = None,
                      ref_mask: jax.Array | None = None) -> jax.Array:
  """Each image's L*a*b* mean and std moved to those of its reference (Reinhard et al. 2001).

  Statistics are taken inside the masks (the face, not the background) when given; the whole
  image is transformed. A face with no mask pixels falls back to whole-image statistics.
  """
  src, ref = rgb_to_lab(_to_float(images)), rgb_to_lab(_to_float(references))
  ones = jnp.ones(src.shape[:-1] + (1,), jnp.float32)

  def usable(m):
    m = ones if m is None else m.astype(jnp.float32)
    return jnp.where(jnp.sum(m, axis=(1, 2, 3), keepdims=True) > 0, m, ones)

  mu_s, sd_s = _masked_moments(src, usable(mask))
  mu_r, sd_r = _masked_moments(ref, usable(ref_mask))
  return lab_to_rgb((src - mu_s) * (sd_r / sd_s) + mu_r)


def random_color_transfer(rng: jax.Array, images: jax.Array, others: jax.Array,
                          mask: jax.Array | None = None,
                          other_mask: jax.Array | None = None) -> jax.Array:
  """`images` recoloured toward a random face of `others` each (the other person's batch).

  So the two decoders see the same lighting distribution and a swap does not carry A's skin
  tone and light into B's scene.
  """
  perm = jax.random.permutation(rng, others.shape[0])[:images.shape[0]]
  other_mask = None if other_mask is None else other_mask[perm]
  return reinhard_transfer(images, others[perm], mask, other_mask)
