"""Shared-encoder face-swap autoencoders (Flax Linen, NHWC, images in [0, 1]).

Two families, both mapping an aligned face to a face of a chosen identity (0 = A, 1 = B):

  df    (deepfakes 2017 / faceswap / DeepFaceLab "df"): one encoder whose dense "inter" layers are
        shared, one decoder per person. Swap B->A = decoder_A(encoder(B)).
  liae  (DeepFaceLab "liae", its default): a convolutional encoder, two dense "inter" blocks
        (inter_AB sees both people, inter_B only B) and ONE decoder fed their concatenated codes:
        A = dec[AB(A), AB(A)], B = dec[B(B), AB(B)], swap B->A = dec[AB(B), AB(B)]. The shared
        decoder keeps pose and expression better; identity lives in which codes it is given.

Both expose encode(x) -> features and decode(features, to) -> {"rgb", ["mask"]}, so training,
previews and conversion treat them alike.

Variants (see `VARIANTS`):
  original     the 2017 deepfakes network exactly (faceswap "Original"), 64 px, ~82.1 M params.
  lightweight  faceswap "Lightweight": no 1024 conv, Dense 512, 8x8x256 bottleneck.
  sae128       DeepFaceLab SAEHD "df"-like, 128 px, residual decoders, learned mask.
  tiny         a small 64 px network that trains visibly on a 2-core CPU (tests, demo).
  liae128      LIAE at 128 px sized for a CPU; the decoder runs at 64 px and a final
               depth-to-space doubles it (DeepFaceLab's "-d").
  quick128     the df twin of liae128 (same encoder, decoders and "-d" output).
  liae256      DeepFaceLab's default SAEHD liae-ud at 256 px (ae 256, e 64, d 64): for GPUs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

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
  encoder_upscale: int  # filters of the inter block's final upscale
  decoder_filters: tuple[int, ...]  # one upscale block each
  residual: bool = False  # SAEHD: a residual block after every decoder upscale
  out_kernel: int = 5
  mask_filters: tuple[int, ...] | None = None  # defaults to decoder_filters
  leak: float = 0.1
  arch: str = "df"  # df | liae
  # DeepFaceLab's "-d": the decoder stops at half the image size and its output conv emits
  # 4x the channels, which a depth-to-space turns into the full-size face (a quarter the cost).
  half_res_decoder: bool = False
  initializer: str = "glorot_uniform"  # the reference's kernel initialiser (see INITIALISERS)


VARIANTS: dict[str, ModelSpec] = {
    # The 2017 code is Keras: glorot-uniform kernels. faceswap's plugins use he-uniform,
    # DeepFaceLab glorot-uniform.
    "original": ModelSpec(64, (128, 256, 512, 1024), 1024, 4, 1024, 512, (256, 128, 64)),
    "lightweight": ModelSpec(64, (128, 256, 512), 512, 4, 512, 256, (512, 256, 128),
                             initializer="he_uniform"),
    "sae128": ModelSpec(128, (64, 128, 256, 512), 256, 8, 256, 256, (512, 256, 128),
                        residual=True, out_kernel=1, mask_filters=(256, 128, 64)),
    # Ours, with no reference to follow: Flax's default, which the demo was measured with.
    "tiny": ModelSpec(64, (32, 64, 128, 256), 256, 4, 256, 128, (64, 32, 16),
                      initializer="lecun_normal"),
    "liae128": ModelSpec(128, (32, 64, 128, 256), 256, 4, 128, 128, (96, 48, 24),
                         out_kernel=3, mask_filters=(32, 16, 8), arch="liae",
                         half_res_decoder=True),
    "quick128": ModelSpec(128, (32, 64, 128, 256), 256, 4, 256, 256, (96, 48, 24),
                          out_kernel=3, mask_filters=(32, 16, 8), half_res_decoder=True),
    "liae256": ModelSpec(256, (64, 128, 256, 512), 256, 8, 512, 512, (512, 256, 128),
                         residual=True, out_kernel=3, mask_filters=(176, 88, 44), arch="liae",
                         half_res_decoder=True),
}

INITIALISERS: dict[str, Callable] = {
    "glorot_uniform": nn.initializers.glorot_uniform(),
    "he_uniform": nn.initializers.he_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),  # Flax's default
}


def kernel_init(name: str) -> Callable:
  if name not in INITIALISERS:
    raise JaxswapError(f"--config.model.init={name!r}: expected auto or one of "
                       f"{sorted(INITIALISERS)}")
  return INITIALISERS[name]


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
  total = max((-(-n // s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def patches_conv(x: jax.Array, w: jax.Array, stride: int = 2, precision=None,
                 preferred_element_type=None) -> jax.Array:
  """A "SAME" k x k conv (NHWC/HWIO) as explicit patches (k*k strided slices) and one dot.

  out[b, i, j] = sum_(t, u, c) xp[b, s*i + t, s*j + u, c] w[t, u, c]: the slices, concatenated
  in (t, u, c) order, meet the kernel reshaped to (k*k*C, O) in a single matrix product, whose
  backward is two more matrix products and the slices' scatter-add. Why: XLA's CPU backend runs
  the input gradient of a stride-2 conv whose output is smaller than its kernel (original's
  8x8 -> 4x4 layer) as a naive loop; as patches + dot that layer's forward and backward take
  half the time of the space-to-depth form used before and ~1/80 of the naive loop
  (benchmarks/README.md, "CPU performance ideas").
  """
  b, n, _, c = x.shape
  k, o = w.shape[0], w.shape[-1]
  lo, hi = _same_pads(n, k, stride)
  m = -(-n // stride)
  xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  span = stride * (m - 1) + 1
  patches = jnp.concatenate([xp[:, t:t + span:stride, u:u + span:stride, :]
                             for t in range(k) for u in range(k)], axis=-1)
  return jax.lax.dot_general(patches, w.reshape(k * k * c, o), (((3,), (0,)), ((), ())),
                             precision=precision, preferred_element_type=preferred_element_type)


def cpu_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             precision=None, preferred_element_type=None):
  """lax.conv_general_dilated, except small-output stride-2 convs go through patches_conv."""
  small_stride2 = (tuple(window_strides) == (2, 2) and padding == "SAME" and lhs.ndim == 4
                   and lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1))
                   and feature_group_count == 1 and rhs.shape[0] == rhs.shape[1]
                   and lhs.shape[1] == lhs.shape[2] and -(-lhs.shape[1] // 2) < rhs.shape[0])
  if small_stride2:
    return patches_conv(lhs, rhs.astype(lhs.dtype), 2, precision, preferred_element_type)
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


def _conv_kwargs(conv: Callable | None) -> dict:
  """nn.Conv's keyword for a conv primitive of our own (None: lax.conv_general_dilated)."""
  return {} if conv is None else {"conv_general_dilated": conv}


