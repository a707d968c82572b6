"""Face datasets as TFDS array_record files (no TensorFlow): the one module that imports TFDS.

Features, PNG codec, the builders (synthetic identities; real faces from a plan made by
`jaxswap.prepare`), their metadata, and opening a split for the loader. Both datasets share one
feature spec, so the loader and the train step never care whether faces came from
`jaxswap.extract` or from `jaxswap.data.synthetic`:

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
import json
import os
import tempfile
from typing import Callable, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxswap.data import synthetic
from jaxswap.provenance import encode_png
from jaxswap.errors import JaxswapError, disk_error, write_failure

IDENTITIES = ("a", "b")
SPLITS = ("train", "validation")


def split_name(split: str, identity: str) -> str:
  return f"{split}_{identity}"


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
  prepare(builder, data_dir, 2 * num_frames, image_size,
          download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return builder.name


def prepare(builder: tfds.core.DatasetBuilder, data_dir: str, records: int, image_size: int,
            **kwargs) -> None:
  """download_and_prepare, where a full or unwritable disk is a WriteError naming the folder and
  the space needed (estimated at 2 bytes per pixel: PNG faces plus masks). TFDS writes into an
  `incomplete.*` folder and removes it on failure, so nothing torn is left."""
  try:
    builder.download_and_prepare(**kwargs)
  except Exception as e:  # pylint: disable=broad-except  (TFDS/array_record wrap OSError)
    if disk_error(e) is None:
      raise
    raise write_failure(os.path.join(data_dir, builder.name), e, records * image_size ** 2 * 2,
                        "dataset") from None


def record_location(src, index: int) -> str:
  """"record P of FILE" for record `index` of a TFDS array_record source (its shard and position
  there), or "record INDEX" where array_record's layout is not what we expect."""
  try:
    inner = src.data_source
    reader, position = inner._reader_idx_and_position(index)  # pylint: disable=protected-access
    path = inner._read_instructions[reader].filename  # pylint: disable=protected-access
    return f"record {position} of {path}"
  except Exception:  # pylint: disable=broad-except
    return f"record {index}"


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
        "Build one with jaxswap-prepare (real faces) or `python -m jaxswap.demo`."
    ) from None


# ----------------------------------------------------------------------------------------------
# Real faces
# ----------------------------------------------------------------------------------------------

FACES_NAME = "jaxswap_faces"


class JaxswapFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Aligned real faces of two people (a, b) from extracted videos or photo folders.

  `plan` maps each split to its faces (any objects); `make_example(face)` returns the (key,
  example) of one. The face pipeline makes both (`jaxswap.prepare`), so this module never needs
  to know what an extraction folder looks like. Unregistered: readers (the loader) open the
  prepared files, whose stored features say how many landmarks a face has.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, plan: dict[str, list] | None = None,
               make_example: Callable[[object], tuple[str, dict]] | None = None,
               num_landmarks: int = 0, metadata: dict | None = None, workers: int = 2,
               **kwargs):
    # Without a plan the builder can only read a dataset that is already prepared.
    self._plan = plan or {}
    self._make_example = make_example
    self._num_landmarks = num_landmarks or (metadata or {}).get("num_landmarks", 0)
    self._metadata = metadata or {}
    self._workers = workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="jaxswap aligned faces extracted by jaxswap-extract (mediapipe 478 points).",
        features=face_features(self._num_landmarks),
        metadata=tfds.core.MetadataDict(self._metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._plan:
      raise JaxswapError("JaxswapFaces needs a plan to build; use jaxswap.prepare.build_faces")
    return {name: self._generate_examples(refs) for name, refs in self._plan.items() if refs}

  def _generate_examples(self, refs: list) -> Iterator[tuple[str, dict]]:
    # cv2 releases the GIL: decode, resize and re-encode in threads.
    with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
      for lo in range(0, len(refs), 64):  # bounded: never all decoded faces in memory at once
        yield from pool.map(self._make_example, refs[lo:lo + 64])


def build_faces_dataset(data_dir: str, plan: dict[str, list],
                        make_example: Callable[[object], tuple[str, dict]], *,
                        num_landmarks: int, metadata: dict, num_shards: int,
                        workers: int = 2) -> str:
  """Writes `jaxswap_faces` into data_dir from a plan; returns the version folder."""
  builder = JaxswapFaces(plan=plan, make_example=make_example, num_landmarks=num_landmarks,
                         metadata=metadata, workers=workers, data_dir=data_dir,
                         file_format="array_record")
  tfds.disable_progress_bar()  # TFDS's per-split bars drown our own progress output
  with tempfile.TemporaryDirectory() as downloads:  # nothing is downloaded; keep DIR tidy
    prepare(builder, data_dir, sum(len(v) for v in plan.values()),
            int(metadata.get("image_size", 64)), download_dir=downloads,
            download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return faces_version_dir(data_dir)


def faces_version_dir(data_dir: str) -> str:
  return os.path.join(data_dir, FACES_NAME, str(JaxswapFaces.VERSION))


def face_geometry(data_dir: str, name: str) -> dict | None:
  """{"coverage", "template", "size"} of a prepared real-face dataset's crops; None otherwise.

  Recorded by `jaxswap.prepare` in the dataset's metadata; training copies it into the run, so
  conversion never has to find the dataset again.
  """
  base, _, version = name.partition(":")
  if base != FACES_NAME:
    return None  # synthetic faces: no mediapipe crop geometry
  folder = os.path.join(data_dir or os.path.expanduser("~/tensorflow_datasets"), base,
                        version or str(JaxswapFaces.VERSION))
  face = (stored_metadata(folder) or {}).get("face")
  return dict(face) if isinstance(face, dict) else None


def stored_metadata(version_dir: str) -> dict | None:
  """The metadata a built dataset records (options, fingerprint, face geometry), or None."""
  try:
    with open(os.path.join(version_dir, "metadata.json"), "rb") as f:
      return json.loads(f.read())
  except (OSError, ValueError):
    return None
