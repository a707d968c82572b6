"""CPU performance ideas for the `original` network, layer by layer (DESIGN.md "Performance notes").

    python benchmarks/conv_ideas.py --batch 16 [--layers E2,U2] [--ideas base,s2d] [--torch] \
        --json OUT.json

Times forward + backward (gradients w.r.t. input and kernel, kernel only for the first layer, as
in training) of each convolution of `original` at its real shape, in several formulations that
compute the same function (each reports its relative error against the baseline):
  base     lax.conv_general_dilated, NHWC/HWIO: what flax.linen.Conv emits.
  nchw     the same convolution with NCHW/OIHW dimension numbers (layout idea).
  s2d      stride-2 5x5 as space-to-depth + a 3x3 stride-1 conv on 4C channels (stride-2 layers
           only): no strided / lhs-dilated convolution left in forward or backward.
  patches  im2col: lax.conv_general_dilated_patches + one dot (conv as explicit patches + dot).
  winograd 3x3 stride-1 layers only: Winograd F(2x2, 3x3), i.e. 16 products of (tiles x C_in) by
           (C_in x C_out) per 2x2 output tile instead of 36 multiply-adds per output pixel and
           channel pair (2.25x fewer), the input / kernel / output transforms as sums of slices.
  bf16dot  models.patches_conv in bfloat16 (the k*k strided slices concatenated, one dot) with
           float32 accumulation: with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
           individual_dot the dot runs in YNNPACK, whose bf16 kernels use AVX-512 BF16 where the
           CPU has it (~2x its float32 rate on a Zen 4 EPYC); XLA's own bf16 convolutions do not.
  torch    the same layer in PyTorch (oneDNN), NCHW, for reference (--torch).
GFLOP/s counts 2 x MACs of forward + the two backward products (one for the first layer).

    python benchmarks/conv_ideas.py --step --batch 16 --variants plain,base,s2d_all,fused

times the whole `original` training step (jaxswap.train.make_train_step, augmentation included)
with the model changed in memory only (jaxswap/ is not edited; parameters are identical):
  base     jaxswap.models as it is (models.cpu_conv_general_dilated: patches + one dot for
           stride-2 convs whose output is smaller than their kernel, `original`'s last encoder
           conv, 8x8 -> 4x4).
  winograd base with every 3x3 stride-1 conv (the upscales' and residual blocks') as Winograd
           F(2x2, 3x3), the `winograd` idea above.
  plain    every conv through lax.conv_general_dilated, as flax.linen.Conv emits it. XLA swaps
           the operands of that 8x8 -> 4x4 conv's input gradient into an rhs-dilated convolution
           that its CPU backend runs as a plain loop (layer E4 above: ~20x slower than s2d).
  s2d_all  space-to-depth for every stride-2 conv.
  fused    A and B through the shared encoder as one batch of 2B (one call per layer).
Join variants with "+" (e.g. plain+fused).
The first step's loss of every variant is compared with base (same initial state and batch).
XLA flags are read from XLA_FLAGS as usual: run the script once per flag set to compare them.
With XLA_FLAGS unset, jaxswap's CPU defaults apply (jaxswap.xla_flags, as in `jaxswap.train`);
`--no-xla-defaults` (or `XLA_FLAGS=`) gives XLA's own defaults.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# name: (input spatial size, in channels, out channels, kernel, stride)
LAYERS = {
    "E1": (64, 3, 128, 5, 2), "E2": (32, 128, 256, 5, 2), "E3": (16, 256, 512, 5, 2),
    "E4": (8, 512, 1024, 5, 2), "U0": (4, 1024, 2048, 3, 1), "U1": (8, 512, 1024, 3, 1),
    "U2": (16, 256, 512, 3, 1), "U3": (32, 128, 256, 3, 1), "OUT": (64, 64, 3, 5, 1),
}


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
  total = max((-(-n // s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A per 4x4 input tile.
_WINO_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINO_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_WINO_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(coefs, terms):
  """sum(c * t) over the nonzero coefficients, as adds and subtractions where c is +-1."""
  out = None
  for c, t in zip(coefs, terms):
    if c == 0:
      continue
    t = t if c == 1 else -t if c == -1 else c * t
    out = t if out is None else out + t
  return out


def conv_fns():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  def base(x, w, s):
    return lax.conv_general_dilated(x, w, (s, s), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def nchw(x, w, s):
    y = lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (s, s), "SAME",
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y.transpose(0, 2, 3, 1)

  def s2d(x, w, s):
    """out[i] = sum_k xp[2i + k] w[k], k < 5 == 3x3 conv over pairs of xp (6-tap kernel)."""
    if s != 2:
      return base(x, w, s)
    b, n, _, c = x.shape
    k, o = w.shape[0], w.shape[-1]
    lo, _ = _same_pads(n, k, 2)
    taps = (k + 1) // 2  # 3 for k = 5
    size = 2 * (n // 2 + taps - 1)  # padded length that the 3-tap conv needs
    xp = jnp.pad(x, ((0, 0), (lo, size - n - lo), (lo, size - n - lo), (0, 0)))
    m = size // 2
    xs = xp.reshape(b, m, 2, m, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, m, m, 4 * c)
    wp = jnp.pad(w, ((0, 2 * taps - k), (0, 2 * taps - k), (0, 0), (0, 0)))
    ws = wp.reshape(taps, 2, taps, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
    ws = ws.reshape(taps, taps, 4 * c, o)
    return lax.conv_general_dilated(xs, ws, (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def patches(x, w, s):
    k, c, o = w.shape[0], w.shape[2], w.shape[3]
    p = lax.conv_general_dilated_patches(x, (k, k), (s, s), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # Patch features are ordered (c, kh, kw).
    return jnp.einsum("bhwf,fo->bhwo", p, w.transpose(2, 0, 1, 3).reshape(c * k * k, o))

  def winograd(x, w, s):
    if s != 1 or w.shape[0] != 3:
      return base(x, w, s)
    b, h, wd, c = x.shape
    o = w.shape[-1]
    th, tw = -(-h // 2), -(-wd // 2)  # 2x2 output tiles
    xp = jnp.pad(x, ((0, 0), (1, 2 * th - h + 1), (1, 2 * tw - wd + 1), (0, 0)))
    d = [[xp[:, i:i + 2 * th:2, j:j + 2 * tw:2] for j in range(4)] for i in range(4)]
    rows = [[_combine(_WINO_BT[p], [d[i][j] for i in range(4)]) for j in range(4)]
            for p in range(4)]
    v = jnp.stack([_combine(_WINO_BT[q], rows[p]) for p in range(4) for q in range(4)])
    g = [[w[i, j] for j in range(3)] for i in range(3)]
    gr = [[_combine(_WINO_G[p], [g[i][j] for i in range(3)]) for j in range(3)] for p in range(4)]
    u = jnp.stack([_combine(_WINO_G[q], gr[p]) for p in range(4) for q in range(4)])
    m = lax.dot_general(v.reshape(16, b * th * tw, c), u, (((2,), (1,)), ((0,), (0,))))
    m = m.reshape(4, 4, b, th, tw, o)
    r = [[_combine(_WINO_AT[a], [m[p, q] for p in range(4)]) for q in range(4)] for a in range(2)]
    y = jnp.stack([jnp.stack([_combine(_WINO_AT[e], r[a]) for e in range(2)], 3)
                   for a in range(2)], 2)  # (b, th, 2, tw, 2, o)
    return y.reshape(b, 2 * th, 2 * tw, o)[:, :h, :wd]

  def bf16dot(x, w, s):
    from jaxswap import models  # pylint: disable=g-import-not-at-top
    return models.patches_conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), s,
                               preferred_element_type=jnp.float32)

  return {"base": base, "nchw": nchw, "s2d": s2d, "patches": patches, "winograd": winograd,
          "bf16dot": bf16dot}


def s2d_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             precision=None, preferred_element_type=None):
  """lax.conv_general_dilated, with every NHWC "SAME" stride-2 conv done as space-to-depth."""
  from jax import lax  # pylint: disable=g-import-not-at-top
  if (lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1))
      and feature_group_count == 1 and padding == "SAME" and lhs.ndim == 4
      and tuple(window_strides) == (2, 2) and rhs.shape[0] == rhs.shape[1]):
    return conv_fns()["s2d"](lhs, rhs, 2)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, precision=precision,
                                  preferred_element_type=preferred_element_type)


def winograd_conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
  """models.cpu_conv_general_dilated, with float32 3x3 stride-1 "SAME" convs as Winograd."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxswap import models  # pylint: disable=g-import-not-at-top
  undilated = all(kwargs.get(k) in (None, (1, 1)) for k in ("lhs_dilation", "rhs_dilation"))
  if (tuple(window_strides) == (1, 1) and padding == "SAME" and rhs.shape[:2] == (3, 3)
      and lhs.dtype == jnp.float32 and undilated and kwargs.get("feature_group_count", 1) == 1):
    return conv_fns()["winograd"](lhs, rhs.astype(lhs.dtype), 1)
  return models.cpu_conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)


