"""Training throughput of the jitted step: compile time, step time, EGs/s, XLA FLOPs and MFU.

    python benchmarks/train_throughput.py --config configs/original.py --batch 16 --batch 64 \
        [--dtype bfloat16] [--peak-tflops X] [--steps N] [--devices K] [--model-only] \
        [--compare-torch] [--data-dir DIR] [--config.KEY=VALUE ...] --json OUT.json

Batch is per identity and global (all devices); EGs/s = 2 x batch / step time (faceswap's
figure). Modes: "full" is `jaxswap.train.make_train_step` exactly (on-device augmentation, loss,
Adam); "model-only" is the same step without augmentation (inputs = targets = the faces), the
like-for-like partner of the PyTorch twin (`--compare-torch`, see benchmarks/torch_twin.py).
Without --data-dir every step sees one random uint8 batch made once on the host and placed on the
mesh before timing; with --data-dir each timed step takes the next batch of
`jaxswap.data.loader.StepLoader.iterate` and assembles it on the mesh, so the figure is end to end.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxswap.errors import JaxswapError  # pylint: disable=g-import-not-at-top,wrong-import-position

COLUMNS = [("config", "config"), ("batch", "batch"), ("devices", "dev"), ("dtype", "dtype"),
           ("mode", "mode"), ("compile_s", "compile s"), ("step_s", "step s"),
           ("rel_iqr", "IQR/med"), ("egs_per_s", "EGs/s"), ("images_per_s_per_device", "img/s/dev"),
           ("gflop_per_step_per_device", "XLA GFLOP/step/dev"), ("achieved_gflops", "GFLOP/s/dev"),
           ("model_gflop_per_step", "model GFLOP/step"), ("mfu", "MFU")]


def _row(config, batch: int, devices: int, mode: str, timing: common.Timing, cost: dict,
         peak_tflops: float | None) -> dict:
  step_s = timing.median
  flops = cost.get("flops")
  row = dict(config=config.model.name, batch=batch, devices=devices, dtype=config.dtype,
             mode=mode, compile_s=timing.compile_s or None, step_s=step_s, **timing.spread(),
             step_times_s=timing.step_s, egs_per_s=2 * batch / step_s,
             images_per_s_per_device=2 * batch / step_s / devices)
  if flops:
    row.update(xla_cost_per_device=cost, gflop_per_step_per_device=flops / 1e9,
               achieved_gflops=flops / step_s / 1e9, mfu=common.mfu(flops, step_s, peak_tflops))
  model_flops = common.model_train_flops(models_spec(config), config.model.learn_mask, batch)
  row.update(model_gflop_per_step=model_flops / 1e9,
             model_gflops_per_device=model_flops / devices / step_s / 1e9,
             mfu_model_flops=common.mfu(model_flops / devices, step_s, peak_tflops))
  return row


def models_spec(config):
  from jaxswap import models  # pylint: disable=g-import-not-at-top
  return models.VARIANTS[config.model.name]


def bench_config(config, batches, args, mesh) -> list[dict]:
  """Every requested mode at every batch size for one config; one row per (batch, mode)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import models, parallel, train  # pylint: disable=g-import-not-at-top
  from jaxswap.data import loader as data  # pylint: disable=g-import-not-at-top

  devices = mesh.devices.size
  model = models.create_model(config)
  tx = train.make_optimizer(config.optimizer)
  init = jax.jit(functools.partial(train.create_state, model, tx, config.seed),
                 out_shardings=parallel.replicated(mesh))
  rows = []
  for batch in batches:
    config.batch_size = batch
    parallel.check_batch_size(batch, mesh)
    if args.data_dir:
      loader = data.StepLoader(args.data_dir, args.data_name or config.data.name, "train", batch,
                               seed=config.seed, workers=config.data.workers,
                               prefetch=config.data.prefetch)
      host = loader.batch(0)
    else:
      loader, host = None, common.synthetic_batch(batch, config.image_size, config.seed)
    example = parallel.global_batch(host, mesh)
    state = init()
    jax_model_row = None
    for mode in args.modes:
      make = functools.partial(train.make_train_step, augment=mode == "full")
      fn = make(model, tx, config, mesh)
      it = next_batch = None
      if loader is not None:
        it = loader.iterate(0)
        next_batch = lambda it=it: parallel.global_batch(next(it)[1], mesh)  # noqa: E731
      timing, compiled, state = common.time_jitted(fn, state, example, args.steps, args.warmup,
                                                   next_batch=next_batch)
      if it is not None:
        it.close()  # stops the loader's background thread
      row = _row(config, batch, devices, mode, timing, common.xla_cost(compiled), args.peak_tflops)
      rows.append(row)
      jax_model_row = row if mode == "model-only" else jax_model_row
      _progress(row)
    if args.compare_torch:
      import torch_twin  # pylint: disable=g-import-not-at-top
      timing, info = torch_twin.time_torch(config, host, args.steps, args.warmup,
                                           args.torch_threads, args.torch_channels_last)
      cost = dict(jax_model_row["xla_cost_per_device"]) if jax_model_row and devices == 1 else {}
      row = _row(config, batch, 1, "torch", timing, cost, args.peak_tflops)
      row.update(info, flops_source="XLA count of the jax model-only step (same network, loss)")
      rows.append(row)
      _progress(row)
    del state
  return rows


