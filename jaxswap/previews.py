"""Preview grids: rows A, A->A, A->B, B, B->B, B->A; one column per face.

The grid is rendered by a jitted function on every process (the params live on the mesh); process 0
writes it as `previews/step_NNNNNN.png` with the synthetic-media tag.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxswap import parallel, provenance
from jaxswap.data import loader

ROWS = ("A", "A->A", "A->B", "B", "B->B", "B->A")


def grid(params, batch: dict, *, model, n: int) -> jax.Array:
  """uint8 (6*H, n*W, 3) grid of the first n faces of each identity in the batch."""
  rows = []
  for ident, own, other in (("a", 0, 1), ("b", 1, 0)):
    x = loader.to_float(batch[f"image_{ident}"][:n])
    z = model.apply({"params": params}, x, method=model.encode)
    same = model.apply({"params": params}, z, own, method=model.decode)["rgb"]
    swap = model.apply({"params": params}, z, other, method=model.decode)["rgb"]
    rows += [x, same.astype(jnp.float32), swap.astype(jnp.float32)]
  img = jnp.stack(rows)  # (6, n, H, W, 3)
  r, c, h, w, ch = img.shape
  img = img.transpose(0, 2, 1, 3, 4).reshape(r * h, c * w, ch)
  return jnp.round(jnp.clip(img, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def make_grid_fn(model, n: int, mesh):
  return jax.jit(functools.partial(grid, model=model, n=n),
                 out_shardings=parallel.replicated(mesh))


def write(workdir: str, step: int, image: jax.Array, run: str) -> str:
  path = os.path.join(workdir, "previews", f"step_{step:06d}.png")
  record = provenance.provenance("training preview", run=run, step=step, rows=list(ROWS))
  provenance.write_png(path, np.asarray(jax.device_get(image)), record)
  return path
