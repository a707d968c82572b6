"""A PyTorch twin of jaxswap's shared-encoder networks, to compare training throughput.

    python benchmarks/torch_twin.py --config configs/original.py --batch 16 --verify --json OUT

The twin is built from the same `jaxswap.models.ModelSpec` (the non-residual, mask-free variants:
`original`, `lightweight`, `tiny`) with the same layers in NCHW: Keras/Flax "SAME" padding (the
asymmetric (1, 2) pad of a 5x5 stride-2 conv on even sizes), LeakyReLU 0.1, Dense layers that
flatten and reshape in NHWC order, pixel shuffle with the (r_h, r_w, c) channel order, and a
float32 5x5 output conv + sigmoid. `--verify` copies jaxswap's initial parameters into the twin
and checks that both give the same outputs. One training step = both identities (MAE A + MAE B,
one backward), Adam with the config's lr/betas/eps — the `original` recipe: lr 5e-5,
betas (0.5, 0.999), eps 1e-7. There is no augmentation: compare with jaxswap's "model-only" step.

PyTorch is never a dependency of jaxswap; install it for benchmarks only (CPU build):
`pip install torch==2.13.0`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxswap.errors import JaxswapError  # pylint: disable=g-import-not-at-top,wrong-import-position

# Parameter counts the twin must reproduce exactly (jaxswap.models.count_params of the variant).
EXPECTED_PARAMS = {"original": 82_062_470}


def require_torch() -> None:
  _torch()


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise JaxswapError("PyTorch is not installed; for the benchmark twin only: "
                       "pip install torch==2.13.0") from None
  return torch


def build_twin(spec):
  """nn.Module twin of FaceSwapAutoencoder(spec), no mask: forward(x_a, x_b) -> (rgb_a, rgb_b)."""
  torch = _torch()
  nn, F = torch.nn, torch.nn.functional
  if spec.residual:
    raise JaxswapError("the torch twin covers the non-residual variants "
                       "(original, lightweight, tiny), not sae128")

  def pixel_shuffle(x, r=2):
    # Channel index (i * r + j) * oc + c, as jaxswap.models.pixel_shuffle / TF depth_to_space
    # (torch.nn.PixelShuffle would use c * r * r + i * r + j).
    b, ch, h, w = x.shape
    oc = ch // (r * r)
    x = x.reshape(b, r, r, oc, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, oc, h * r, w * r)

  class SameConv(nn.Conv2d):
    """Conv2d with TF/Flax "SAME" padding (extra pixel at the bottom/right when odd)."""

    def __init__(self, cin, cout, k, stride=1):
      super().__init__(cin, cout, k, stride=stride, padding=0)

    def forward(self, x):
      k, s = self.kernel_size[0], self.stride[0]
      n = x.shape[-1]
      total = max((-(-n // s) - 1) * s + k - n, 0)
      lo, hi = total // 2, total - total // 2
      if lo == hi:
        return F.conv2d(x, self.weight, self.bias, s, lo)
      return super().forward(F.pad(x, (lo, hi, lo, hi)))

  class Upscale(nn.Module):
    def __init__(self, cin, filters):
      super().__init__()
      self.conv = SameConv(cin, filters * 4, 3)

    def forward(self, x):
      return pixel_shuffle(F.leaky_relu(self.conv(x), spec.leak))

  class Encoder(nn.Module):
    def __init__(self):
      super().__init__()
      chans = (3,) + tuple(spec.encoder_filters)
      self.convs = nn.ModuleList(SameConv(a, b, 5, 2) for a, b in zip(chans, chans[1:]))
      res = spec.image_size // 2 ** len(spec.encoder_filters)
      self.dense0 = nn.Linear(res * res * chans[-1], spec.dense)
      self.dense1 = nn.Linear(spec.dense, spec.latent_res ** 2 * spec.latent_ch)
      self.upscale = Upscale(spec.latent_ch, spec.encoder_upscale)

    def forward(self, x):
      for conv in self.convs:
        x = F.leaky_relu(conv(x), spec.leak)
      x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten, like the Flax encoder
      x = self.dense1(self.dense0(x))
      x = x.reshape(-1, spec.latent_res, spec.latent_res, spec.latent_ch).permute(0, 3, 1, 2)
      return self.upscale(x)

  class Decoder(nn.Module):
    def __init__(self):
      super().__init__()
      chans = (spec.encoder_upscale,) + tuple(spec.decoder_filters)
      self.ups = nn.Sequential(*(Upscale(a, b) for a, b in zip(chans, chans[1:])))
      self.out = SameConv(chans[-1], 3, spec.out_kernel)

    def forward(self, z):
      return torch.sigmoid(self.out(self.ups(z).float()))

  class Twin(nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder, self.decoder_a, self.decoder_b = Encoder(), Decoder(), Decoder()

    def forward(self, x_a, x_b):
      return self.decoder_a(self.encoder(x_a)), self.decoder_b(self.encoder(x_b))

  return Twin()


def count_params(module) -> int:
  return sum(p.numel() for p in module.parameters())


def check_param_count(twin, name: str, jax_count: int) -> int:
  n = count_params(twin)
  assert n == jax_count, f"torch twin has {n:,} parameters, jaxswap {name!r} has {jax_count:,}"
  if name in EXPECTED_PARAMS:
    assert n == EXPECTED_PARAMS[name], f"{name}: {n:,} != {EXPECTED_PARAMS[name]:,}"
  return n


def load_jax_params(twin, params) -> None:
  """Copies Flax params (HWIO kernels, (in, out) dense) into the twin (OIHW, (out, in))."""
  torch = _torch()
  p = {k: np.asarray(v) for k, v in _flatten(params).items()}

  def conv(mod, prefix):
    mod.weight.data = torch.from_numpy(p[prefix + "/kernel"].transpose(3, 2, 0, 1).copy())
    mod.bias.data = torch.from_numpy(p[prefix + "/bias"].copy())

  def dense(mod, prefix):
    mod.weight.data = torch.from_numpy(p[prefix + "/kernel"].T.copy())
    mod.bias.data = torch.from_numpy(p[prefix + "/bias"].copy())

  for i, c in enumerate(twin.encoder.convs):
    conv(c, f"encoder/Conv_{i}")
  dense(twin.encoder.dense0, "encoder/Dense_0")
  dense(twin.encoder.dense1, "encoder/Dense_1")
  conv(twin.encoder.upscale.conv, "encoder/Upscale_0/Conv_0")
  for name in ("decoder_a", "decoder_b"):
    dec = getattr(twin, name)
    for i, up in enumerate(dec.ups):
      conv(up.conv, f"{name}/rgb_upscale{i}/Conv_0")
    conv(dec.out, f"{name}/rgb_out")


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else k
    out.update(_flatten(v, key) if hasattr(v, "items") else {key: v})
  return out


def jax_param_count(config) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import models  # pylint: disable=g-import-not-at-top
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0)))
  return models.count_params(shapes)


def verify_against_jax(config, batch: int = 2, seed: int = 0) -> float:
  """Max |jax - torch| over both decoders' outputs with jaxswap's initial parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import models  # pylint: disable=g-import-not-at-top
  torch = _torch()
  model = models.create_model(config)
  params = models.init_params(model, jax.random.PRNGKey(seed))
  twin = build_twin(model.spec)
  load_jax_params(twin, params)
  rng = np.random.default_rng(seed)
  size = model.spec.image_size
  x_a, x_b = (rng.random((batch, size, size, 3), np.float32) for _ in range(2))
  out_a, out_b = model.apply({"params": params}, x_a, x_b)
  with torch.no_grad():
    t_a, t_b = twin(*(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (x_a, x_b)))
  diffs = [np.abs(np.asarray(o["rgb"]) - t.numpy().transpose(0, 2, 3, 1)).max()
           for o, t in ((out_a, t_a), (out_b, t_b))]
  return float(max(diffs))


