"""Shared-encoder face-swap autoencoders (Flax Linen, NHWC, images in [0, 1]).

One encoder learns a pose/expression code common to both people; each person has a decoder that
renders that code as their face. Swapping B->A is encode(B face) -> decoder A.

Variants (see `VARIANTS`):
  original     the 2017 deepfakes network exactly (faceswap "Original"), 64 px, ~82.1 M params.
  lightweight  faceswap "Lightweight": no 1024 conv, Dense 512, 8x8x256 bottleneck.
  sae128       DeepFaceLab SAEHD "df"-like, 128 px, residual decoders, learned mask.
  tiny         a small 64 px network that trains visibly on a 2-core CPU (tests, demo).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxswap.errors import JaxswapError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  image_size: int
  encoder_filters: tuple[int, ...]  # 5x5 stride-2 convs
  dense: int  # bottleneck width
  latent_res: int  # spatial size of the Dense -> reshape
  latent_ch: int
  encoder_upscale: int  # filters of the encoder's final upscale block
  decoder_filters: tuple[int, ...]  # one upscale block each
  residual: bool = False  # SAEHD: a residual block after every decoder upscale
  out_kernel: int = 5
  mask_filters: tuple[int, ...] | None = None  # defaults to decoder_filters
  leak: float = 0.1


VARIANTS: dict[str, ModelSpec] = {
    "original": ModelSpec(64, (128, 256, 512, 1024), 1024, 4, 1024, 512, (256, 128, 64)),
    "lightweight": ModelSpec(64, (128, 256, 512), 512, 4, 512, 256, (512, 256, 128)),
    "sae128": ModelSpec(128, (64, 128, 256, 512), 256, 8, 256, 256, (512, 256, 128),
                        residual=True, out_kernel=1, mask_filters=(256, 128, 64)),
    "tiny": ModelSpec(64, (32, 64, 128, 256), 256, 4, 256, 128, (64, 32, 16)),
}


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
  total = max((-(-n // s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def space_to_depth_conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """A "SAME" stride-2 k x k conv (NHWC/HWIO) as space-to-depth + a stride-1 ceil(k/2)^2 conv.

  The same function: out[i] = sum_t xp[2i + t] w[t] pairs the taps t = 2j + r into a (k+1)/2-tap
  conv over 2x2 pixel blocks (4C channels); the kernel's missing sixth tap is zero. Why: XLA's CPU
  backend runs the input gradient of a stride-2 conv whose output is smaller than its kernel
  (original's 8x8 -> 4x4 layer) as a naive loop, ~5x slower than this formulation.
  """
  b, n, _, c = x.shape
  k, o = w.shape[0], w.shape[-1]
  lo, _ = _same_pads(n, k, 2)
  taps = (k + 1) // 2
  size = 2 * (-(-n // 2) + taps - 1)  # padded length the taps-wide conv needs
  xp = jnp.pad(x, ((0, 0), (lo, size - n - lo), (lo, size - n - lo), (0, 0)))
  m = size // 2
  xs = xp.reshape(b, m, 2, m, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, m, m, 4 * c)
  wp = jnp.pad(w, ((0, 2 * taps - k), (0, 2 * taps - k), (0, 0), (0, 0)))
  ws = wp.reshape(taps, 2, taps, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(taps, taps, 4 * c, o)
  return jax.lax.conv_general_dilated(xs, ws, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                          rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                          precision=None, preferred_element_type=None):
  """lax.conv_general_dilated, except small-output stride-2 convs go through space_to_depth_conv."""
  small_stride2 = (tuple(window_strides) == (2, 2) and padding == "SAME" and lhs.ndim == 4
                   and lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1))
                   and feature_group_count == 1 and rhs.shape[0] == rhs.shape[1]
                   and lhs.shape[1] == lhs.shape[2] and -(-lhs.shape[1] // 2) < rhs.shape[0])
  if small_stride2:
    return space_to_depth_conv(lhs, rhs.astype(lhs.dtype))
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                      rhs_dilation, dimension_numbers, feature_group_count,
                                      precision=precision,
                                      preferred_element_type=preferred_element_type)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """Depth-to-space, channel order (r_h, r_w, c) as in the deepfakes PixelShuffler / TF."""
  b, h, w, c = x.shape
  oc = c // (r * r)
  x = x.reshape(b, h, w, r, r, oc)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * r, w * r, oc)


class Upscale(nn.Module):
  """Conv 3x3 to 4*filters, LeakyReLU, pixel shuffle x2."""
  filters: int
  leak: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.filters * 4, (3, 3), padding="SAME", dtype=self.dtype)(x)
    return pixel_shuffle(nn.leaky_relu(x, self.leak))


class ResidualBlock(nn.Module):
  """SAEHD residual block: two 3x3 convs, LeakyReLU(0.2) inside and after the sum."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ch = x.shape[-1]
    y = nn.leaky_relu(nn.Conv(ch, (3, 3), padding="SAME", dtype=self.dtype)(x), 0.2)
    y = nn.Conv(ch, (3, 3), padding="SAME", dtype=self.dtype)(y)
    return nn.leaky_relu(x + y, 0.2)


class Encoder(nn.Module):
  spec: ModelSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = self.spec
    x = x.astype(self.dtype)
    for f in s.encoder_filters:
      conv = nn.Conv(f, (5, 5), strides=(2, 2), padding="SAME", dtype=self.dtype,
                     conv_general_dilated=_conv_general_dilated)
      x = nn.leaky_relu(conv(x), s.leak)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(s.dense, dtype=self.dtype)(x)
    x = nn.Dense(s.latent_res * s.latent_res * s.latent_ch, dtype=self.dtype)(x)
    x = x.reshape(x.shape[0], s.latent_res, s.latent_res, s.latent_ch)
    return Upscale(s.encoder_upscale, s.leak, self.dtype)(x)


class Decoder(nn.Module):
  """Upscales the shared code to one person's face (+ an optional mask branch)."""
  spec: ModelSpec
  learn_mask: bool = False
  dtype: Any = jnp.float32

  def _branch(self, z, filters, out_ch, name):
    s = self.spec
    x = z
    for i, f in enumerate(filters):
      x = Upscale(f, s.leak, self.dtype, name=f"{name}_upscale{i}")(x)
      if s.residual:
        x = ResidualBlock(self.dtype, name=f"{name}_residual{i}")(x)
    # The output layer runs in float32 even under bf16 compute: sigmoid saturation and the
    # loss are sensitive to the last bits.
    x = nn.Conv(out_ch, (s.out_kernel, s.out_kernel), padding="SAME", dtype=jnp.float32,
                name=f"{name}_out")(x.astype(jnp.float32))
    return nn.sigmoid(x)

  @nn.compact
  def __call__(self, z) -> dict[str, jax.Array]:
    out = {"rgb": self._branch(z, self.spec.decoder_filters, 3, "rgb")}
    if self.learn_mask:
      filters = self.spec.mask_filters or self.spec.decoder_filters
      out["mask"] = self._branch(z, filters, 1, "mask")
    return out


class FaceSwapAutoencoder(nn.Module):
  """One shared encoder, decoder_a and decoder_b. Identity 0 is A, 1 is B."""
  spec: ModelSpec
  learn_mask: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.spec, self.dtype)
    self.decoder_a = Decoder(self.spec, self.learn_mask, self.dtype)
    self.decoder_b = Decoder(self.spec, self.learn_mask, self.dtype)

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z, identity: int):
    return (self.decoder_a, self.decoder_b)[identity](z)

  def swap(self, x, to: int):
    """Renders the faces in x as identity `to` (0 = A, 1 = B)."""
    return self.decode(self.encode(x), to)

  def __call__(self, x_a, x_b):
    """Each person reconstructed by their own decoder (the training objective)."""
    return self.decode(self.encode(x_a), 0), self.decode(self.encode(x_b), 1)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise JaxswapError(f"--config.dtype={name!r}: expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def create_model(config) -> FaceSwapAutoencoder:
  """The model a config asks for; checks that the image size is the one the variant is built for."""
  name = config.model.name
  if name not in VARIANTS:
    raise JaxswapError(f"--config.model.name={name!r}: expected one of {sorted(VARIANTS)}")
  spec = VARIANTS[name]
  if config.image_size != spec.image_size:
    raise JaxswapError(f"--config.image_size={config.image_size} does not fit model {name!r}, "
                       f"which is built for {spec.image_size} px faces")
  return FaceSwapAutoencoder(spec, bool(config.model.learn_mask), compute_dtype(config.dtype))


def init_params(model: FaceSwapAutoencoder, rng: jax.Array, batch: int = 1):
  x = jnp.zeros((batch, model.spec.image_size, model.spec.image_size, 3), jnp.float32)
  return model.init(rng, x, x)["params"]


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
