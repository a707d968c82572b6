"""Training throughput of the jitted step: compile time, step time, EGs/s, XLA FLOPs and MFU.

    python benchmarks/train_throughput.py --config configs/original.py --batch 16 --batch 64 \
        [--dtype bfloat16] [--peak-tflops X] [--steps N] [--devices K] [--model-only] \
        [--compare-torch] [--faceswap-loss] [--data-dir DIR | --build-from VIDEO_A VIDEO_B]
        [--rounds R] [--profile DIR] [--keep-going] [--no-xla-defaults] [--config.KEY=VALUE ...]
        --json OUT.json

Batch is per identity and global (all devices); EGs/s = 2 x batch / step time (faceswap's
figure). Modes: "full" is `jaxswap.train.make_train_step` exactly (on-device augmentation, loss,
Adam); "model-only" is the same step without augmentation (inputs = targets = the faces), the
like-for-like partner of the PyTorch twin (`--compare-torch`, see benchmarks/torch_twin.py).
Without --data-dir every step sees one random uint8 batch made once on the host and placed on the
mesh before timing; with --data-dir each timed step takes the next batch of
`jaxswap.data.loader.StepLoader.iterate` (placement on the mesh in its background thread, as in
`jaxswap.train`), so the figure is end to end; `--build-from A B` first builds that dataset from two
videos with `jaxswap.prepare` in a temporary folder. End-to-end rows report the time each step
spent blocked on the loader (`loader wait`): near 0 means the input pipeline kept up.
`--faceswap-loss` also times every mode with faceswap's default training loss (FACESWAP_LOSS).
`--rounds R` times every cell R times in turn (jax modes, then the twin, again and again), so
that both sides see the same slow and fast minutes of a shared machine; the comparison then also
gives the jax / torch ratio of each round and their median.
`--profile DIR` traces `--profile-steps` more steps of every jax cell with jax.profiler (traces
kept under DIR) and reports where the device time went, per HLO op and category (cuDNN
convolutions, matmuls, elementwise/reduction fusions, copies) and how busy the device was
(benchmarks/profile_ops.py); the rows' "profile" field holds it.
The CPU defaults of the entry points (XLA flags: jaxswap.xla_flags; glibc malloc:
jaxswap.host_malloc) apply unless the user set their own or `--no-xla-defaults` is given; the JSON
records which. The malloc settings are process-wide, so the twin runs with them too (like for
like); `python benchmarks/torch_twin.py --no-xla-defaults` times it with glibc's own malloc, as
PyTorch runs out of the box.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import flops  # pylint: disable=g-import-not-at-top,wrong-import-position
import profile_ops  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxswap.errors import JaxswapError  # pylint: disable=g-import-not-at-top,wrong-import-position

COLUMNS = [("config", "config"), ("batch", "batch"), ("devices", "dev"), ("dtype", "dtype"),
           ("mode", "mode"), ("loss", "loss"), ("compile_s", "compile s"), ("step_s", "step s"),
           ("rel_iqr", "IQR/med"), ("egs_per_s", "EGs/s"), ("images_per_s_per_device", "img/s/dev"),
           ("gflop_per_step_per_device", "XLA GFLOP/step/dev"), ("achieved_gflops", "GFLOP/s/dev"),
           ("model_gflop_per_step", "model GFLOP/step"), ("mfu", "MFU"),
           ("loader_wait_fraction", "loader wait"), ("error", "error")]

# faceswap's defaults for training Original: SSIM (its DSSIM, (1 - SSIM) / 2) + MSE at 100 %,
# penalised mask loss (both images masked, mean over all pixels), eye multiplier 3, mouth
# multiplier 2. jaxswap's priority map merges eyes and mouth, so one weight (3, the eyes') stands
# for both; the weight's value does not change the cost of the step.
FACESWAP_LOSS = {"mae": 0.0, "mse": 1.0, "dssim": 1.0, "ms_ssim": 0.0, "masked": True,
                 "eye_mouth_weight": 3.0}
# A step counts as loader-bound when it waited on the loader for more than this share of it.
LOADER_BOUND = 0.05


def with_loss(config, loss: str):
  """The config unchanged ("recipe") or with faceswap's default loss ("faceswap")."""
  if loss == "recipe":
    return config
  out = copy.deepcopy(config)
  for key, value in FACESWAP_LOSS.items():
    out.loss[key] = value
  return out