def check_config(config) -> None:
  loss = config.loss
  others = {k: loss[k] for k in ("mse", "dssim", "ms_ssim", "mask", "eye_mouth_weight") if loss[k]}
  if loss.mae <= 0 or others or loss.masked or config.model.learn_mask:
    raise JaxswapError(f"the torch twin trains with MAE only and no mask; this config has "
                       f"loss {loss.to_dict()} learn_mask={config.model.learn_mask}: pass e.g. "
                       "--config.loss.dssim=0 for a like-for-like comparison")
  if config.optimizer.name != "adam" or config.optimizer.clip_norm or config.optimizer.warmup_steps:
    raise JaxswapError("the torch twin implements plain Adam (no clipping, no warm-up)")


def time_torch(config, host_batch: dict, steps: int, warmup: int, threads: int | None = None,
               channels_last: bool = False) -> tuple[common.Timing, dict]:
  """Times the twin's training step on a fixed host batch (uint8 NHWC, converted every step)."""
  step, info = make_torch_step(config, host_batch, threads, channels_last)
  return common.time_python(step, steps, warmup), info


def make_torch_step(config, host_batch: dict, threads: int | None = None,
                    channels_last: bool = False) -> tuple[Callable[[], None], dict]:
  """The twin's training step on a fixed host batch, as a closure, and what it runs with."""
  torch = _torch()
  from jaxswap import models  # pylint: disable=g-import-not-at-top
  check_config(config)
  threads = threads or common.cpu_count()
  torch.set_num_threads(threads)
  torch.manual_seed(config.seed)
  spec = models.VARIANTS[config.model.name]
  twin = build_twin(spec)
  n = check_param_count(twin, config.model.name, jax_param_count(config))
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  twin = twin.to(memory_format=fmt)
  o = config.optimizer
  opt = torch.optim.Adam(twin.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  bf16 = config.dtype == "bfloat16"
  images = {k: torch.from_numpy(host_batch[f"image_{k}"]) for k in ("a", "b")}

  def step():
    x = {k: v.permute(0, 3, 1, 2).float().div(255.0).contiguous(memory_format=fmt)
         for k, v in images.items()}
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      r_a, r_b = twin(x["a"], x["b"])
    loss = (r_a.float() - x["a"]).abs().mean() + (r_b.float() - x["b"]).abs().mean()
    loss.backward()
    opt.step()

  info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "params": n,
          "memory_format": "channels_last" if channels_last else "contiguous (NCHW)",
          "mkldnn": bool(torch.backends.mkldnn.is_available())}
  return step, info


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/original.py")
  parser.add_argument("--batch", type=int, action="append", help="per identity; repeatable")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  parser.add_argument("--threads", type=int, default=None, help="default: all usable cores")
  parser.add_argument("--channels-last", action="store_true", help="torch NHWC memory format")
  parser.add_argument("--verify", action="store_true",
                      help="check the twin's outputs against jaxswap's with the same parameters")
  common.add_common_args(parser, default_steps=3)
  args = common.parse_args(parser)
  config = common.load_config(args.config, args.overrides)
  if args.dtype:
    config.dtype = args.dtype
  env = common.environment()
  common.print_environment(env)
  result = {"command": common.command_line(), "environment": env, "rows": []}
  if args.verify:
    diff = verify_against_jax(config)
    print(f"# verify: max |jaxswap - torch| over both decoders = {diff:.2e}")
    result["verify_max_abs_diff"] = diff
  rows = []
  for batch in args.batch or [config.batch_size]:
    config.batch_size = batch
    host = common.synthetic_batch(batch, config.image_size, config.seed)
    timing, info = time_torch(config, host, args.steps, args.warmup, args.threads,
                              args.channels_last)
    rows.append(dict(config=config.model.name, batch=batch, mode="torch fwd+bwd+adam",
                     step_s=timing.median, **timing.spread(), step_times_s=timing.step_s,
                     egs_per_s=2 * batch / timing.median, **info))
  common.print_table(rows, [("config", "config"), ("batch", "batch"), ("mode", "mode"),
                            ("step_s", "step s (median)"), ("rel_iqr", "IQR/med"),
                            ("egs_per_s", "EGs/s"), ("torch_threads", "threads")])
  result["rows"] = rows
  result["load_average_after"] = common.load_average()
  common.write_json(args.json, result)


if __name__ == "__main__":
  common.run_cli(main)
