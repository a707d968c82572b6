"""Host input pipeline vs the train step: can `jaxswap.data.loader.StepLoader` keep the device fed?

    python benchmarks/input_pipeline.py --data-dir DIR --name jaxswap_faces --batch 64 \
        [--config configs/original.py] [--workers 2] [--prefetch 2] [--cache-mb MB] --json OUT.json

Measures, per batch size (per identity, per process):
  loader     StepLoader.iterate (background thread + decode pool) with an instant consumer:
             batches/s and faces/s (2 x batch per batch) the host can produce.
  serial     StepLoader.batch without a pool: one thread's decode rate, for reference.
  cached     StepLoader.iterate once every face is in the decoded-face cache (config
             data.cache_mb, or --cache-mb; the loader is first run through one epoch): the
             rate from the second epoch on. "loader" and "serial" decode every face.
  transfer   parallel.global_batch (host -> mesh) of one batch.
  step       the config's jitted train step on a fixed batch: the rate the device consumes.
  end-to-end the step fed by the loader (iterate + transfer + step), as jaxswap.train runs it.
headroom = loader batches/s / step steps/s; below 1 the device waits for the host. On a CPU-only
host the loader's threads compete with XLA for the same cores, which end-to-end shows.
`--step-from TRAIN.json` reuses a train_throughput.py measurement instead of timing the step.
Without --data-dir, a synthetic dataset (jaxswap.data.datasets.build_synthetic, the config's
image size) is built in a temporary folder first.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxswap.errors import JaxswapError  # pylint: disable=g-import-not-at-top,wrong-import-position


def time_loader(loader, steps: int, warmup: int) -> common.Timing:
  """Seconds between consecutive batches of iterate() with a consumer that does nothing."""
  times, t0 = [], time.perf_counter()
  for i, _ in enumerate(loader.iterate(0, warmup + steps)):
    now = time.perf_counter()
    if i >= warmup:
      times.append(now - t0)
    t0 = now
  return common.Timing(0.0, times)


def time_serial(loader, steps: int) -> common.Timing:
  counter = itertools.count()
  return common.time_python(lambda: loader.batch(next(counter)), steps, 0)


def bench_batch(config, data_dir: str, name: str, batch: int, args, mesh) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import models, parallel, train  # pylint: disable=g-import-not-at-top
  from jaxswap.data import loader as data  # pylint: disable=g-import-not-at-top

  workers = args.workers or config.data.workers
  prefetch = args.prefetch or config.data.prefetch
  loader = data.StepLoader(data_dir, name, "train", batch, seed=config.seed, workers=workers,
                           prefetch=prefetch)  # no cache: every batch decodes
  row = dict(config=config.model.name, dataset=name, batch=batch, workers=workers,
             prefetch=prefetch, image_size=loader.spec.image_size,
             train_examples=loader.spec.num_examples)
  loader_t = time_loader(loader, args.steps, args.warmup)
  row.update(loader_batches_per_s=1 / statistics.mean(loader_t.step_s),
             loader_batch_s=loader_t.median, loader_spread=loader_t.spread())
  row["loader_faces_per_s"] = 2 * batch * row["loader_batches_per_s"]
  serial = time_serial(loader, max(2, args.steps // 4))
  row.update(serial_batches_per_s=1 / statistics.mean(serial.step_s))
  row["serial_faces_per_s"] = 2 * batch * row["serial_batches_per_s"]

  host = loader.batch(0)
  transfer = common.time_python(
      lambda: jax.block_until_ready(parallel.global_batch(host, mesh)), 5, 1)
  row["transfer_s"] = transfer.median
  print(f"  batch {batch}: loader {row['loader_batches_per_s']:.3g} batches/s "
        f"({row['loader_faces_per_s']:.4g} faces/s), serial {row['serial_faces_per_s']:.4g} "
        f"faces/s, transfer {transfer.median * 1e3:.3g} ms", flush=True)
  cache_mb = config.data.cache_mb if args.cache_mb is None else args.cache_mb
  if cache_mb > 0:
    cached = data.StepLoader(data_dir, name, "train", batch, seed=config.seed, workers=workers,
                             prefetch=prefetch, cache_mb=cache_mb)
    epoch = -(-max(cached.spec.num_examples.values()) // batch)  # steps that draw every face
    for _ in cached.iterate(0, epoch):
      pass
    cached_t = time_loader(cached, args.steps, args.warmup)
    row.update(cache_mb=cache_mb, cached_faces=len(cached.cache),
               cached_mb=cached.cached_bytes / 2**20,
               cached_batches_per_s=1 / statistics.mean(cached_t.step_s))
    row["cached_faces_per_s"] = 2 * batch * row["cached_batches_per_s"]
    print(f"  batch {batch}: cached loader {row['cached_faces_per_s']:.4g} faces/s "
          f"({row['cached_faces']} faces, {row['cached_mb']:.0f} MB in the cache)", flush=True)

  if args.skip_step:
    return row
  if args.step_from:
    step_s = _step_from(args.step_from, config.model.name, batch)
    row.update(step_s=step_s, step_source=args.step_from, step_per_s=1 / step_s,
               headroom=row["loader_batches_per_s"] * step_s)
    print(f"  batch {batch}: step {step_s:.4g} s (from {args.step_from}), "
          f"headroom {row['headroom']:.3g}x", flush=True)
    return row

  config.batch_size = batch
  parallel.check_batch_size(batch, mesh)
  model = models.create_model(config)
  tx = train.make_optimizer(config.optimizer)
  state = jax.jit(functools.partial(train.create_state, model, tx, config.seed),
                  out_shardings=parallel.replicated(mesh))()
  fn = train.make_train_step(model, tx, config, mesh)
  example = parallel.global_batch(host, mesh)
  step_t, _, state = common.time_jitted(fn, state, example, args.step_steps, 1)
  it = loader.iterate(0)
  e2e_t, _, state = common.time_jitted(
      fn, state, example, args.step_steps, 1,
      next_batch=lambda: parallel.global_batch(next(it)[1], mesh))
  it.close()
  row.update(step_s=step_t.median, step_compile_s=step_t.compile_s, step_per_s=1 / step_t.median,
             end_to_end_step_s=e2e_t.median,
             headroom=row["loader_batches_per_s"] * step_t.median)
  print(f"  batch {batch}: step {step_t.median:.4g} s, end-to-end {e2e_t.median:.4g} s, "
        f"headroom {row['headroom']:.3g}x", flush=True)
  return row


def _step_from(path: str, name: str, batch: int) -> float:
  """The full-step median of (config, batch) in a train_throughput.py JSON file."""
  try:
    with open(path) as f:
      rows = json.load(f)["rows"]
  except (OSError, ValueError, KeyError) as e:
    raise JaxswapError(f"--step-from={path}: not a train_throughput.py JSON file ({e})") from None
  for r in rows:
    if r.get("config") == name and r.get("batch") == batch and r.get("mode") == "full":
      return float(r["step_s"])
  raise JaxswapError(f"--step-from={path} has no full-step row for {name!r} at batch {batch}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: build synthetic)")
  parser.add_argument("--name", default=None, help="dataset name (default: the config's data.name)")
  parser.add_argument("--config", default="configs/original.py",
                      help="the step whose consumption rate to compare with")
  parser.add_argument("--batch", type=int, action="append", help="per identity; repeatable")
  parser.add_argument("--workers", type=int, default=None, help="decode threads (config default)")
  parser.add_argument("--prefetch", type=int, default=None, help="batches ahead (config default)")
  parser.add_argument("--cache-mb", type=float, default=None,
                      help="decoded-face cache of the 'cached' figure (config's data.cache_mb; "
                           "0: skip that figure)")
  parser.add_argument("--step-steps", type=int, default=3, help="timed train steps")
  parser.add_argument("--skip-step", action="store_true", help="time the host side only")
  parser.add_argument("--step-from", default=None, metavar="TRAIN.json",
                      help="take the step time from a train_throughput.py --json file instead "
                      "of timing it (no end-to-end figure then)")
  parser.add_argument("--synthetic-frames", type=int, default=512,
                      help="frames per identity of the synthetic dataset built without --data-dir")
  common.add_common_args(parser, default_steps=20)
  args = common.parse_args(parser)

  from jaxswap import parallel  # pylint: disable=g-import-not-at-top
  from jaxswap.data import datasets as data  # pylint: disable=g-import-not-at-top

  config = common.load_config(args.config, args.overrides)
  env = common.environment()
  common.print_environment(env)
  mesh = parallel.make_mesh()
  with tempfile.TemporaryDirectory(prefix="jaxswap-bench-") as tmp:
    data_dir, name = args.data_dir, args.name or config.data.name
    if not data_dir:
      print(f"# building a synthetic dataset ({args.synthetic_frames} frames per identity, "
            f"{config.image_size} px) in {tmp}", flush=True)
      t0 = time.perf_counter()
      name = data.build_synthetic(tmp, num_frames=args.synthetic_frames,
                                  image_size=config.image_size, seed=config.seed)
      print(f"# built in {time.perf_counter() - t0:.3g} s", flush=True)
      data_dir = tmp
    rows = [bench_batch(config, data_dir, name, b, args, mesh)
            for b in args.batch or [config.batch_size]]
  print()
  common.print_table(rows, [
      ("batch", "batch"), ("workers", "workers"), ("loader_batches_per_s", "loader batch/s"),
      ("loader_faces_per_s", "loader faces/s"), ("serial_faces_per_s", "1-thread faces/s"),
      ("cached_faces_per_s", "cached faces/s"),
      ("transfer_s", "transfer s"), ("step_s", f"{config.model.name} step s"),
      ("end_to_end_step_s", "end-to-end step s"), ("headroom", "headroom")])
  common.write_json(args.json, {
      "command": common.command_line(), "environment": env,
      "headroom_formula": "loader batches/s * train step seconds (>= 1: the host keeps up)",
      "data_dir": args.data_dir or "(synthetic, temporary)", "rows": rows,
      "load_average_after": common.load_average()})


if __name__ == "__main__":
  common.run_cli(main)