def _row(config, batch: int, devices: int, mode: str, timing: common.Timing, cost: dict,
         peak_tflops: float | None, loss: str = "recipe") -> dict:
  step_s = timing.median
  xla_flops = cost.get("flops")
  row = dict(config=config.model.name, batch=batch, devices=devices, dtype=config.dtype,
             mode=mode, loss=loss, loss_weights=config.loss.to_dict(),
             compile_s=timing.compile_s or None, step_s=step_s, **timing.spread(),
             step_times_s=timing.step_s, egs_per_s=2 * batch / step_s,
             images_per_s_per_device=2 * batch / step_s / devices)
  if xla_flops:
    row.update(xla_cost_per_device=cost, gflop_per_step_per_device=xla_flops / 1e9,
               achieved_gflops=xla_flops / step_s / 1e9,
               mfu=common.mfu(xla_flops, step_s, peak_tflops))
  model_flops = flops.model_train_flops(models_spec(config), config.model.learn_mask, batch)
  row.update(model_gflop_per_step=model_flops / 1e9,
             model_gflops_per_device=model_flops / devices / step_s / 1e9,
             mfu_model_flops=common.mfu(model_flops / devices, step_s, peak_tflops))
  if timing.wait_s:
    waits = timing.wait_s
    row.update(loader_wait_s=waits, loader_wait_median_s=statistics.median(waits),
               loader_wait_max_s=max(waits),
               loader_wait_fraction=sum(waits) / sum(timing.step_s),
               loader_bound_steps=sum(w > LOADER_BOUND * t for w, t in zip(waits, timing.step_s)))
  return row


def models_spec(config):
  from jaxswap import models  # pylint: disable=g-import-not-at-top
  return models.VARIANTS[config.model.name]


def bench_config(config, batches, args, mesh, data_dir: str | None, rows: list[dict]) -> None:
  """Every requested mode and loss at every batch size for one config; appends one row per cell.

  With --keep-going a failing batch size (e.g. out of device memory) becomes a row with its
  error and the next one runs.
  """
  for batch in batches:
    try:
      rows += _bench_batch(config, batch, args, mesh, data_dir)
    except Exception as e:  # pylint: disable=broad-except
      if not args.keep_going:
        raise
      msg = " ".join(str(e).split())[:300]
      print(f"  {config.model.name} batch {batch}: FAILED ({type(e).__name__}: {msg})", flush=True)
      rows.append(dict(config=config.model.name, batch=batch, dtype=config.dtype,
                       error=f"{type(e).__name__}: {msg}"))


