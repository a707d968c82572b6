"""Jitted, batched inference: encode faces, decode them as the other (or the same) identity.

`load_run(workdir)` restores a trained run's config, model and parameters; `make_swap_fn` gives the
function conversion calls on every batch of aligned faces (uint8 in, float32 in [0, 1] out);
`start_from` gives a new training run the parameters of a finished one (`--config.init_from`).
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from jaxswap import models, parallel, recovery
from jaxswap.data import loader
from jaxswap.checkpoint import Checkpointer, DamagedCheckpoint
from jaxswap.errors import JaxswapError

IDENTITY_INDEX = {"a": 0, "b": 1}
log = logging.getLogger("jaxswap.swap")


def swap(params, faces: jax.Array, *, model: models.FaceSwapAutoencoder, to: int) -> dict:
  """faces: uint8 (B,H,W,3) aligned crops -> {"rgb": (B,H,W,3), ["mask": (B,H,W,1)]} float32."""
  x = loader.to_float(faces)
  out = model.apply({"params": params}, x, to, method=model.swap)
  return {k: v.astype(jnp.float32) for k, v in out.items()}


def make_swap_fn(model: models.FaceSwapAutoencoder, to: str | int, mesh=None):
  """Batch split over the mesh's "data" axis; the batch size must divide by the device count."""
  to = IDENTITY_INDEX[to] if isinstance(to, str) else int(to)
  mesh = mesh or parallel.make_mesh()
  repl, split = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(functools.partial(swap, model=model, to=to), in_shardings=(repl, split),
                 out_shardings=split)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json; `config.face` is the crop geometry it was trained on (`run_face`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise JaxswapError(f"--workdir={workdir} has no config.json: not a jaxswap training run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def run_face(config: ml_collections.ConfigDict) -> dict | None:
  """{"coverage", "template", "size"} of the faces a run learnt, or None when it does not say.

  Training records it from its dataset's metadata; None for synthetic data and older runs.
  """
  face = config.get("face")
  return face.to_dict() if isinstance(face, ml_collections.ConfigDict) else None


def load_run(workdir: str, step: int | None = None, mesh=None, info: dict | None = None):
  """(config, model, params) of the latest intact (or given) checkpoint of a training run.

  `run_face(config)` gives the face geometry (coverage, template, size) the run was trained on;
  `info`, if given, receives {"step": the step actually restored}.
  """
  config = load_config(workdir)
  model = models.create_model(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=1, keep=1, async_save=False,
                      writer=False)  # read-only: a training run may be writing here right now
  try:
    steps = ckpt.all_steps() if step is None else [step]
    if not steps:
      raise JaxswapError(f"--workdir={workdir} has no checkpoint yet: train first")
    mesh = mesh or parallel.make_mesh()
    abstract = jax.eval_shape(functools.partial(models.init_params, model, jax.random.PRNGKey(0)))
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated(mesh)),
        abstract)
    damaged = []
    for s in reversed(steps):  # newest first; a damaged step is skipped, never moved from here
      try:
        params = ckpt.restore_params(s, abstract)
        if info is not None:
          info["step"] = s
        break
      except DamagedCheckpoint as e:
        damaged.append(str(e))
        log.warning("checkpoint step %d of %s is damaged (%s); using an older one", e.step,
                    workdir, e.reason)
    else:
      raise JaxswapError(f"no intact checkpoint in {ckpt.directory}: {'; '.join(damaged)}. "
                         "Rerun training once (it moves damaged steps to corrupt-STEP/) or "
                         "restore the folder from a backup.")
  finally:
    ckpt.close()
  return config, model, params


INIT_PARTS = ("all", "encoder")
ENCODER_SIDE = frozenset({"encoder", "inter_ab"})  # the encoder side, which codes any face


def start_from(state, config, mesh):
  """`state` (a fresh `step.TrainState`) with the latest parameters of run `config.init_from`.

  Pretraining: `config.init_from_parts` "all" takes every parameter, "encoder" only the
  encoder-side modules (ENCODER_SIDE), the decoders (and LIAE's inter_B) keeping their fresh
  initialisation.

  Step, optimiser moments and rng stay fresh: the new run is a new run that starts from
  learnt weights, so resuming it later is exact like any other.
  """
  source, parts = config.init_from, config.init_from_parts  # checked by train.validate
  try:
    src_config, _, params = load_run(source, mesh=mesh)
  except JaxswapError as e:
    raise JaxswapError(f"--config.init_from={source}: {e}") from None
  theirs, ours = recovery.architecture(src_config), recovery.architecture(config)
  if theirs != ours:
    raise JaxswapError(f"--config.init_from={source} is a run of {theirs}, this one is {ours}: "
                       "the parameters cannot carry over")
  if parts == "encoder":
    params = {name: params[name] if name in ENCODER_SIDE else fresh
              for name, fresh in state.params.items()}
  log.info("parameters initialised from %s (%s)", source,
           "all" if parts == "all" else "only " + ", ".join(sorted(ENCODER_SIDE & set(params))))
  return state.replace(params=params)
