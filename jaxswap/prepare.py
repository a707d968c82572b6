"""The real-face dataset: a TFDS builder over folders written by `tools/extract.py`.

Same feature spec and per-identity splits as the synthetic dataset (`jaxswap.data`), so the loader
and the train step do not care where faces came from. Each extracted folder (one video or photo
folder) is one `source`; its faces are filtered (face size, blur score, failed landmarks), and the
last `validation_fraction` of its frames (a contiguous block, after a gap of about a second so
near-identical neighbours never straddle the split) becomes validation. The aligned crops are
resized to `image_size` with an area filter; landmarks follow exactly. Written as array_record in
several shards, readable without TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxswap import alignments
from jaxswap import geometry
from jaxswap.data import IDENTITIES, SPLITS, face_example, face_features, split_name, \
    validation_start
from jaxswap.errors import JaxswapError

NAME = "jaxswap_faces"


@dataclasses.dataclass(frozen=True)
class FaceRef:
  """One usable face: where its files are and its landmarks in the extracted crop."""
  identity: str
  folder: str
  source: str
  frame: int
  file: str
  mask_file: str
  landmarks: np.ndarray  # (478, 2) in the extracted crop's pixels
  crop_size: int


def select_faces(folder: str, identity: str, *, mask: str = "components", min_face: float = 0.0,
                 min_blur: float = 0.0) -> tuple[list[FaceRef], dict, dict]:
  """(faces passing the filters, dropped counts by reason, source metadata) of one folder."""
  doc = alignments.load(os.path.join(folder, alignments.FILENAME))
  if not doc.get("complete"):
    raise JaxswapError(f"{folder}/{alignments.FILENAME} is from an unfinished extraction; "
                       "re-run tools/extract.py on it")
  size = int(doc["settings"]["size"])
  refs, dropped = [], {"small": 0, "blurry": 0, "no_landmarks": 0, "not_written": 0}
  for frame, face in alignments.face_records(doc):
    bbox = face["bbox"]
    lm, matrix = alignments.landmarks(face), alignments.matrix(face)
    if lm is None or matrix is None:
      dropped["no_landmarks"] += 1
    elif max(bbox[2] - bbox[0], bbox[3] - bbox[1]) < min_face:
      dropped["small"] += 1
    elif face.get("blur") is None or face["blur"] < min_blur:
      dropped["blurry"] += 1
    elif not face.get("file"):
      dropped["not_written"] += 1
    else:
      refs.append(FaceRef(identity=identity, folder=folder, source=doc["source"]["path"],
                          frame=int(frame["frame"]),
                          file=alignments.face_path(folder, doc, face),
                          mask_file=alignments.mask_path(folder, doc, face, mask),
                          landmarks=geometry.transform_points(matrix, lm), crop_size=size))
  return refs, dropped, doc["source"]


def split_refs(refs: Sequence[FaceRef], fraction: float, gap: int) -> dict[str, list[FaceRef]]:
  """Train/validation by contiguous frame blocks of one source: validation is the last block.

  `gap` frames before the validation block are left out (at most a tenth of the frames), so the
  last training frame is never the near-twin of the first validation frame.
  """
  frames = sorted({r.frame for r in refs})
  start = validation_start(len(frames), fraction)
  if start >= len(frames):
    return {"train": list(refs), "validation": []}
  first_val = frames[start]
  gap = min(gap, len(frames) // 10)
  train_frames = set(frames[:max(1, start - gap)])
  return {"train": [r for r in refs if r.frame in train_frames],
          "validation": [r for r in refs if r.frame >= first_val]}


def load_example(ref: FaceRef, image_size: int) -> dict:
  """The TFDS example of one face, resized from the extracted crop to `image_size`."""
  image = cv2.imread(ref.file, cv2.IMREAD_COLOR)
  mask = cv2.imread(ref.mask_file, cv2.IMREAD_GRAYSCALE) if ref.mask_file else None
  if image is None or mask is None:
    raise JaxswapError(f"cannot read {ref.file} or its mask {ref.mask_file}; re-run "
                       f"tools/extract.py on {ref.folder}")
  image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  if image.shape[0] != image_size:
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (image_size, image_size), interpolation=cv2.INTER_AREA)
  r = image_size / ref.crop_size  # resize maps pixel areas: centres move as (x + 0.5) r - 0.5
  landmarks = (ref.landmarks + 0.5) * r - 0.5
  priority = geometry.priority_mask(landmarks, image_size)
  return face_example(image, mask, priority, landmarks, ref.identity, ref.source, ref.frame)


class JaxswapFaces(tfds.core.GeneratorBasedBuilder):
  """Aligned real faces of two people (a, b) from extracted videos or photo folders."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, plan: dict[str, list[FaceRef]] | None = None, image_size: int = 64,
               metadata: dict | None = None, workers: int = 2, **kwargs):
    # Without a plan the builder can only read a dataset that is already prepared.
    self._plan = plan or {}
    self._image_size = image_size
    self._metadata = metadata or {}
    self._workers = workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="jaxswap aligned faces extracted by tools/extract.py (mediapipe 478 points).",
        features=face_features(geometry.NUM_LANDMARKS),
        metadata=tfds.core.MetadataDict(self._metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._plan:
      raise JaxswapError("JaxswapFaces needs a plan to build; use jaxswap.data_faces.build_faces")
    return {name: self._generate_examples(refs) for name, refs in self._plan.items() if refs}

  def _generate_examples(self, refs: list[FaceRef]) -> Iterator[tuple[str, dict]]:
    # cv2 releases the GIL: decode, resize and re-encode in threads.
    with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
      for lo in range(0, len(refs), 64):  # bounded: never all decoded faces in memory at once
        chunk = refs[lo:lo + 64]
        for ref, example in zip(chunk, pool.map(lambda r: load_example(r, self._image_size),
                                                chunk)):
          yield f"{ref.identity}-{ref.folder}-{os.path.basename(ref.file)}", example


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def build_faces(data_dir: str, a_dirs: Sequence[str], b_dirs: Sequence[str], *,
                image_size: int = 64, mask: str = "components", min_face: float = 0.0,
                min_blur: float = 0.0, validation_fraction: float = 0.1,
                validation_gap_seconds: float = 1.0, num_shards: int = 4,
                workers: int = 2) -> dict:
  """Builds (or reuses, when inputs and options are unchanged) `jaxswap_faces` in data_dir.

  Returns {"name", "built" (False when reused), "splits": {split: count}, "dropped":
  {identity: {reason: count}}, "shards", "path"}.
  """
  if mask not in geometry.MASK_TYPES:
    raise JaxswapError(f"mask {mask!r} is not one of {geometry.MASK_TYPES}")
  if not 8 <= image_size <= 1024:
    raise JaxswapError(f"image size {image_size} is outside 8..1024")
  folders = {"a": list(a_dirs), "b": list(b_dirs)}
  plan: dict[str, list[FaceRef]] = {split_name(s, i): [] for s in SPLITS for i in IDENTITIES}
  dropped, sources = {}, []
  for ident in IDENTITIES:
    if not folders[ident]:
      raise JaxswapError(f"no extracted folder given for identity {ident!r}")
    dropped[ident] = {}
    for folder in folders[ident]:
      refs, why, source = select_faces(folder, ident, mask=mask, min_face=min_face,
                                       min_blur=min_blur)
      for k, v in why.items():
        dropped[ident][k] = dropped[ident].get(k, 0) + v
      gap = int(round((source.get("fps") or 0.0) * validation_gap_seconds))
      parts = split_refs(refs, validation_fraction, gap)
      for split, part in parts.items():
        plan[split_name(split, ident)] += part
      doc_path = os.path.join(folder, alignments.FILENAME)
      sources.append({"identity": ident, "folder": os.path.abspath(folder),
                      "alignments_sha256": _file_digest(doc_path), "faces": len(refs)})
    if not plan[split_name("train", ident)]:
      raise JaxswapError(
          f"no usable training faces of identity {ident!r} in {', '.join(folders[ident])} "
          f"(dropped: {dropped[ident]}); lower --min-face/--min-blur or add footage")
  counts = {k: len(v) for k, v in plan.items() if v}
  options = {"image_size": image_size, "mask": mask, "min_face": min_face, "min_blur": min_blur,
             "validation_fraction": validation_fraction,
             "validation_gap_seconds": validation_gap_seconds}
  fingerprint = hashlib.sha256(json.dumps([options, sources], sort_keys=True).encode()).hexdigest()
  metadata = {"fingerprint": fingerprint, "options": options, "sources": sources,
              "num_landmarks": geometry.NUM_LANDMARKS, "image_size": image_size}
  version_dir = os.path.join(data_dir, NAME, str(JaxswapFaces.VERSION))
  built = _stored_fingerprint(version_dir) != fingerprint
  if built and os.path.isdir(version_dir):
    shutil.rmtree(version_dir)  # built from other faces or options: stale
  builder = JaxswapFaces(plan=plan, image_size=image_size, metadata=metadata, workers=workers,
                         data_dir=data_dir, file_format="array_record")
  shards = max(1, min([num_shards] + list(counts.values())))
  tfds.disable_progress_bar()  # TFDS's per-split bars drown our own progress output
  with tempfile.TemporaryDirectory() as downloads:  # nothing is downloaded; keep DIR tidy
    builder.download_and_prepare(
        download_dir=downloads, download_config=tfds.download.DownloadConfig(num_shards=shards))
  return {"name": NAME, "built": built, "splits": counts, "dropped": dropped,
          "shards": shards, "path": version_dir}


def _stored_fingerprint(version_dir: str) -> str | None:
  try:
    with open(os.path.join(version_dir, "metadata.json"), "rb") as f:
      return json.loads(f.read()).get("fingerprint")
  except (OSError, ValueError):
    return None