class Upscale(nn.Module):
  """Conv 3x3 to 4*filters, LeakyReLU, pixel shuffle x2."""
  filters: int
  leak: float = 0.1
  dtype: Any = jnp.float32
  initializer: str = "glorot_uniform"
  conv: Callable | None = None

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.filters * 4, (3, 3), padding="SAME", dtype=self.dtype,
                kernel_init=kernel_init(self.initializer), **_conv_kwargs(self.conv))(x)
    return pixel_shuffle(nn.leaky_relu(x, self.leak))


class ResidualBlock(nn.Module):
  """SAEHD residual block: two 3x3 convs, LeakyReLU(0.2) inside and after the sum."""
  dtype: Any = jnp.float32
  initializer: str = "glorot_uniform"
  conv: Callable | None = None

  @nn.compact
  def __call__(self, x):
    ch = x.shape[-1]
    conv = lambda: nn.Conv(ch, (3, 3), padding="SAME", dtype=self.dtype,
                           kernel_init=kernel_init(self.initializer), **_conv_kwargs(self.conv))
    y = nn.leaky_relu(conv()(x), 0.2)
    return nn.leaky_relu(x + conv()(y), 0.2)


def _inter(x, s: ModelSpec, dtype, init: str, conv: Callable | None):
  """Flat features -> Dense bottleneck -> Dense -> reshape -> Upscale (in the caller's scope)."""
  x = nn.Dense(s.dense, dtype=dtype, kernel_init=kernel_init(init))(x)
  x = nn.Dense(s.latent_res * s.latent_res * s.latent_ch, dtype=dtype,
               kernel_init=kernel_init(init))(x)
  x = x.reshape(x.shape[0], s.latent_res, s.latent_res, s.latent_ch)
  return Upscale(s.encoder_upscale, s.leak, dtype, init, conv)(x)


