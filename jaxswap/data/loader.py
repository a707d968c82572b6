"""The step-indexed host loader: the global batch of step s is a function of (seed, s, shards).

Reads the per-identity splits that `jaxswap.data.datasets` opens (the only TFDS importer) and
decodes their PNGs in a thread pool, a few steps ahead of the train step; decoded faces are kept
in memory up to a byte budget, so that from the second epoch on a batch is a gather.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from typing import Any, Callable, Iterator

import jax.numpy as jnp
import numpy as np

from jaxswap import prefetch
from jaxswap.data.datasets import IDENTITIES, decode_png, face_geometry, open_split, \
    record_location, split_name
from jaxswap.errors import JaxswapError

log = logging.getLogger("jaxswap.data")


class CorruptRecordError(JaxswapError):
  """A dataset record that cannot be read or decoded."""


def _first_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return (lines[0] if lines else type(e).__name__)[:300]


def to_float(images) -> jnp.ndarray:
  """uint8 [0, 255] faces -> float32 [0, 1]: the one conversion of train, previews, swap and
  benchmarks (on the device inside jit; a host array is copied there)."""
  return jnp.asarray(images).astype(jnp.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  image_size: int
  num_examples: dict  # identity -> examples in this process's part of the split
  face: dict | None = None  # real faces' crop coverage, template id, size (datasets.face_geometry)


class StepLoader:
  """Deterministic batches: the global batch of step s depends only on (seed, s, shards).

  Each identity's split is cut into `shards` even parts (default: one per process). Part g
  contributes batch_size/shards faces to every step, visiting its examples in a fresh permutation
  every epoch drawn from (seed, identity, g, epoch), and the global batch is the parts in order.
  A process reads only the parts it owns, so processes read disjoint files; and since the global
  batch does not depend on how many processes share the parts, a run resumed with a different
  process count (same `shards`) sees exactly the batches the uninterrupted run would have seen.
  Decoding runs in a thread pool (cv2 releases the GIL), `prefetch` steps ahead. With
  `cache_mb` > 0 (config data.cache_mb) every face decoded is kept (as the uint8 arrays a batch
  stacks) until the cache holds that many MiB; a cached face is never read or decoded again. A
  pair's dataset (a few thousand 128 px faces, ~80 KB each) fits in a few hundred MB, and a fast
  device then no longer waits on PNG decoding; the batches are the same with or without the cache.
  """

  def __init__(self, data_dir: str, name: str, split: str, batch_size: int, *, seed: int,
               process_index: int = 0, process_count: int = 1, shards: int = 0,
               workers: int = 2, prefetch: int = 2, skip_corrupt: bool = False,
               cache_mb: float = 0):
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
    self.name, self.split, self.skip_corrupt = name, split, skip_corrupt
    self.damaged: set[tuple[str, int, int]] = set()  # (identity, part, index) found unreadable
    if cache_mb < 0:
      raise JaxswapError(f"--config.data.cache_mb must be >= 0 (got {cache_mb:g})")
    self.cache_bytes = int(cache_mb * 2**20)
    self.cache: dict[tuple[str, int, int], dict] = {}  # (identity, part, index) -> decoded face
    self.cached_bytes = 0
    self._cache_full_logged = False
    first = self._fetch_one("a", 0, 0)
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
    """Host-local uint8 batch of `step`: image_a/b (b,H,W,3), mask_* and priority_* (b,H,W,1)."""
    out = {}
    for ident in IDENTITIES:
      decoded = []
      for part in range(len(self.sources[ident])):
        decoded += self._fetch(ident, part, [int(i) for i in self.indices(ident, step, part)],
                               pool)
      for key in ("image", "mask", "priority"):
        out[f"{key}_{ident}"] = np.stack([d[key] for d in decoded])
    return out

  def _fetch(self, ident: str, part: int, indices: list[int],
             pool: concurrent.futures.Executor | None) -> list[dict]:
    """Decoded records (from the cache where held); a damaged one is found by reading them one by
    one (the slow path, never cached: it may stand in another record for the one asked for)."""
    src = self.sources[ident][part]
    missing = sorted({i for i in indices if (ident, part, i) not in self.cache})
    try:
      records = src.__getitems__(missing) if missing else []
      decoded = dict(zip(missing, pool.map(self._decode, records) if pool
                         else map(self._decode, records)))
    except Exception:  # pylint: disable=broad-except  (riegeli, cv2 and TFDS raise many kinds)
      return [self.cache.get((ident, part, i)) or self._fetch_one(ident, part, i)
              for i in indices]
    for i, face in decoded.items():
      self._keep((ident, part, i), face)
    return [decoded[i] if i in decoded else self.cache[(ident, part, i)] for i in indices]

  def _keep(self, key: tuple[str, int, int], face: dict) -> None:
    size = sum(a.nbytes for a in face.values())
    if self.cached_bytes + size > self.cache_bytes:
      if self.cache_bytes and not self._cache_full_logged:
        self._cache_full_logged = True
        log.info("decoded-face cache full at %d faces (%.0f MB, --config.data.cache_mb); the "
                 "others are decoded each time they are drawn", len(self.cache),
                 self.cached_bytes / 2**20)
      return
    self.cache[key] = face
    self.cached_bytes += size

  def _fetch_one(self, ident: str, part: int, index: int) -> dict:
    """Record `index`, or (skip_corrupt) the next readable one after it, deterministically."""
    src = self.sources[ident][part]
    for k in range(len(src)):
      j = (index + k) % len(src)
      if (ident, part, j) in self.damaged:
        continue
      try:
        return self._decode(src[j])
      except Exception as e:  # pylint: disable=broad-except
        where = f"{record_location(src, j)} (split {split_name(self.split, ident)})"
        if not self.skip_corrupt:
          raise CorruptRecordError(
              f"dataset {self.name!r}: {where} cannot be read: {_first_line(e)}. Rebuild the "
              "dataset (jaxswap-prepare), or pass --config.data.skip_corrupt=True to skip "
              "damaged records (counted as data_skipped in the metrics)") from None
        self.damaged.add((ident, part, j))
        if len(self.damaged) <= 3:
          log.warning("skipping damaged %s: %s%s", where, _first_line(e),
                      "; further ones are only counted (data_skipped in the metrics)"
                      if len(self.damaged) == 3 else "")
    raise CorruptRecordError(f"dataset {self.name!r}: no readable record in split "
                             f"{split_name(self.split, ident)}; rebuild the dataset")

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