def _bench_batch(config, batch: int, args, mesh, data_dir: str | None) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import models, parallel, train  # pylint: disable=g-import-not-at-top
  from jaxswap.data import loader as data  # pylint: disable=g-import-not-at-top

  devices = mesh.devices.size
  config.batch_size = batch
  parallel.check_batch_size(batch, mesh)
  model = models.create_model(config)
  tx = train.make_optimizer(config.optimizer)
  init = jax.jit(functools.partial(train.create_state, model, tx, config.seed),
                 out_shardings=parallel.replicated(mesh))
  if data_dir:
    loader = data.StepLoader(data_dir, args.data_name or config.data.name, "train", batch,
                             seed=config.seed, workers=config.data.workers,
                             prefetch=config.data.prefetch,
                             cache_mb=config.data.cache_mb)
    if loader.spec.image_size != config.image_size:
      raise JaxswapError(f"{data_dir} holds {loader.spec.image_size} px faces, but "
                         f"{config.model.name} takes {config.image_size} px")
    host = loader.batch(0)
  else:
    loader, host = None, common.synthetic_batch(batch, config.image_size, config.seed)
  example = parallel.global_batch(host, mesh)
  place = functools.partial(parallel.global_batch, mesh=mesh)
  state = init()
  cells = []  # per jax loss x mode: its config, compiled step, Timing and per-round medians
  for loss in args.losses:
    cfg = with_loss(config, loss)
    for mode in args.modes:
      make = functools.partial(train.make_train_step, augment=mode == "full")
      fn = make(model, tx, cfg, mesh)
      it = next_batch = None
      if loader is not None:
        it = loader.iterate(0, place=place)  # as jaxswap.train feeds its step
        next_batch = lambda it=it: next(it)[1]  # noqa: E731
      timing, compiled, state = common.time_jitted(fn, state, example, args.steps, args.warmup,
                                                   next_batch=next_batch)
      if it is not None:
        it.close()  # stops the loader's background thread
      profile = None
      if args.profile and it is None:
        name = f"{config.model.name}_{config.dtype}_b{batch}_{mode}_{loss}"
        profile, state = profile_ops.profile_compiled(
            compiled, state, example, args.profile_steps, os.path.join(args.profile, name))
        profile_ops.print_summary(profile, name)
      cells.append(dict(cfg=cfg, loss=loss, mode=mode, compiled=compiled, timing=timing,
                        rounds=[timing.median], profile=profile))
  torch_cell = None
  if args.compare_torch:  # the PyTorch twin trains with the recipe's loss (MAE) only
    import torch_twin  # pylint: disable=g-import-not-at-top
    step, info = torch_twin.make_torch_step(config, host, args.torch_threads,
                                            args.torch_channels_last)
    timing = common.time_python(step, args.steps, args.warmup)
    torch_cell = dict(step=step, info=info, timing=timing, rounds=[timing.median])
  # --rounds: the same cells again, in turn, so that jax and the twin share the machine's slow
  # and fast minutes (a 2-core VM drifts 10-25 % from minute to minute); one warm-up each.
  for _ in range(1, args.rounds):
    for cell in cells:
      more, state = common.time_compiled(cell["compiled"], state, example, args.steps, 1)
      cell["timing"].step_s += more.step_s
      cell["rounds"].append(more.median)
    if torch_cell:
      more = common.time_python(torch_cell["step"], args.steps, 1)
      torch_cell["timing"].step_s += more.step_s
      torch_cell["rounds"].append(more.median)
  rows, jax_model_row = [], None
  for cell in cells:
    row = _row(cell["cfg"], batch, devices, cell["mode"], cell["timing"],
               common.xla_cost(cell["compiled"]), args.peak_tflops, cell["loss"])
    row["data"] = "synthetic batch (fixed)" if loader is None else f"StepLoader: {data_dir}"
    row["round_step_s"] = cell["rounds"]
    if cell["profile"]:
      row["profile"] = cell["profile"]
    rows.append(row)
    if cell["mode"] == "model-only" and cell["loss"] == "recipe":
      jax_model_row = row
    _progress(row)
  if torch_cell:
    cost = dict(jax_model_row.get("xla_cost_per_device", {})) if jax_model_row and devices == 1 \
        else {}
    row = _row(config, batch, 1, "torch", torch_cell["timing"], cost, args.peak_tflops)
    row.update(torch_cell["info"], flops_source="XLA count of the jax model-only step (same "
               "network, loss)", round_step_s=torch_cell["rounds"])
    rows.append(row)
    _progress(row)
  del state
  return rows


def _progress(row: dict) -> None:
  print(f"  {row['config']} batch {row['batch']} {row['mode']}: step {row['step_s']:.4g} s "
        f"(min {row['min']:.4g}, max {row['max']:.4g}), {row['egs_per_s']:.4g} EGs/s", flush=True)