class Encoder(nn.Module):
  """5x5 stride-2 convs, flattened; a df encoder also holds the shared inter layers.

  `conv` is the conv primitive of every conv here and in the decoders (None:
  lax.conv_general_dilated); `create_model` picks `cpu_conv_general_dilated` on the CPU backend.
  """
  spec: ModelSpec
  dtype: Any = jnp.float32
  initializer: str = "glorot_uniform"
  conv: Callable | None = None

  @nn.compact
  def __call__(self, x):
    s = self.spec
    x = x.astype(self.dtype)
    for f in s.encoder_filters:
      conv = nn.Conv(f, (5, 5), strides=(2, 2), padding="SAME", dtype=self.dtype,
                     kernel_init=kernel_init(self.initializer), **_conv_kwargs(self.conv))
      x = nn.leaky_relu(conv(x), s.leak)
    x = x.reshape(x.shape[0], -1)
    return _inter(x, s, self.dtype, self.initializer, self.conv) if s.arch == "df" else x


class Inter(nn.Module):
  """LIAE's dense code block (inter_AB or inter_B)."""
  spec: ModelSpec
  dtype: Any = jnp.float32
  initializer: str = "glorot_uniform"
  conv: Callable | None = None

  @nn.compact
  def __call__(self, x):
    return _inter(x, self.spec, self.dtype, self.initializer, self.conv)


class Decoder(nn.Module):
  """Upscales a code to a face (+ an optional mask branch)."""
  spec: ModelSpec
  learn_mask: bool = False
  dtype: Any = jnp.float32
  initializer: str = "glorot_uniform"
  conv: Callable | None = None

  def _branch(self, z, filters, out_ch, name):
    s = self.spec
    x = z
    for i, f in enumerate(filters):
      x = Upscale(f, s.leak, self.dtype, self.initializer, self.conv,
                  name=f"{name}_upscale{i}")(x)
      if s.residual:
        x = ResidualBlock(self.dtype, self.initializer, self.conv,
                          name=f"{name}_residual{i}")(x)
    # The output layer runs in float32 even under bf16 compute: sigmoid saturation and the
    # loss are sensitive to the last bits.
    r = 2 if s.half_res_decoder else 1
    x = nn.Conv(out_ch * r * r, (s.out_kernel, s.out_kernel), padding="SAME", dtype=jnp.float32,
                kernel_init=kernel_init(self.initializer), **_conv_kwargs(self.conv),
                name=f"{name}_out")(x.astype(jnp.float32))
    return nn.sigmoid(pixel_shuffle(x, r) if r > 1 else x)

  @nn.compact
  def __call__(self, z) -> dict[str, jax.Array]:
    out = {"rgb": self._branch(z, self.spec.decoder_filters, 3, "rgb")}
    if self.learn_mask:
      filters = self.spec.mask_filters or self.spec.decoder_filters
      out["mask"] = self._branch(z, filters, 1, "mask")
    return out


class FaceSwapAutoencoder(nn.Module):
  """df: one shared encoder, decoder_a and decoder_b. Identity 0 is A, 1 is B."""
  spec: ModelSpec
  learn_mask: bool = False
  dtype: Any = jnp.float32
  initializer: str = "glorot_uniform"
  conv: Callable | None = None

  def setup(self):
    self.encoder = Encoder(self.spec, self.dtype, self.initializer, self.conv)
    self.decoder_a = Decoder(self.spec, self.learn_mask, self.dtype, self.initializer, self.conv)
    self.decoder_b = Decoder(self.spec, self.learn_mask, self.dtype, self.initializer, self.conv)

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z, identity: int):
    return (self.decoder_a, self.decoder_b)[identity](z)

  def swap(self, x, to: int):
    """Renders the faces in x as identity `to` (0 = A, 1 = B)."""
    return self.decode(self.encode(x), to)

  def reconstruct(self, x_a, x_b):
    """(out_a, out_b, code_a, code_b): each person through their own decoder, and the codes."""
    z_a, z_b = self.encode(x_a), self.encode(x_b)
    return self.decode(z_a, 0), self.decode(z_b, 1), z_a, z_b

  def __call__(self, x_a, x_b):
    """Each person reconstructed by their own decoder (the training objective)."""
    return self.reconstruct(x_a, x_b)[:2]


