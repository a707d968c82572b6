"""Data-parallel scaling: the train step on meshes over the first 1, 2, 4, 8 devices.

    python benchmarks/scaling.py --config configs/tiny.py --per-device-batch 4 --json OUT.json

The per-device batch is fixed, so the global batch grows with the mesh (weak scaling), exactly as
`jaxswap.train` would run on that many devices: params replicated, batch split over "data".
Scaling efficiency = (EGs/s on k devices) / (k x EGs/s on 1 device) (on the smallest mesh
measured when 1 is not among --devices, scaled by its size).

On a CPU-only host the script simulates 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count
=8, set before jax is imported). Those devices share the same cores, so the figure there measures
the cost of the sharded program (partitioning, all-reduce of gradients), not real speed-up;
expect efficiency near 1/k when the step is compute-bound. On a GPU host the real GPUs are used.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxswap.errors import JaxswapError  # pylint: disable=g-import-not-at-top,wrong-import-position

SIMULATED_CPU_DEVICES = 8


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--per-device-batch", type=int, default=4, help="per identity, per device")
  parser.add_argument("--devices", default="1,2,4,8", help="comma-separated mesh sizes")
  parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
  parser.add_argument("--model-only", action="store_true",
                      help="time the step without augmentation")
  common.add_common_args(parser, default_steps=5)
  args = common.parse_args(parser)
  try:
    sizes = sorted({int(k) for k in args.devices.split(",")})
  except ValueError:
    parser.error(f"--devices={args.devices!r}: expected comma-separated integers")
  if not sizes or sizes[0] < 1:
    parser.error("--devices: mesh sizes must be positive")
  # Harmless on GPU/TPU hosts (it only shapes the CPU platform); must precede the jax import.
  common.force_host_devices(max(SIMULATED_CPU_DEVICES, sizes[-1]))

  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import models, parallel, train  # pylint: disable=g-import-not-at-top

  config = common.load_config(args.config, args.overrides)
  if args.dtype:
    config.dtype = args.dtype
  available = jax.devices()
  if sizes[-1] > len(available):
    print(f"# only {len(available)} {jax.default_backend()} devices: skipping "
          f"{[k for k in sizes if k > len(available)]}")
    sizes = [k for k in sizes if k <= len(available)]
  if not sizes:
    raise JaxswapError(f"--devices={args.devices}: none fits the {len(available)} devices")
  env = common.environment()
  common.print_environment(env)
  if jax.default_backend() == "cpu":
    print(f"# {len(available)} simulated CPU devices share {common.cpu_count()} cores: this checks "
          "the sharded step's overhead, it is not a speed-up measurement")

  model = models.create_model(config)
  tx = train.make_optimizer(config.optimizer)
  mode = "model-only" if args.model_only else "full"
  make = functools.partial(train.make_train_step, augment=not args.model_only)
  rows = []
  for k in sizes:
    mesh = parallel.make_mesh(available[:k])
    batch = args.per_device_batch * k
    config.batch_size = batch
    init = jax.jit(functools.partial(train.create_state, model, tx, config.seed),
                   out_shardings=parallel.replicated(mesh))
    example = parallel.global_batch(common.synthetic_batch(batch, config.image_size, config.seed),
                                    mesh)
    timing, compiled, _ = common.time_jitted(make(model, tx, config, mesh), init(), example,
                                             args.steps, args.warmup)
    cost = common.xla_cost(compiled)
    rows.append(dict(config=config.model.name, mode=mode, devices=k, batch=batch,
                     per_device_batch=args.per_device_batch, compile_s=timing.compile_s,
                     step_s=timing.median, **timing.spread(), step_times_s=timing.step_s,
                     egs_per_s=2 * batch / timing.median,
                     images_per_s_per_device=2 * batch / timing.median / k,
                     gflop_per_step_per_device=cost.get("flops", 0) / 1e9 or None))
    print(f"  {k} devices: step {timing.median:.4g} s, {rows[-1]['egs_per_s']:.4g} EGs/s",
          flush=True)
  base = rows[0]["egs_per_s"] / rows[0]["devices"]
  for r in rows:
    r["speedup"] = r["egs_per_s"] / rows[0]["egs_per_s"]
    r["efficiency"] = r["egs_per_s"] / (r["devices"] * base)
  print()
  common.print_table(rows, [("config", "config"), ("mode", "mode"), ("devices", "dev"),
                            ("batch", "global batch"), ("compile_s", "compile s"),
                            ("step_s", "step s"), ("rel_iqr", "IQR/med"), ("egs_per_s", "EGs/s"),
                            ("images_per_s_per_device", "img/s/dev"), ("speedup", "speed-up"),
                            ("efficiency", "efficiency")])
  common.write_json(args.json, {
      "command": common.command_line(), "environment": env,
      "efficiency_formula": ("EGs/s(k) / (k * EGs/s(k0) / k0), k0 = smallest mesh measured "
                             "(normally 1); per-device batch fixed"),
      "rows": rows, "load_average_after": common.load_average()})


if __name__ == "__main__":
  common.run_cli(main)
