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
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxswap import augment, logs, losses, models, parallel, previews, recovery, swap, xla_flags
from jaxswap import provenance as media
from jaxswap.data import loader as data
from jaxswap.checkpoint import Checkpointer
from jaxswap.recovery import architecture, check_workdir, field  # re-exported: callers use train.*
from jaxswap.errors import JaxswapError

log = logging.getLogger("jaxswap.train")

@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # constant; step s draws its randomness from fold_in(rng, s)
  # The code discriminator's parameters and optimiser state (loss.true_face > 0), else None.
  disc_params: Any = None
  disc_opt_state: Any = None


# --------------------------------------------------------------------------------------------
# Optimiser and state
# --------------------------------------------------------------------------------------------


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  lr: Any = cfg.learning_rate
  if cfg.decay_steps:
    if cfg.decay_steps <= cfg.warmup_steps:
      raise JaxswapError(f"--config.optimizer.decay_steps={cfg.decay_steps} must exceed "
                         f"--config.optimizer.warmup_steps={cfg.warmup_steps}")
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                            cfg.decay_steps,
                                            cfg.learning_rate * cfg.decay_floor)
  elif cfg.warmup_steps:
    lr = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  if cfg.name == "adam":
    opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "sgd":
    opt = optax.sgd(lr)
  else:
    raise JaxswapError(f"--config.optimizer.name={cfg.name!r}: expected adam, adamw or sgd")
  if cfg.clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt


@flax.struct.dataclass
class Discriminator:
  """The code discriminator of `loss.true_face` and its own optimiser (same settings)."""
  module: models.CodeDiscriminator = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def make_discriminator(model: models.FaceSwapAutoencoder, config) -> Discriminator | None:
  if not config.loss.true_face:
    return None
  # DeepFaceLab's width (256) for codes of 256+ channels; narrower codes get as many filters
  # as they have channels, so a small model does not spend its time in the discriminator.
  module = models.CodeDiscriminator(filters=min(256, model.spec.encoder_upscale),
                                    initializer=model.initializer, conv=model.conv)
  return Discriminator(module, make_optimizer(config.optimizer))


def create_state(model: models.FaceSwapAutoencoder, tx: optax.GradientTransformation,
                 seed: int, disc: Discriminator | None = None) -> TrainState:
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = models.init_params(model, init_rng)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=train_rng)
  if disc is None:
    return state
  x = jnp.zeros((1, model.spec.image_size, model.spec.image_size, 3), jnp.float32)
  code = model.apply({"params": params}, x, method=model.encode)
  disc_params = disc.module.init(jax.random.fold_in(init_rng, 1), code)["params"]
  return state.replace(disc_params=disc_params, disc_opt_state=disc.tx.init(disc_params))


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def _prepare(rng, batch: dict, config, augmented: bool = True
             ) -> tuple[augment.Augmented, augment.Augmented]:
  """uint8 host batch -> (augmented) float32 input/target/masks of A and of B, on device."""
  images = {i: data.to_float(batch[f"image_{i}"]) for i in "ab"}
  extras = {i: data.to_float(jnp.concatenate([batch[f"mask_{i}"], batch[f"priority_{i}"]], -1))
            for i in "ab"}
  if not augmented:  # validation, and benchmarks of the model alone
    return tuple(augment.Augmented(images[i], images[i], extras[i]) for i in "ab")
  k_ct, k_a, k_b = jax.random.split(rng, 3)
  if config.augment.color_transfer == "rct":
    images["a"] = augment.random_color_transfer(k_ct, images["a"], images["b"],
                                                extras["a"][..., :1], extras["b"][..., :1])
  return tuple(augment.augment(k, images[i], extras[i], config.augment)
               for k, i in ((k_a, "a"), (k_b, "b")))


