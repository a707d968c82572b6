"""The step-indexed host loader: the global batch of step s is a function of (seed, s, shards).

Reads the per-identity splits that `jaxswap.data.datasets` opens (the only TFDS importer) and
decodes their PNGs in a thread pool, a few steps ahead of the train step.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any, Callable, Iterator

import jax.numpy as jnp
import numpy as np

from jaxswap import prefetch
from jaxswap.data.datasets import IDENTITIES, decode_png, face_geometry, open_split
from jaxswap.errors import JaxswapError


def to_float(images) -> jnp.ndarray:
  """uint8 [0, 255] faces -> float32 [0, 1]: the one conversion of train, previews, swap and
  benchmarks (on the device inside jit; a host array is copied there)."""
  return jnp.asarray(images).astype(jnp.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  image_size: int
  num_examples: dict  # identity -> examples in this process's part of the split
  face: dict | None = None  # crop coverage, template id, size of real faces (datasets.face_geometry)


class StepLoader:
  """Deterministic batches: the global batch of step s depends only on (seed, s, shards).

  Each identity's split is cut into `shards` even parts (default: one per process). Part g
  contributes batch_size/shards faces to every step, visiting its examples in a fresh permutation
  every epoch drawn from (seed, identity, g, epoch), and the global batch is the parts in order.
  A process reads only the parts it owns, so processes read disjoint files; and since the global
  batch does not depend on how many processes share the parts, a run resumed with a different
  process count (same `shards`) sees exactly the batches the uninterrupted run would have seen.
  Decoding runs in a thread pool (cv2 releases the GIL), `prefetch` steps ahead.
  """

  def __init__(self, data_dir: str, name: str, split: str, batch_size: int, *, seed: int,
               process_index: int = 0, process_count: int = 1, shards: int = 0,
               workers: int = 2, prefetch: int = 2):
    shards = shards or process_count
    if shards % process_count:
      raise JaxswapError(f"--config.data.shards={shards} must be a multiple of the "
                         f"{process_count} processes")
    if batch_size % shards:
      raise JaxswapError(f"--config.batch_size={batch_size} is not divisible by the {shards} "
                         "data shards (--config.data.shards, default: one per process)")
    self.shard_batch = batch_size // shards
    self.local_batch = batch_size // process_count
    self.seed = seed
    per_process = shards // process_count
    self.groups = list(range(process_index * per_process, (process_index + 1) * per_process))
    self.sources = {ident: [open_split(data_dir, name, split, ident, g, shards)
                            for g in self.groups] for ident in IDENTITIES}
    for ident, parts in self.sources.items():
      if any(len(src) == 0 for src in parts):
        raise JaxswapError(f"dataset {name!r} in {data_dir!r} has too few faces of identity "
                           f"{ident!r} in split {split!r} for {shards} shards")
    self.workers = max(1, workers)
    self.prefetch = max(1, prefetch)
    first = self._decode(self.sources["a"][0][0])
    self.spec = DatasetSpec(image_size=first["image"].shape[0],
                            num_examples={k: sum(map(len, v)) for k, v in self.sources.items()},
                            face=face_geometry(data_dir, name))

  def indices(self, identity: str, step: int, part: int = 0) -> np.ndarray:
    """Record indices, within the `part`-th shard this process owns, of a step's faces."""
    n = len(self.sources[identity][part])
    pos = step * self.shard_batch + np.arange(self.shard_batch)
    epochs, offsets = np.divmod(pos, n)
    out = np.empty_like(pos)
    for epoch in np.unique(epochs):
      rng = np.random.default_rng(
          [self.seed, IDENTITIES.index(identity), self.groups[part], int(epoch)])
      sel = epochs == epoch
      out[sel] = rng.permutation(n)[offsets[sel]]
    return out

  @staticmethod
  def _decode(record: dict) -> dict:
    return {"image": decode_png(record["image"], 3), "mask": decode_png(record["mask"], 1),
            "priority": decode_png(record["priority"], 1)}

  def batch(self, step: int, pool: concurrent.futures.Executor | None = None) -> dict:
    """Host-local uint8 batch of `step`: image_a, image_b (b,H,W,3); mask_*, priority_* (b,H,W,1)."""
    out = {}
    for ident in IDENTITIES:
      records = []
      for part, src in enumerate(self.sources[ident]):
        records += src.__getitems__([int(i) for i in self.indices(ident, step, part)])
      decoded = list(pool.map(self._decode, records) if pool else map(self._decode, records))
      for key in ("image", "mask", "priority"):
        out[f"{key}_{ident}"] = np.stack([d[key] for d in decoded])
    return out

  def iterate(self, start_step: int, stop_step: int | None = None,
              place: Callable[[dict], Any] | None = None) -> Iterator[tuple[int, Any]]:
    """(step, batch) from start_step on, produced by a background thread.

    `place` (e.g. assembling the global device array) also runs in that thread, so host-to-device
    copies of the next batches overlap the current step.
    """
    def produce():
      with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
        step = start_step
        while stop_step is None or step < stop_step:
          batch = self.batch(step, pool)
          yield step, (place(batch) if place else batch)
          step += 1

    return prefetch.background(produce(), self.prefetch, name="jaxswap-loader")
