"""Face datasets (TFDS array_record, no TensorFlow) and the step-indexed host loader.

Both datasets share one feature spec, so the loader and the train step never care whether faces
came from `tools/extract.py` or from `jaxswap.synthetic`:

  image     PNG bytes, RGB aligned face (size x size)
  mask      PNG bytes, 1 channel, 255 inside the face
  priority  PNG bytes, 1 channel, 255 on eyes and mouth (for eye/mouth-weighted losses)
  landmarks float32 (L, 2) aligned pixel coordinates
  identity  ClassLabel a/b
  source    text: the video / folder the face came from
  frame     int64: frame index in the source

Splits are per identity (`train_a`, `train_b`, `validation_a`, `validation_b`): the loader samples a
fixed number of faces of each person per step, and per-identity splits let it do that without
reading every record once at start-up to learn its label. Validation is a contiguous block of frames
at the end of each source, so neighbouring (near-identical) frames never straddle the split.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxswap import prefetch, synthetic
from jaxswap.errors import JaxswapError

IDENTITIES = ("a", "b")
SPLITS = ("train", "validation")


def split_name(split: str, identity: str) -> str:
  return f"{split}_{identity}"


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of an RGB (H,W,3) or single-channel (H,W[,1]) uint8 image."""
  if image.ndim == 3 and image.shape[-1] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  elif image.ndim == 3:
    image = image[..., 0]
  ok, buf = cv2.imencode(".png", image)
  if not ok:
    raise ValueError("PNG encoding failed")
  return buf.tobytes()


def decode_png(data: bytes, channels: int) -> np.ndarray:
  """Inverse of encode_png: (H,W,channels) uint8, RGB for 3 channels."""
  flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
  image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
  if image is None:
    raise JaxswapError("a dataset record holds an image that is not a valid PNG/JPEG")
  if channels == 3:
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  return image[..., None]


def face_features(num_landmarks: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Scalar(dtype=np.object_),
      "mask": tfds.features.Scalar(dtype=np.object_),
      "priority": tfds.features.Scalar(dtype=np.object_),
      "landmarks": tfds.features.Tensor(shape=(num_landmarks, 2), dtype=np.float32),
      "identity": tfds.features.ClassLabel(names=list(IDENTITIES)),
      "source": tfds.features.Text(),
      "frame": tfds.features.Scalar(dtype=np.int64),
  })


def face_example(image, mask, priority, landmarks, identity: str, source: str, frame: int) -> dict:
  return {
      "image": encode_png(image),
      "mask": encode_png(mask),
      "priority": encode_png(priority),
      "landmarks": np.asarray(landmarks, np.float32),
      "identity": identity,
      "source": source,
      "frame": int(frame),
  }


def validation_start(num_frames: int, fraction: float) -> int:
  """First frame of the contiguous validation block at the end of a source."""
  if fraction <= 0 or num_frames < 2:
    return num_frames
  return num_frames - max(1, int(round(num_frames * fraction)))


# ----------------------------------------------------------------------------------------------
# Synthetic identities
# ----------------------------------------------------------------------------------------------


class JaxswapSynthetic(tfds.core.GeneratorBasedBuilder):
  """Two parametric identities rendered along independent video-like pose/expression paths."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, num_frames: int = 1000, image_size: int = 64, seed: int = 0,
               validation_fraction: float = 0.1, **kwargs):
    self._num_frames = num_frames
    self._image_size = image_size
    self._seed = seed
    self._validation_fraction = validation_fraction
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="jaxswap synthetic two-identity faces (jaxswap.synthetic).",
        features=face_features(synthetic.NUM_LANDMARKS),
        metadata=tfds.core.MetadataDict(image_size=self._image_size, num_frames=self._num_frames,
                                        seed=self._seed),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    start = validation_start(self._num_frames, self._validation_fraction)
    ranges = {"train": (0, start), "validation": (start, self._num_frames)}
    return {split_name(split, ident): self._generate_examples(ident, *ranges[split])
            for split in SPLITS for ident in IDENTITIES}

  def _generate_examples(self, identity: str, start: int, stop: int):
    # Each identity follows its own path: the two people never share a frame's expression.
    rng = np.random.default_rng([self._seed, IDENTITIES.index(identity)])
    params = synthetic.trajectory_params(rng, self._num_frames)
    for lo in range(start, stop, 256):
      hi = min(stop, lo + 256)
      chunk = {k: v[lo:hi] for k, v in params.items()}
      out = synthetic.render(identity, chunk, self._image_size)
      for i in range(hi - lo):
        yield f"{identity}-{lo + i:07d}", face_example(
            out["image"][i], out["mask"][i], out["priority"][i], out["landmarks"][i],
            identity, f"synthetic_{identity}", lo + i)


def build_synthetic(data_dir: str, *, num_frames: int = 1000, image_size: int = 64, seed: int = 0,
                    num_shards: int | None = None) -> str:
  """Builds (or reuses) the synthetic dataset under data_dir; returns the dataset name."""
  builder = JaxswapSynthetic(data_dir=data_dir, file_format="array_record", num_frames=num_frames,
                             image_size=image_size, seed=seed)
  tfds.disable_progress_bar()  # TFDS's per-split bars drown our own progress output
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return builder.name


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  image_size: int
  num_examples: dict  # identity -> examples in this process's part of the split


def open_split(data_dir: str, name: str, split: str, identity: str, process_index: int = 0,
               process_count: int = 1):
  """This process's even share of one identity's split, as a random-access data source."""
  if data_dir and not os.path.isdir(data_dir):
    raise JaxswapError(f"--config.data.dir={data_dir!r} does not exist")
  full = split_name(split, identity)
  part = tfds.split_for_jax_process(full, process_index=process_index, process_count=process_count)
  try:
    return tfds.data_source(name, data_dir=data_dir or None, split=part)
  except Exception as e:  # TFDS raises several types for a missing/foreign dataset.
    raise JaxswapError(
        f"cannot open dataset {name!r} split {full!r} in --config.data.dir={data_dir!r}: {e}. "
        "Build one with tools/prepare_dataset.py (real faces) or `python -m jaxswap.demo`."
    ) from None


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
                            num_examples={k: sum(map(len, v)) for k, v in self.sources.items()})

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
