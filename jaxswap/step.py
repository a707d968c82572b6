"""The training step: state, optimiser, loss and one jitted, data-parallel update of both people.

Pure functions of (state, batch): `jaxswap.train` runs them in its loop (data, checkpoints,
logging) and the benchmarks time them alone. Step s draws its randomness from
fold_in(state.rng, s), so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxswap import augment, losses, models, parallel
from jaxswap.data import loader as data
from jaxswap.errors import JaxswapError


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


@dataclasses.dataclass(frozen=True)
class Discriminator:
  """The code discriminator of `loss.true_face` and its own optimiser (same settings)."""
  module: models.CodeDiscriminator
  tx: optax.GradientTransformation


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
