"""Conversion's front half: where the faces are (alignments or detection), smoothing, batched swap.

`FaceSource` yields (frame, [Job]) from a reader thread: decoding, then each face's frame -> face
matrix at the model's size, from an alignments file or mediapipe. `Run.batches` aligns the crops
and runs the jitted swap on fixed-size, padded batches, keeping one batch in flight on the device
while the next is aligned, and yields frames in order with every Job's output filled in.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from typing import Iterator

import numpy as np

from jaxswap import prefetch, video
from jaxswap.errors import JaxswapError
from jaxswap.faces import alignments, geometry, track, warp

log = logging.getLogger(__name__)
DEFAULT_COVERAGE = 0.85


@dataclasses.dataclass
class Job:
  """One face of one frame: where it is, its aligned crop, and what the model made of it."""
  matrix: np.ndarray  # 2x3 frame -> face, for a crop of the model's size
  landmarks: np.ndarray | None  # (478, 2) frame pixels
  crop: np.ndarray | None = None  # uint8 (size, size, 3), the model's input
  rgb: np.ndarray | None = None  # float32 (size, size, 3) in [0, 1], the swapped face
  learned: np.ndarray | None = None  # float32 (size, size), the model's mask
  track: int | None = None  # the face's track (jaxswap.faces.track): the same person across frames


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class Run:
  """A trained run's swap function at a fixed batch shape (compiles once)."""

  def __init__(self, config, fn, jitted, step: int | None, batch: int, face: dict | None = None):
    self.config, self.fn, self._jitted, self.step, self.batch = config, fn, jitted, step, batch
    self.face = face  # coverage, template, size of the faces it learnt; None if not recorded
    self.size = int(config.image_size)
    self.model_name = config.model.name
    self.has_mask = bool(config.model.learn_mask)

  @classmethod
  def load(cls, workdir: str, to: str, batch: int, model_fn=None,
           passthrough: bool = False) -> "Run":
    import jax  # pylint: disable=g-import-not-at-top
    from jaxswap import swap  # pylint: disable=g-import-not-at-top
    config = swap.load_config(workdir)
    face = swap.run_face(config)
    step = latest_step(workdir)
    if step is None:
      raise JaxswapError(f"--workdir={workdir} has no checkpoint yet: train first")
    devices = jax.device_count()
    batch = -(-batch // devices) * devices  # the mesh splits the batch evenly
    if passthrough:
      run = cls(config, passthrough_fn(), None, step, batch, face)
      run.model_name, run.has_mask = "passthrough", False
      return run
    if model_fn is not None:
      return cls(config, model_fn, None, step, batch, face)
    info: dict = {}
    config, model, params = swap.load_run(workdir, info=info)
    step = info.get("step", step)  # an older one when the newest is damaged
    jitted = swap.make_swap_fn(model, to)
    return cls(config, lambda faces: jitted(params, faces), jitted, step, batch, face)

  def compilations(self) -> int | None:
    jitted = self._jitted
    return jitted._cache_size() if jitted is not None else None  # pylint: disable=protected-access

  def batches(self, stream: Iterator, timer, max_frames: int | None = None) -> Iterator:
    """(frame, jobs) in order, jobs filled; one batch on the device while the next is aligned."""
    pending: collections.deque = collections.deque()
    items, crops = [], []
    max_frames = max_frames or 4 * self.batch
    for frame, jobs in stream:
      t0 = time.perf_counter()
      for job in jobs:
        job.crop = warp.align_face(frame.rgb, job.matrix, self.size)
        crops.append(job.crop)
      timer.add("align", time.perf_counter() - t0)
      items.append((frame, jobs))
      if len(crops) >= self.batch or len(items) >= max_frames:
        pending.append(self._dispatch(items, crops, timer))
        items, crops = [], []
        while len(pending) > 1:
          yield from self._collect(pending.popleft(), timer)
    if items:
      pending.append(self._dispatch(items, crops, timer))
    while pending:
      yield from self._collect(pending.popleft(), timer)

  def _dispatch(self, items, crops, timer):
    t0 = time.perf_counter()
    outs = []
    if crops:
      faces = np.stack(crops)
      n_pad = -(-len(faces) // self.batch) * self.batch
      faces = np.concatenate([faces, np.zeros((n_pad - len(faces),) + faces.shape[1:],
                                              np.uint8)])
      outs = [self.fn(faces[i:i + self.batch]) for i in range(0, n_pad, self.batch)]
    timer.add("infer", time.perf_counter() - t0)
    return items, outs

  def _collect(self, chunk, timer):
    items, outs = chunk
    t0 = time.perf_counter()
    rgb = np.concatenate([np.asarray(o["rgb"]) for o in outs]) if outs else None
    mask = (np.concatenate([np.asarray(o["mask"]) for o in outs])
            if outs and "mask" in outs[0] else None)
    timer.add("infer", time.perf_counter() - t0)
    k = 0
    for frame, jobs in items:
      for job in jobs:
        job.rgb = rgb[k]
        job.learned = None if mask is None else np.ascontiguousarray(mask[k, ..., 0])
        k += 1
      yield frame, jobs


def passthrough_fn():
  """The model replaced by the identity, jitted over the device mesh like a real model.

  A face goes through the run's aligned crop at the run's size and back into the frame, with the
  same mask, colour match and blend: what a perfect model of that size would give. Scored by
  `jaxswap-evaluate`, it is the ceiling the crop's resolution puts on sharpness, pose and
  expression for faces of this video's size.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jaxswap import parallel  # pylint: disable=g-import-not-at-top
  from jaxswap.data import loader  # pylint: disable=g-import-not-at-top
  batch = parallel.batch_sharding(parallel.make_mesh())
  return jax.jit(lambda faces: {"rgb": loader.to_float(faces)}, in_shardings=batch,
                 out_shardings=batch)


def latest_step(workdir: str) -> int | None:
  steps = [int(n) for n in _listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
  return max(steps) if steps else None


def _listdir(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


# ----------------------------------------------------------------------------------------------
# Where the faces are
# ----------------------------------------------------------------------------------------------


class FaceSource:
  """Frames with their faces' matrices: from an alignments file, or detected on the fly."""

  def __init__(self, source, run: Run, opts, lookup=None, detector=None, coverage=None,
               counts: dict | None = None):
    self.source, self.run, self.opts = source, run, opts
    self._lookup, self._detector, self.coverage = lookup, detector, coverage
    self._tracker = track.Tracker() if detector is not None else None
    # faces filled in between sampled frames, and frames left out for a too long gap
    self.counts = counts or {"faces_interpolated": 0, "faces_in_long_gaps": 0}

  @classmethod
  def create(cls, source, run: Run, alignments_path: str | None, opts) -> "FaceSource":
    trained = run.face
    if trained is None:
      log.warning("the run does not record the coverage of the faces it was trained on (a "
                  "synthetic dataset, or a run older than that record): alignments are not "
                  "checked, and detection crops at coverage %s", opts.coverage or DEFAULT_COVERAGE)
    if alignments_path is not None:
      doc = alignments.load(alignments_path)
      check_alignments(doc, alignments_path, source, trained)
      if opts.track is not None and opts.track not in {t["track"] for t in doc["tracks"]}:
        raise JaxswapError(f"--track {opts.track}: {alignments_path} has tracks "
                           f"{sorted(t['track'] for t in doc['tracks'])} (see --list-tracks)")
      every_n = int(doc["settings"].get("every_n") or 1)
      max_gap = opts.max_gap if opts.max_gap is not None else \
          max(track.INTERPOLATE_GAP, 2 * every_n)
      lookup, counts = alignment_lookup(doc, run.size, max_gap)
      return cls(source, run, opts, lookup=lookup, counts=counts)
    if opts.track is not None:
      raise JaxswapError("--track needs --alignments (tracks are numbered over the whole video; "
                         "run jaxswap-extract first and see --list-tracks)")
    coverage = opts.coverage or (trained or {}).get("coverage") or DEFAULT_COVERAGE
    from jaxswap.faces import detect  # pylint: disable=g-import-not-at-top
    return cls(source, run, opts, detector=detect.FaceDetector(), coverage=coverage)

  def close(self) -> None:
    if self._detector is not None:
      self._detector.close()

  def _faces(self, rgb: np.ndarray, index: int) -> list[Job]:
    if self._lookup is not None:
      return [Job(m, lm, track=t) for m, lm, t in self._lookup.get(index, [])]
    faces = [f for f in self._detector.detect(rgb) if f.landmarks is not None]
    ids = self._tracker.update(index, [f.bbox for f in faces])  # in order of appearance
    return [Job(geometry.alignment_matrix(f.landmarks, self.run.size, self.coverage),
                f.landmarks.astype(np.float64), track=t) for f, t in zip(faces, ids)]

  def _read(self, timer, constant_rate: bool) -> Iterator:
    start, end = self.opts.frames
    frames = self.source.frames(lambda i: i >= start, constant_rate=constant_rate)
    while True:
      t0 = time.perf_counter()
      frame = next(frames, None)
      timer.add("decode", time.perf_counter() - t0)
      if frame is None or (end is not None and frame.index >= end):
        return
      if frame.rgb is None:
        continue
      t0 = time.perf_counter()
      jobs = self._faces(frame.rgb, frame.index)
      if self.opts.face_index is not None:
        jobs = [j for k, j in enumerate(jobs) if k in self.opts.face_index]
      if self.opts.track is not None:
        jobs = [j for j in jobs if j.track == self.opts.track]
      timer.add("detect", time.perf_counter() - t0)
      yield frame, jobs

  def stream(self, timer, constant_rate: bool = False) -> Iterator:
    """(frame, jobs) decoded and located in a reader thread, smoothed over +-opts.smooth."""
    items = self._read(timer, constant_rate)
    if self.opts.smooth > 0:
      items = smooth_stream(items, self.opts.smooth, self.run.size)
    return prefetch.background(items, 16, name="jaxswap-reader")


def check_alignments(doc: dict, path: str, source, trained: dict | None) -> None:
  """Refuses alignments of another video, or made at another coverage than the run learnt."""
  src = doc["source"]
  if (src.get("width"), src.get("height")) != (source.width, source.height):
    raise JaxswapError(f"--alignments {path} was made from a {src.get('width')}x"
                       f"{src.get('height')} input ({src.get('path')}), but --input is "
                       f"{source.width}x{source.height}")
  if src.get("fingerprint") and src["fingerprint"] != video.fingerprint(source.path):
    log.warning("%s was made from %s, a different file than %s; frame numbers may not match",
                path, src.get("path"), source.path)
  if trained is None:
    return
  settings = doc["settings"]
  if abs(float(settings["coverage"]) - trained["coverage"]) > 1e-6 or \
      settings.get("template") != trained["template"]:
    raise JaxswapError(
        f"--alignments {path} crops faces at coverage {settings['coverage']} "
        f"(template {settings.get('template')}), but the run was trained on faces cropped at "
        f"coverage {trained['coverage']} (template {trained['template']}): the model would see "
        f"faces at the wrong scale. Re-extract with --coverage {trained['coverage']}, or omit "
        "--alignments to detect faces at the run's coverage")


def alignment_lookup(doc: dict, size: int, max_gap: int = track.INTERPOLATE_GAP
                     ) -> tuple[dict[int, list], dict]:
  """frame index -> [(matrix at the model's size, landmarks, track)] from an alignments document,
  filled in along each track on the frames a sampled extraction (`--every-n`) skipped.

  Returns it with {"faces_interpolated", "faces_in_long_gaps"} (unsampled frames of a track left
  out because its sightings were more than `max_gap` frames apart).
  """
  ref = int(doc["settings"]["size"])
  sampled = {int(f["frame"]) for f in doc["frames"]}
  sightings: dict[int, dict[int, tuple]] = collections.defaultdict(dict)
  rank: dict[tuple[int, int], int] = {}  # (frame, track) -> place in the frame's list
  for frame in doc["frames"]:
    for k, face in enumerate(frame["faces"]):
      m = alignments.matrix(face)
      if m is not None:
        sightings[face["track"]][int(frame["frame"])] = (
            warp.rescale_matrix(m, ref, size), alignments.landmarks(face))
        rank[(int(frame["frame"]), face["track"])] = k
  counts = {"faces_interpolated": 0, "faces_in_long_gaps": 0}
  out: dict[int, list] = collections.defaultdict(list)
  for t, seen in sightings.items():
    filled, skipped = track.interpolate(seen, sampled, max_gap)
    counts["faces_interpolated"] += len(filled) - len(seen)
    counts["faces_in_long_gaps"] += skipped
    for f, (m, lm) in filled.items():
      out[f].append((m, lm, t))
  # The alignments' order within a frame (largest first: what --face-index counts), filled-in
  # faces after the sighted ones.
  for f, faces in out.items():
    faces.sort(key=lambda e: (rank.get((f, e[2]), len(faces)), e[2]))
  return dict(out), counts


# ----------------------------------------------------------------------------------------------
# Temporal smoothing
# ----------------------------------------------------------------------------------------------


def _centre(job: Job, size: int) -> np.ndarray:
  return geometry.transform_points(geometry.invert_affine(job.matrix), [size / 2, size / 2])


def smooth_jobs(window: list[list[Job]], jobs: list[Job], size: int) -> list[Job]:
  """Each face's matrix and landmarks averaged along its track over the window's frames.

  Similarity matrices ([[a, -b, .], [b, a, .]]) form a linear space, so their mean is again one.
  A face without a track is matched to the nearest face of each frame instead.
  """
  out = []
  for job in jobs:
    c, radius = _centre(job, size), 0.3 * size / geometry.matrix_scale(job.matrix)
    matched = []
    for other_jobs in window:
      if job.track is not None:
        matched += [o for o in other_jobs if o.track == job.track][:1]
        continue
      if not other_jobs:
        continue
      d = [np.linalg.norm(_centre(o, size) - c) for o in other_jobs]
      k = int(np.argmin(d))
      if d[k] <= radius:
        matched.append(other_jobs[k])
    m = np.mean([o.matrix for o in matched], 0)
    lms = [o.landmarks for o in matched]
    lm = np.mean(lms, 0) if all(x is not None for x in lms) else job.landmarks
    out.append(Job(m, lm, track=job.track))
  return out


def smooth_stream(items: Iterator, n: int, size: int) -> Iterator:
  """Centred moving average over +-n frames; delays the stream by n frames."""
  buf: collections.deque = collections.deque()
  emit = 0  # index in buf of the next frame to yield
  for item in items:
    buf.append(item)
    while len(buf) - 1 - emit >= n:
      window = [jobs for _, jobs in list(buf)[max(0, emit - n):emit + n + 1]]
      frame, jobs = buf[emit]
      yield frame, smooth_jobs(window, jobs, size)
      emit += 1
      while emit > n:
        buf.popleft()
        emit -= 1
  while emit < len(buf):
    window = [jobs for _, jobs in list(buf)[max(0, emit - n):]]
    frame, jobs = buf[emit]
    yield frame, smooth_jobs(window, jobs, size)
    emit += 1