class LIAEAutoencoder(FaceSwapAutoencoder):
  """liae: conv encoder, inter_ab + inter_b, one decoder (see the module docstring)."""

  def setup(self):
    self.encoder = Encoder(self.spec, self.dtype, self.initializer, self.conv)
    self.inter_ab = Inter(self.spec, self.dtype, self.initializer, self.conv)
    self.inter_b = Inter(self.spec, self.dtype, self.initializer, self.conv)
    self.decoder = Decoder(self.spec, self.learn_mask, self.dtype, self.initializer, self.conv)

  def decode(self, z, identity: int):
    ab = self.inter_ab(z)
    first = ab if identity == 0 else self.inter_b(z)
    return self.decoder(jnp.concatenate([first, ab], axis=-1))


class CodeDiscriminator(nn.Module):
  """DeepFaceLab's code discriminator (SAEHD `true_face_power`): tells A's codes from B's.

  Strided convs over the shared code (one more per 8 px of its side), LeakyReLU(0.1), then a
  1x1 conv to one logit per location. Float32 throughout: it is small and its logits feed a loss.
  """
  filters: int = 256
  leak: float = 0.1
  initializer: str = "glorot_uniform"
  conv: Callable | None = None  # the strided convs' primitive, as in Encoder

  @nn.compact
  def __call__(self, z):
    x = z.astype(jnp.float32)
    for i in range(1 + x.shape[1] // 8):
      k = 4 if i == 0 else 3
      x = nn.Conv(self.filters * min(2 ** i, 8), (k, k), strides=(2, 2), padding="SAME",
                  kernel_init=kernel_init(self.initializer), **_conv_kwargs(self.conv))(x)
      x = nn.leaky_relu(x, self.leak)
    return nn.Conv(1, (1, 1), kernel_init=kernel_init(self.initializer))(x)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise JaxswapError(f"--config.dtype={name!r}: expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def uses_cpu_conv_rewrite(backend: str) -> bool:
  """The patches form of small-output strided convs pays only on XLA:CPU (cuDNN has no slow
  loop to avoid)."""
  return backend == "cpu"


def create_model(config, backend: str | None = None) -> FaceSwapAutoencoder:
  """The model a config asks for; checks that the image size is the one the variant is built for."""
  name = config.model.name
  if name not in VARIANTS:
    raise JaxswapError(f"--config.model.name={name!r}: expected one of {sorted(VARIANTS)}")
  spec = VARIANTS[name]
  if config.image_size != spec.image_size:
    raise JaxswapError(f"--config.image_size={config.image_size} does not fit model {name!r}, "
                       f"which is built for {spec.image_size} px faces")
  init = spec.initializer if config.model.init == "auto" else config.model.init
  kernel_init(init)  # a bad name fails here, not inside tracing
  backend = backend or jax.default_backend()
  conv = cpu_conv_general_dilated if uses_cpu_conv_rewrite(backend) else None
  return autoencoder(spec, bool(config.model.learn_mask), compute_dtype(config.dtype), init, conv)


def autoencoder(spec: ModelSpec, *args, **kwargs) -> FaceSwapAutoencoder:
  """The module class of the spec's family (df or liae), built with the given fields."""
  return (LIAEAutoencoder if spec.arch == "liae" else FaceSwapAutoencoder)(spec, *args, **kwargs)


def init_params(model: FaceSwapAutoencoder, rng: jax.Array, batch: int = 1):
  x = jnp.zeros((batch, model.spec.image_size, model.spec.image_size, 3), jnp.float32)
  return model.init(rng, x, x)["params"]


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
