"""Face tracks: the same person's face linked across frames, and sampled alignments filled in.

Linking is by position: each track predicts where its face is now from its last two sightings
(constant velocity), and a face joins the nearest prediction within half a face size, of a
similar size; greedily, closest pairs first. Prediction, not just overlap, is what keeps two
faces that cross each other apart. A track survives `max_gap` frames without a sighting, so a
missed detection or a sampled extraction (`--every-n`) does not split it.

Tracks are numbered by total screen time (frames seen), 0 = the person the video is about; ties
go to the one seen first. Numpy only, like the rest of `faces/`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

LINK_GAP = 10  # frames a track may go unseen and still continue
MAX_DISTANCE = 0.5  # of the face size: how far from its predicted place a face may be
INTERPOLATE_GAP = 12  # default longest run of unsampled frames filled in along a track


@dataclasses.dataclass
class _Track:
  raw_id: int
  frames: list[int]
  centres: list[np.ndarray]
  sizes: list[float]

  def predict(self, frame: int) -> np.ndarray:
    if len(self.frames) < 2:
      return self.centres[-1]
    velocity = (self.centres[-1] - self.centres[-2]) / (self.frames[-1] - self.frames[-2])
    return self.centres[-1] + velocity * (frame - self.frames[-1])


def box_centre_size(bbox: Sequence[float]) -> tuple[np.ndarray, float]:
  x0, y0, x1, y1 = (float(v) for v in bbox)
  return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(x1 - x0, y1 - y0, 1e-6)


class Tracker:
  """Online linking: `update(frame, boxes)` gives each box its track (ids in order of appearance);
  `numbering()` maps those ids to the final ones, by screen time."""

  def __init__(self, max_gap: int = LINK_GAP, max_distance: float = MAX_DISTANCE):
    self.max_gap, self.max_distance = max_gap, max_distance
    self.tracks: list[_Track] = []

  def update(self, frame: int, boxes: Sequence[Sequence[float]]) -> list[int]:
    faces = [box_centre_size(b) for b in boxes]
    active = [t for t in self.tracks if 0 < frame - t.frames[-1] <= self.max_gap]
    pairs = []
    for t in active:
      predicted, size = t.predict(frame), t.sizes[-1]
      for k, (centre, s) in enumerate(faces):
        distance = float(np.linalg.norm(centre - predicted)) / max(size, s)
        if distance <= self.max_distance and 0.5 <= s / size <= 2.0:
          pairs.append((distance, t.raw_id, k))
    ids: list[int | None] = [None] * len(faces)
    taken = set()
    for _, raw_id, k in sorted(pairs):
      if ids[k] is None and raw_id not in taken:
        ids[k] = raw_id
        taken.add(raw_id)
    for k, (centre, s) in enumerate(faces):
      if ids[k] is None:
        ids[k] = len(self.tracks)
        self.tracks.append(_Track(ids[k], [], [], []))
      t = self.tracks[ids[k]]
      t.frames.append(frame)
      t.centres.append(centre)
      t.sizes.append(s)
    return ids

  def numbering(self) -> dict[int, int]:
    """raw id -> track number by total screen time (0 = most frames; ties: seen first)."""
    order = sorted(self.tracks, key=lambda t: (-len(t.frames), t.frames[0]))
    return {t.raw_id: n for n, t in enumerate(order)}


def link_frames(frames: list[dict], max_gap: int = LINK_GAP) -> list[dict]:
  """Sets `face["track"]` on every face of alignments-style frame records (in frame order) and
  returns the tracks' summary: [{"track", "frames", "first", "last", "mean_size"}]."""
  tracker = Tracker(max_gap)
  raw = [tracker.update(f["frame"], [face["bbox"] for face in f["faces"]])
         for f in sorted(frames, key=lambda f: f["frame"])]
  numbers = tracker.numbering()
  for f, ids in zip(sorted(frames, key=lambda f: f["frame"]), raw):
    for face, raw_id in zip(f["faces"], ids):
      face["track"] = numbers[raw_id]
  summary = [{"track": numbers[t.raw_id], "frames": len(t.frames), "first": t.frames[0],
              "last": t.frames[-1], "mean_size": round(float(np.mean(t.sizes)), 1)}
             for t in tracker.tracks]
  return sorted(summary, key=lambda s: s["track"])


def interpolate(sightings: dict[int, tuple[np.ndarray, np.ndarray | None]], sampled: set[int],
                max_gap: int = INTERPOLATE_GAP
                ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray | None]], int]:
  """One track's (matrix, landmarks) filled in on the frames its extraction did not sample.

  Between two consecutive sightings f0 < f1, every frame not in `sampled` is linearly
  interpolated (similarity matrices form a linear space, and landmarks move with them) when
  f1 - f0 <= max_gap and the track was not found missing on a sampled frame in between. Returns
  (sightings plus filled frames, number of unsampled frames left out because the gap was longer).
  """
  out = dict(sightings)
  skipped = 0
  frames = sorted(sightings)
  for f0, f1 in zip(frames, frames[1:]):
    between = range(f0 + 1, f1)
    if not between or any(f in sampled for f in between):
      continue  # adjacent, or seen missing on a sampled frame: not this track's gap to fill
    if f1 - f0 > max_gap:
      skipped += len(between)
      continue
    (m0, l0), (m1, l1) = sightings[f0], sightings[f1]
    for f in between:
      w = (f - f0) / (f1 - f0)
      lm = None if l0 is None or l1 is None else (1 - w) * l0 + w * l1
      out[f] = ((1 - w) * m0 + w * m1, lm)
  return out, skipped


def format_tracks(tracks: list[dict]) -> str:
  """The --list-tracks table."""
  rows = ["track  frames  first   last  mean size (px)"]
  rows += [f"{t['track']:5d}  {t['frames']:6d}  {t['first']:5d}  {t['last']:5d}  "
           f"{t['mean_size']:.1f}" for t in tracks]
  return "\n".join(rows)