def print_comparison(rows: list[dict]) -> None:
  """jaxswap vs PyTorch EGs/s side by side, per (config, batch).

  The twin trains with MAE; the faceswap-loss column (SSIM + MSE, masked, priority) costs more
  than that, so a ratio above 1 there is a conservative win.
  """
  table = {}
  for r in rows:
    if "egs_per_s" in r:
      key = r["mode"] if r.get("loss", "recipe") == "recipe" else f"{r['mode']} faceswap"
      table.setdefault((r["config"], r["batch"]), {})[key] = r["egs_per_s"]
  out = []
  for (name, batch), by_mode in table.items():
    if "torch" not in by_mode:
      continue
    line = {"config": name, "batch": batch, "full": by_mode.get("full"),
            "model": by_mode.get("model-only"), "fs": by_mode.get("full faceswap"),
            "torch": by_mode["torch"]}
    for key in ("full", "model", "fs"):
      if line[key]:
        line[f"{key}_ratio"] = line[key] / line["torch"]
    out.append(line)
  rounds = round_ratios(rows)
  if rounds:
    print("\nPer round (jax and the twin timed in turn), jax / torch EGs/s: median [min .. max]")
    for (name, batch, key), ratios in rounds.items():
      print(f"  {name} batch {batch} {key}: {statistics.median(ratios):.3f} "
            f"[{min(ratios):.3f} .. {max(ratios):.3f}] over {len(ratios)} rounds")
  if out:
    print("\nEGs/s side by side (jax / torch > 1 means jaxswap is faster):")
    common.print_table(out, [("config", "config"), ("batch", "batch"), ("full", "jax full step"),
                             ("model", "jax model-only"), ("fs", "jax full, faceswap loss"),
                             ("torch", "torch twin (MAE)"), ("full_ratio", "full / torch"),
                             ("model_ratio", "model-only / torch"),
                             ("fs_ratio", "faceswap-loss full / torch")])


def round_ratios(rows: list[dict]) -> dict[tuple, list[float]]:
  """{(config, batch, jax cell): [jax / torch EGs/s of each round]} where rounds were timed."""
  torch_rounds = {(r["config"], r["batch"]): r["round_step_s"] for r in rows
                  if r.get("mode") == "torch" and len(r.get("round_step_s", [])) > 1}
  out = {}
  for r in rows:
    key = (r.get("config"), r.get("batch"))
    if r.get("mode") in (None, "torch") or key not in torch_rounds:
      continue
    label = r["mode"] if r.get("loss", "recipe") == "recipe" else f"{r['mode']} faceswap"
    out[key + (label,)] = [t / j for j, t in zip(r["round_step_s"], torch_rounds[key])]
  return out