def loss_fn(params, model, config, aug_a: augment.Augmented, aug_b: augment.Augmented,
            disc: Discriminator | None = None, disc_params=None):
  """Total loss and (metrics, (code_a, code_b))."""
  out_a, out_b, code_a, code_b = model.apply({"params": params}, aug_a.inputs, aug_b.inputs,
                                             method=model.reconstruct)
  total, metrics = 0.0, {}
  for name, out, aug in (("a", out_a, aug_a), ("b", out_b, aug_b)):
    loss, terms = losses.reconstruction_loss(
        out["rgb"], aug.targets, config.loss, mask=aug.extras[..., 0:1],
        priority=aug.extras[..., 1:2], pred_mask=out.get("mask"))
    total += loss
    metrics[f"loss_{name}"] = loss
    metrics.update({f"{k}_{name}": v for k, v in terms.items()})
  if disc is not None:
    # DeepFaceLab's true_face_power: the encoder is pushed to give A's faces codes that the
    # discriminator takes for B's, so A's decoder learns on codes like those a swap feeds it.
    logits = disc.module.apply({"params": disc_params}, code_a)
    fool = optax.sigmoid_binary_cross_entropy(logits, jnp.ones_like(logits)).mean()
    total += config.loss.true_face * fool
    metrics["true_face"] = fool
  metrics["loss"] = total
  return total, (metrics, (code_a, code_b))


def discriminator_step(state: TrainState, disc: Discriminator, code_a, code_b):
  """One update of the code discriminator: B's codes are real (1), A's are fake (0)."""
  code_a, code_b = jax.lax.stop_gradient(code_a), jax.lax.stop_gradient(code_b)

  def loss(p):
    real = disc.module.apply({"params": p}, code_b)
    fake = disc.module.apply({"params": p}, code_a)
    return 0.5 * (optax.sigmoid_binary_cross_entropy(real, jnp.ones_like(real)).mean()
                  + optax.sigmoid_binary_cross_entropy(fake, jnp.zeros_like(fake)).mean())

  value, grads = jax.value_and_grad(loss)(state.disc_params)
  updates, opt_state = disc.tx.update(grads, state.disc_opt_state, state.disc_params)
  params = optax.apply_updates(state.disc_params, updates)
  return state.replace(disc_params=params, disc_opt_state=opt_state), value


def train_step(state: TrainState, batch: dict, *, model, tx, config,
               augmented: bool = True) -> tuple[TrainState, dict]:
  """One update on both identities. Pure: everything it depends on is in (state, batch)."""
  aug_a, aug_b = _prepare(jax.random.fold_in(state.rng, state.step), batch, config, augmented)
  disc = make_discriminator(model, config)
  grad_fn = jax.grad(loss_fn, has_aux=True)
  grads, (metrics, codes) = grad_fn(state.params, model, config, aug_a, aug_b, disc,
                                    state.disc_params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(params)  # inf/NaN here means the update broke the net
  if disc is not None:
    state, metrics["true_face_d"] = discriminator_step(state, disc, *codes)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def make_train_step(model, tx, config, mesh, augment: bool = True) -> Callable:
  """The jitted step: state replicated, batch split over "data", state buffers donated.

  augment=False trains on the faces as they are (benchmarks time the model alone with it).
  """
  repl, split = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(functools.partial(train_step, model=model, tx=tx, config=config,
                                   augmented=augment),
                 in_shardings=(repl, split), out_shardings=(repl, repl), donate_argnums=0)


def eval_losses(params, batch: dict, *, model, config) -> dict:
  """Validation: reconstruction loss on un-augmented faces."""
  _, (metrics, _) = loss_fn(params, model, config,
                           *_prepare(None, batch, config, augmented=False))
  return {f"val_{k}": v for k, v in metrics.items() if k.startswith("loss")}


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
  if not 0.0 <= config.augment.input_hsv <= 1.0:
    raise JaxswapError(f"--config.augment.input_hsv={config.augment.input_hsv} must lie in "
                       "[0, 1] (DeepFaceLab's random_hsv_power; 0.05-0.3 is usual)")
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
                           skip_corrupt=config.data.skip_corrupt)
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

  # Compile once, ahead of time.
  step_fn = make_train_step(model, tx, config, mesh)
  start = int(jax.device_get(state.step))
  example = parallel.global_batch(loader.batch(start), mesh)
  compiled = step_fn.lower(state, example).compile()
  logs.log_memory(compiled)

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
      state, metrics = compiled(state, batch)
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
  if xla_flags.last_decision() is not None:
    log.info("%s", xla_flags.last_decision().log_line())
  train_and_evaluate(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)


def run() -> None:
  """Console entry point: user errors print one line and exit with status 2."""
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
