"""Training: one jitted, data-parallel step for both identities; orbax checkpoints; exact resume.

    python -m jaxswap.train --config configs/original.py --workdir runs/x [--config.KEY=VALUE]

Re-running with the same workdir resumes from its latest checkpoint. Data order and augmentation
depend only on (seed, step, process index), so a run that is killed and resumed ends with the same
parameters, bit for bit, as one that never stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from jaxswap import host_malloc, logs, losses, models, parallel, previews, recovery, swap
from jaxswap import xla_flags
from jaxswap import provenance as media
from jaxswap.data import loader as data
from jaxswap.checkpoint import Checkpointer
from jaxswap.recovery import architecture, check_workdir, field  # re-exported: callers use train.*
# The step lives in jaxswap.step; re-exported, as tests and benchmarks call train.*.
from jaxswap.step import (  # pylint: disable=unused-import
    TrainState, create_state, eval_losses, make_discriminator, make_optimizer, make_train_step)
from jaxswap.errors import JaxswapError

log = logging.getLogger("jaxswap.train")


# --------------------------------------------------------------------------------------------
# Workdir, config checks
# --------------------------------------------------------------------------------------------


def enable_compilation_cache(setting: str, workdir: str) -> None:
  if not setting:
    return
  path = setting
  if setting == "auto":
    path = os.path.join(os.path.dirname(os.path.abspath(workdir)), ".jax_cache")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def warp_phase(config, step: int) -> bool:
  """Whether the step taking the state from `step` to `step + 1` warps its inputs."""
  until = config.augment.warp_until
  return bool(config.augment.warp) and (not until or step < until)


def unwarped_config(config) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.augment.warp = False
  return cfg


def validate(config) -> None:
  models.create_model(config)
  if config.augment.color_transfer not in ("none", "rct"):
    raise JaxswapError(f"--config.augment.color_transfer={config.augment.color_transfer!r}: "
                       "expected none or rct")
  for key in ("steps", "batch_size", "checkpoint_every", "log_every", "preview_every"):
    if field(config, key) <= 0:
      raise JaxswapError(f"--config.{key}={field(config, key)} must be positive")
  if config.resume not in ("auto", "strict"):
    raise JaxswapError(f"--config.resume={config.resume!r}: expected auto (fall back to the newest "
                       "intact checkpoint) or strict (refuse a damaged one)")
  if config.augment.warp_until < 0:
    raise JaxswapError(f"--config.augment.warp_until={config.augment.warp_until} must be >= 0 "
                       "(0: warp the inputs throughout)")
  if not 0.0 <= config.augment.input_hsv <= 1.0:
    raise JaxswapError(f"--config.augment.input_hsv={config.augment.input_hsv} must lie in "
                       "[0, 1] (DeepFaceLab's random_hsv_power; 0.05-0.3 is usual)")
  if config.init_from_parts not in swap.INIT_PARTS:
    raise JaxswapError(f"--config.init_from_parts={config.init_from_parts!r} is not one of "
                       f"{', '.join(swap.INIT_PARTS)}")
  if config.loss.eye_mouth_loss not in losses.EYE_MOUTH_LOSSES:
    raise JaxswapError(f"--config.loss.eye_mouth_loss={config.loss.eye_mouth_loss!r}: expected "
                       "pixel (the image loss's MAE/MSE terms) or mae (DeepFaceLab's)")
  if config.loss.true_face < 0:
    raise JaxswapError(f"--config.loss.true_face={config.loss.true_face} must be >= 0")
  if config.loss.true_face and models.VARIANTS[config.model.name].arch != "df":
    raise JaxswapError(f"--config.loss.true_face={config.loss.true_face} needs a df model (one "
                       f"decoder per person, like DeepFaceLab's); {config.model.name!r} is "
                       f"{models.VARIANTS[config.model.name].arch}")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, progress: bool = True,
                       allow_config_change: bool = False) -> TrainState:
  """Trains (or resumes) until config.steps; returns the final state.

  SIGINT/SIGTERM stop it after the current step with a checkpoint (it then returns normally).
  """
  recovery.apply_determinism(config.deterministic)  # before anything starts a jax backend
  validate(config)
  check_workdir(config, workdir)
  enable_compilation_cache(config.compilation_cache, workdir)
  is_main = jax.process_index() == 0

  # Mesh, model, optimiser.
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  model = models.create_model(config)
  tx = make_optimizer(config.optimizer)

  # Input.
  loader = data.StepLoader(config.data.dir, config.data.name, config.data.split,
                           config.batch_size, seed=config.seed,
                           process_index=jax.process_index(),
                           process_count=jax.process_count(), shards=config.data.shards,
                           workers=config.data.workers, prefetch=config.data.prefetch,
                           skip_corrupt=config.data.skip_corrupt,
                           cache_mb=config.data.cache_mb)
  if loader.spec.image_size != config.image_size:
    raise JaxswapError(
        f"dataset {config.data.name!r} in {config.data.dir!r} holds {loader.spec.image_size} px "
        f"faces but --config.image_size={config.image_size} (model {config.model.name!r})")

  # State: fresh, or restored from the newest intact checkpoint of the same run.
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=config.checkpoint_every,
                      keep=config.keep_checkpoints)
  arch = architecture(config)
  if config.loss.true_face:  # its discriminator's arrays are part of the state
    arch["code_discriminator"] = True
  meta = {"architecture": arch,
          "face": loader.spec.face,  # the faces it learns: conversion crops the same way
          **recovery.record(config.to_dict(), recovery.dataset_fingerprint(
              config.data.dir, config.data.name), jax.process_count())}
  init = jax.jit(functools.partial(create_state, model, tx, config.seed,
                                   make_discriminator(model, config)),
                 out_shardings=parallel.replicated(mesh))
  fresh = (lambda: swap.start_from(init(), config, mesh)) if config.init_from else init
  try:
    state = recovery.resume(ckpt, init, meta, fresh=fresh, strict=config.resume == "strict",
                            allow_config_change=allow_config_change)
  except BaseException:
    ckpt.close(raise_errors=False)
    raise
  if is_main:
    media.write_bytes(os.path.join(workdir, "config.json"),
                      json.dumps(dict(config.to_dict(), face=loader.spec.face), indent=2).encode())

  # Compile once, ahead of time (the unwarped step too, once a run reaches augment.warp_until).
  start = int(jax.device_get(state.step))
  example = parallel.global_batch(loader.batch(start), mesh)
  step_fns = {}

  def step_for(step: int):
    warped = warp_phase(config, step)
    if warped not in step_fns:
      cfg = config
      if config.augment.warp and not warped:  # warp_until reached
        log.info("augment.warp_until=%d: inputs unwarped from step %d on",
                 config.augment.warp_until, step)
        cfg = unwarped_config(config)
      step_fns[warped] = make_train_step(model, tx, cfg, mesh).lower(state, example).compile()
      logs.log_memory(step_fns[warped])
    return step_fns[warped]

  step_for(start)

  grid_fn = previews.make_grid_fn(model, min(config.preview_faces, config.batch_size), mesh)
  val_batch = _validation_batch(config, mesh)
  preview_batch = val_batch if val_batch is not None else example
  eval_fn = jax.jit(functools.partial(eval_losses, model=model, config=config))
  writer = logs.MetricWriter(workdir, is_main)

  bar = logs.progress(start, config.steps, progress and is_main)
  pending: list[tuple[int, dict]] = []  # device metrics not yet fetched: fetching blocks dispatch

  def drain() -> list[tuple[int, dict]]:
    rows = [(s, {k: float(v) for k, v in m.items()}) for s, m in jax.device_get(pending)]
    pending.clear()
    _check_finite(rows, ckpt)
    return rows

  # The trace starts two steps in, once the loader and the first dispatches have settled.
  profile_start = start + 2 if config.profile_steps > 0 and is_main else -1
  t_last, step_last = time.perf_counter(), start
  finished = False
  stop = recovery.StopRequest.install()  # SIGINT/SIGTERM: finish the step, save, return
  try:
    place = functools.partial(parallel.global_batch, mesh=mesh)
    for step, batch in loader.iterate(start, config.steps, place=place):
      if step == profile_start:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      state, metrics = step_for(step)(state, batch)
      done = step + 1
      if done == profile_start + config.profile_steps:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        log.info("profile of steps %d-%d written to %s/profile", profile_start, done, workdir)
      pending.append((done, metrics))
      if done % config.log_every == 0 or done == config.steps:
        rows = drain()
        now = time.perf_counter()
        egs = 2 * config.batch_size * (done - step_last) / (now - t_last)
        t_last, step_last = now, done
        last = dict(rows[-1][1], egs_per_sec=egs, data_skipped=len(loader.damaged))
        writer.write(done, last)
        bar.set_postfix(loss_a=f"{last['loss_a']:.4f}", loss_b=f"{last['loss_b']:.4f}",
                        egs=f"{egs:.1f}")
      if done % config.preview_every == 0 or done == config.steps:
        if val_batch is not None:
          writer.write(done, {k: float(v) for k, v in
                              jax.device_get(eval_fn(state.params, val_batch)).items()})
        image = grid_fn(state.params, preview_batch)
        if is_main:
          previews.write(workdir, done, image, run=os.path.abspath(workdir))
      if done % config.checkpoint_every == 0 and done != config.steps:
        drain()  # never save a state whose loss went non-finite
        ckpt.save(done, state, meta)
      bar.update(1)
      if stop:
        break  # Ctrl-C, or SIGTERM from a scheduler / preemption: save below, then return
    drain()
    final = int(jax.device_get(state.step))
    stop.saving = True
    if final != ckpt.latest_step():
      ckpt.save(final, state, meta, force=True)
    ckpt.wait()
    finished = True
    if stop:
      log.warning("%s: saved step %d in %s; rerun the same command to resume", stop.signal,
                  final, ckpt.directory)
  finally:
    bar.close()
    writer.close()
    try:
      ckpt.close(raise_errors=finished)  # an error already on its way is the one to report
    finally:
      stop.uninstall()
  return state


def _check_finite(rows, ckpt: Checkpointer) -> None:
  for s, m in rows:
    if not (np.isfinite(m["loss"]) and np.isfinite(m["param_norm"])):
      ckpt.wait()
      kept = ckpt.latest_step()
      raise JaxswapError(
          f"training diverged at step {s} (loss_a={m['loss_a']}, loss_b={m['loss_b']}, "
          f"parameter norm {m['param_norm']}); "
          f"stopped without saving. The last good checkpoint is step {kept}. Lower "
          "--config.optimizer.learning_rate or set --config.optimizer.clip_norm, then rerun.")


def _validation_batch(config, mesh):
  try:
    val = data.StepLoader(config.data.dir, config.data.name, "validation", config.batch_size,
                          seed=config.seed, process_index=jax.process_index(),
                          process_count=jax.process_count(), shards=config.data.shards,
                          workers=1, skip_corrupt=config.data.skip_corrupt)
  except JaxswapError:
    return None  # no validation split: nothing to report
  return parallel.global_batch(val.batch(0), mesh)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  FLAGS = flags.FLAGS
  recovery.apply_determinism(FLAGS.config.deterministic)  # before jax.distributed starts a backend
  parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                  auto=FLAGS.distributed_auto)
  logs.setup_logging()
  for decided in (xla_flags.last_decision(), host_malloc.last_decision()):
    if decided is not None:
      log.info("%s", decided.log_line())
  train_and_evaluate(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)


def run() -> None:
  """Console entry point: user errors print one line and exit with status 2."""
  host_malloc.apply_cpu_defaults(reexec=True)  # first: it may re-execute the process
  xla_flags.apply_cpu_defaults()  # before jax creates its backend (CPU only; see the module)
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, previews.")
  flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0, for multi-process runs.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_bool("distributed_auto", False,
                    "Let jax.distributed.initialize() detect TPU pod / SLURM settings.")
  flags.DEFINE_bool("allow_config_change", False,
                    "Resume although the config or dataset changed (the run is then no longer an "
                    "exact continuation); without it such a resume is refused.")
  flags.mark_flags_as_required(["config", "workdir"])
  # --num-processes / --process-id spellings too, as jax.distributed names them.
  argv = [a.replace("--num-processes", "--num_processes").replace("--process-id", "--process_id")
          .replace("--distributed-auto", "--distributed_auto")
          .replace("allow-config-change", "allow_config_change") for a in sys.argv]
  try:
    app.run(main, argv=argv, flags_parser=_parse_flags)
  except JaxswapError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)


def _parse_flags(argv):
  """absl's parser, but a bad flag or config key is a one-line error with exit status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, FileNotFoundError) as e:
    msg = str(e).strip().splitlines()
    last = msg[-1] if msg else str(e)
    if isinstance(e, (KeyError, AttributeError)):  # ml_collections names only the missing key
      key = [a for a in argv if a.startswith("--config.") and last.strip("\"'") in a]
      last = (f"unknown config field {key[0].split('=')[0] if key else last} "
              "(every field is listed in configs/default.py)")
    print(f"error: {last}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