def print_loader(rows: list[dict]) -> None:
  """Whether the input pipeline was ever the bottleneck in the end-to-end rows."""
  fed = [r for r in rows if "loader_wait_fraction" in r]
  for r in fed:
    verdict = ("never the bottleneck" if not r["loader_bound_steps"] else
               f"the bottleneck in {r['loader_bound_steps']} of {len(r['step_times_s'])} steps")
    print(f"# loader, {r['config']} batch {r['batch']} {r['mode']} ({r['loss']} loss): waited "
          f"{100 * r['loader_wait_fraction']:.1f} % of the step time (max "
          f"{1000 * r['loader_wait_max_s']:.1f} ms): {verdict} "
          f"(a step counts when it waited > {100 * LOADER_BOUND:.0f} % of it)")


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
  parser.add_argument("--build-from", nargs=2, metavar=("VIDEO_A", "VIDEO_B"), default=None,
                      help="build a jaxswap_faces dataset from two videos (or photo folders) "
                           "with jaxswap.prepare in a temporary folder, and time on it")
  parser.add_argument("--build-every-n", type=int, default=1,
                      help="--build-from: use every n-th video frame")
  parser.add_argument("--build-keep", default=None, metavar="DIR",
                      help="--build-from: build (and keep, and reuse) the dataset here")
  parser.add_argument("--faceswap-loss", action="store_true",
                      help="also time every mode with faceswap's default loss (SSIM + MSE, "
                           "masked, eyes/mouth weighted)")
  parser.add_argument("--keep-going", action="store_true",
                      help="a failing batch size (e.g. out of memory) becomes a row with its "
                           "error instead of stopping the run")
  parser.add_argument("--data-name", default=None, help="default: the config's data.name")
  parser.add_argument("--rounds", type=int, default=1,
                      help="time every cell (jax modes and the twin) this many times, in turn, "
                           "--steps each; ratios are then given per round (synthetic batch only)")
  parser.add_argument("--profile", default=None, metavar="DIR",
                      help="trace --profile-steps more steps of every jax cell into DIR and "
                           "report device time per HLO op and category (synthetic batch only)")
  parser.add_argument("--profile-steps", type=int, default=3)
  common.add_common_args(parser, default_steps=5)
  args = common.parse_args(parser)
  args.modes = ([] if args.no_full else ["full"]) + (
      ["model-only"] if args.model_only or args.compare_torch else [])
  if not args.modes:
    parser.error("--no-full needs --model-only or --compare-torch")
  if args.data_dir and args.build_from:
    parser.error("--data-dir and --build-from are alternatives")
  if args.rounds < 1:
    parser.error("--rounds must be positive")
  if args.rounds > 1 and (args.data_dir or args.build_from):
    parser.error("--rounds times the fixed synthetic batch; it cannot be combined with "
                 "--data-dir or --build-from")
  if args.profile and (args.data_dir or args.build_from):
    parser.error("--profile traces the fixed synthetic batch; it cannot be combined with "
                 "--data-dir or --build-from")
  if args.profile_steps < 1:
    parser.error("--profile-steps must be positive")
  if args.build_every_n < 1:
    parser.error("--build-every-n must be positive")
  args.losses = ["recipe"] + (["faceswap"] if args.faceswap_loss else [])
  if args.build_from:
    args.data_name = args.data_name or "jaxswap_faces"
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
  built = None
  if args.build_from:
    import bench_data  # pylint: disable=g-import-not-at-top
    built = bench_data.BuiltDatasets(*args.build_from, every_n=args.build_every_n,
                                     keep_dir=args.build_keep)
  rows, interrupted = [], False
  try:
    for config in configs:
      data_dir = built.data_dir(config.image_size) if built else args.data_dir
      bench_config(config, args.batch or [config.batch_size], args, mesh, data_dir, rows)
  except KeyboardInterrupt:  # Ctrl-C or a time budget (gpu.sh): keep the rows measured so far
    interrupted = True
    print("# interrupted: writing the rows measured so far", flush=True)
  finally:
    if built:
      built.close()
  print()
  common.print_table(rows, COLUMNS)
  print_comparison(rows)
  print_loader(rows)
  common.write_json(args.json, {
      "command": common.command_line(), "environment": env, "cost_note": common.COST_NOTE,
      "mfu_formula": common.MFU_NOTE, "peak_tflops": args.peak_tflops,
      "egs_note": "EGs/s = 2 * batch (per identity, global) / median step time",
      "faceswap_loss": FACESWAP_LOSS if args.faceswap_loss else None,
      "dataset": built.report if built else args.data_dir,
      "loader_bound_threshold": LOADER_BOUND,
      "rows": rows,
      "round_ratios": {" ".join(map(str, k)): v for k, v in round_ratios(rows).items()},
      "interrupted": interrupted, "load_average_after": common.load_average()})
  if interrupted:  # skip interpreter teardown: it may wait on the interrupted device work
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # pylint: disable=protected-access


if __name__ == "__main__":
  common.run_cli(main)