def variant_model(config, variant: str):
  """The config's model with `variant` applied through its `conv` field (every conv's primitive)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxswap import models  # pylint: disable=g-import-not-at-top

  parts = set(variant.split("+"))
  unknown = parts - {"base", "plain", "s2d_all", "fused", "winograd"}
  conflicting = sorted(parts & {"plain", "s2d_all", "winograd"})
  if unknown or len(conflicting) > 1:
    raise common.JaxswapError(f"--variants: cannot build {variant!r} (unknown or conflicting "
                              f"{sorted(unknown) or conflicting})")
  base = models.create_model(config)  # on CPU: small-output stride-2 convs as patches + dot
  conv = base.conv
  if "plain" in parts:
    conv = None  # lax.conv_general_dilated for every conv
  elif "s2d_all" in parts:
    conv = s2d_conv_general_dilated
  elif "winograd" in parts:
    conv = winograd_conv_general_dilated
  cls = type(base)
  if "fused" in parts:
    if base.spec.arch != "df":
      raise common.JaxswapError(f"--variants {variant}: 'fused' needs a df model")

    class Fused(models.FaceSwapAutoencoder):
      def __call__(self, x_a, x_b):
        z_a, z_b = jnp.split(self.encode(jnp.concatenate([x_a, x_b])), 2)
        return self.decode(z_a, 0), self.decode(z_b, 1)

    cls = Fused
  return cls(base.spec, base.learn_mask, base.dtype, base.initializer, conv)


def bench_steps(config, args) -> list[dict]:
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import parallel, train  # pylint: disable=g-import-not-at-top
  config.batch_size = args.batch
  mesh = parallel.make_mesh(jax.devices()[:1])
  tx = train.make_optimizer(config.optimizer)
  host = common.synthetic_batch(args.batch, config.image_size, config.seed)
  rows, base_loss = [], None
  for variant in args.variants.split(","):
    model = variant_model(config, variant)
    init = jax.jit(functools.partial(train.create_state, model, tx, config.seed))
    batch = parallel.global_batch(host, mesh)
    fn = train.make_train_step(model, tx, config, mesh)
    timing, compiled, _ = common.time_jitted(fn, init(), batch, args.steps, args.warmup)
    first = float(compiled(init(), batch)[1]["loss"])  # step 0 from the initial state
    base_loss = first if base_loss is None else base_loss
    rows.append(dict(variant=variant, batch=args.batch, compile_s=timing.compile_s,
                     step_s=timing.median, **timing.spread(), step_times_s=timing.step_s,
                     egs_per_s=2 * args.batch / timing.median, first_loss=first,
                     loss_rel_diff=abs(first - base_loss) / abs(base_loss),
                     gflop_per_step=common.xla_cost(compiled).get("flops", 0) / 1e9,
                     temp_mb=_temp_mb(compiled)))
    print(f"  {variant}: step {timing.median:.4g} s (min {timing.spread()['min']:.4g}), "
          f"{rows[-1]['egs_per_s']:.4g} EGs/s, first loss {first:.6f}", flush=True)
  return rows


def _temp_mb(compiled) -> float | None:
  """XLA's temporary buffers of one step (memory_analysis), MB; None where it is not reported."""
  try:
    return compiled.memory_analysis().temp_size_in_bytes / 1e6
  except (AttributeError, NotImplementedError):
    return None