def _progress(row: dict) -> None:
  print(f"  {row['config']} batch {row['batch']} {row['mode']}: step {row['step_s']:.4g} s "
        f"(min {row['min']:.4g}, max {row['max']:.4g}), {row['egs_per_s']:.4g} EGs/s", flush=True)


def print_comparison(rows: list[dict]) -> None:
  """jaxswap vs PyTorch EGs/s side by side, per (config, batch)."""
  table = {}
  for r in rows:
    table.setdefault((r["config"], r["batch"]), {})[r["mode"]] = r["egs_per_s"]
  out = []
  for (name, batch), by_mode in table.items():
    if "torch" not in by_mode:
      continue
    line = {"config": name, "batch": batch, "full": by_mode.get("full"),
            "model": by_mode.get("model-only"), "torch": by_mode["torch"]}
    if line["model"]:
      line["ratio"] = line["model"] / line["torch"]
    out.append(line)
  if out:
    print("\nEGs/s side by side (jax model-only / torch > 1 means jaxswap is faster):")
    common.print_table(out, [("config", "config"), ("batch", "batch"), ("full", "jax full step"),
                             ("model", "jax model-only"), ("torch", "torch"),
                             ("ratio", "jax model-only / torch")])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", action="append", required=True,
                      help="configs/NAME.py; repeatable")
  parser.add_argument("--batch", type=int, action="append", help="per identity, global; repeatable "
                      "(default: the config's batch_size)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="peak dense TFLOP/s of ONE device at --dtype, for MFU")
  parser.add_argument("--devices", type=int, default=None,
                      help="mesh over the first K devices (CPU: simulates K host devices)")
  parser.add_argument("--model-only", action="store_true",
                      help="also time the step without augmentation")
  parser.add_argument("--no-full", action="store_true", help="skip the full (augmented) step")
  parser.add_argument("--compare-torch", action="store_true",
                      help="also time the PyTorch twin (implies --model-only)")
  parser.add_argument("--torch-threads", type=int, default=None, help="default: all usable cores")
  parser.add_argument("--torch-channels-last", action="store_true")
  parser.add_argument("--data-dir", default=None,
                      help="TFDS data_dir: time real batches end to end")
  parser.add_argument("--data-name", default=None, help="default: the config's data.name")
  common.add_common_args(parser, default_steps=5)
  args = common.parse_args(parser)
  args.modes = ([] if args.no_full else ["full"]) + (
      ["model-only"] if args.model_only or args.compare_torch else [])
  if not args.modes:
    parser.error("--no-full needs --model-only or --compare-torch")
  if args.devices and args.devices > 1:
    common.force_host_devices(args.devices)

  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import parallel  # pylint: disable=g-import-not-at-top

  available = jax.devices()
  k = args.devices or len(available)
  if k > len(available):
    raise JaxswapError(f"--devices={k}, but only {len(available)} {jax.default_backend()} "
                       "devices are visible")
  mesh = parallel.make_mesh(available[:k])
  configs = []  # every config checked before anything is timed
  for path in args.config:
    config = common.load_config(path, args.overrides)
    if args.dtype:
      config.dtype = args.dtype
    for batch in args.batch or [config.batch_size]:
      parallel.check_batch_size(batch, mesh)
    if args.compare_torch:
      import torch_twin  # pylint: disable=g-import-not-at-top
      torch_twin.check_config(config)
      torch_twin.require_torch()
    configs.append(config)
  env = common.environment()
  common.print_environment(env)
  print(f"# {common.COST_NOTE}")
  if args.peak_tflops:
    print(f"# {common.MFU_NOTE}, peak_tflops={args.peak_tflops}")
  if args.compare_torch:
    print(f"# threads: torch.set_num_threads({args.torch_threads or common.cpu_count()}); XLA:CPU "
          f"runs ops on its intra-op Eigen pool ('tf_XLAEigen' threads), one thread per usable "
          f"core ({common.cpu_count()} here)")
  rows = []
  for config in configs:
    rows += bench_config(config, args.batch or [config.batch_size], args, mesh)
  print()
  common.print_table(rows, COLUMNS)
  print_comparison(rows)
  common.write_json(args.json, {
      "command": common.command_line(), "environment": env, "cost_note": common.COST_NOTE,
      "mfu_formula": common.MFU_NOTE, "peak_tflops": args.peak_tflops,
      "egs_note": "EGs/s = 2 * batch (per identity, global) / median step time",
      "rows": rows, "load_average_after": common.load_average()})


if __name__ == "__main__":
  common.run_cli(main)