def layer_gflop(name: str, batch: int) -> float:
  n, c, o, k, s = LAYERS[name]
  macs = batch * (n // s) ** 2 * o * k * k * c
  return 2 * macs * (2 if name == "E1" else 3) / 1e9


def time_jax(fn, name: str, batch: int, steps: int, warmup: int):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n, c, o, k, s = LAYERS[name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, n, n, c), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, c, o), np.float32) * 0.05)
  ct = jnp.asarray(rng.standard_normal((batch, n // s, n // s, o), np.float32))
  argnums = (1,) if name == "E1" else (0, 1)
  grad = jax.jit(jax.grad(lambda x, w: jnp.vdot(fn(x, w, s), ct), argnums=argnums))
  t = common.time_python(lambda: jax.block_until_ready(grad(x, w)), steps, warmup)
  return t, grad(x, w)


def time_torch(name: str, batch: int, steps: int, warmup: int) -> common.Timing:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(common.cpu_count())
  n, c, o, k, s = LAYERS[name]
  lo, hi = _same_pads(n, k, s)
  x = torch.randn(batch, c, n, n, requires_grad=name != "E1")
  w = torch.randn(o, c, k, k, requires_grad=True)
  ct = torch.randn(batch, o, n // s, n // s)

  def step():
    xp = torch.nn.functional.pad(x, (lo, hi, lo, hi)) if lo != hi else x
    y = torch.nn.functional.conv2d(xp, w, stride=s, padding=0 if lo != hi else lo)
    y.backward(ct)
    w.grad = None
    if x.grad is not None:
      x.grad = None

  return common.time_python(step, steps, warmup)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=16, help="faces per conv call")
  parser.add_argument("--layers", default=",".join(LAYERS))
  parser.add_argument("--ideas", default="base,nchw,s2d,patches")
  parser.add_argument("--torch", action="store_true", help="also time PyTorch (oneDNN)")
  parser.add_argument("--step", action="store_true", help="time whole training steps instead")
  parser.add_argument("--config", default="configs/original.py", help="for --step")
  parser.add_argument("--variants", default="plain,base,s2d_all,fused", help="for --step")
  common.add_common_args(parser, default_steps=5)
  args = common.parse_args(parser)
  env = common.environment()
  common.print_environment(env)
  if args.step:
    config = common.load_config(args.config, args.overrides)
    rows = bench_steps(config, args)
    print()
    common.print_table(rows, [("variant", "variant"), ("batch", "batch"),
                              ("compile_s", "compile s"), ("step_s", "step s"),
                              ("min", "min s"), ("rel_iqr", "IQR/med"), ("egs_per_s", "EGs/s"),
                              ("gflop_per_step", "XLA GFLOP/step"), ("temp_mb", "temp MB"),
                              ("loss_rel_diff", "loss rel diff")])
    common.write_json(args.json, {"command": common.command_line(), "environment": env,
                                  "rows": rows, "load_average_after": common.load_average()})
    return
  fns = conv_fns()
  rows = []
  for name in args.layers.split(","):
    gflop = layer_gflop(name, args.batch)
    reference = None
    for idea in args.ideas.split(","):
      if (idea == "s2d" and LAYERS[name][4] != 2) or (
          idea == "winograd" and LAYERS[name][3:] != (3, 1)):
        continue
      timing, grads = time_jax(fns[idea], name, args.batch, args.steps, args.warmup)
      if reference is None:
        reference = grads
      err = max(float(np.max(np.abs(np.asarray(g) - np.asarray(r))) / (np.max(np.abs(r)) + 1e-12))
                for g, r in zip(grads, reference))
      rows.append(dict(layer=name, idea=idea, batch=args.batch, gflop=gflop, step_s=timing.median,
                       **timing.spread(), gflops=gflop / timing.median, rel_err_vs_base=err))
      print(f"  {name} {idea}: {timing.median * 1e3:.4g} ms, {gflop / timing.median:.4g} GFLOP/s "
            f"(rel. err {err:.1e})", flush=True)
    if args.torch:
      timing = time_torch(name, args.batch, args.steps, args.warmup)
      rows.append(dict(layer=name, idea="torch", batch=args.batch, gflop=gflop,
                       step_s=timing.median, **timing.spread(), gflops=gflop / timing.median))
      print(f"  {name} torch: {timing.median * 1e3:.4g} ms, {gflop / timing.median:.4g} GFLOP/s",
            flush=True)
  print()
  common.print_table(rows, [("layer", "layer"), ("idea", "idea"), ("batch", "batch"),
                            ("gflop", "GFLOP"), ("step_s", "fwd+bwd s"), ("rel_iqr", "IQR/med"),
                            ("gflops", "GFLOP/s"), ("rel_err_vs_base", "rel err")])
  common.write_json(args.json, {"command": common.command_line(), "environment": env,
                                "rows": rows, "load_average_after": common.load_average()})


if __name__ == "__main__":
  common.run_cli(main)
