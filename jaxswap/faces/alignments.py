"""The alignments file (`alignments.json`): where every extracted face came from, versioned JSON.

Written by `jaxswap.extract`, read by the dataset builder and by conversion; never pickle. The
schema is documented in README.md ("alignments.json"); `load` checks it and migrates older
versions, so a reader only ever sees the current one.

  {"schema": "jaxswap.alignments", "version": 2, "complete": true,
   "source":   {"type": "video"|"images", "path", "fingerprint", "fps", "width", "height",
                "frame_count", "reported_frame_count"},
   "settings": {"size", "coverage", "every_n", "min_face", "min_blur", "faces",
                "detect_confidence", "template"},
   "files":    {"faces": "faces", "masks": {"components": "masks/components", ...}},
   "summary":  {...counts...},
   "tracks":   [{"track": 0, "frames", "first", "last", "mean_size"}, ...],  (version 2)
   "frames":   [{"frame": 0, ["name", "width", "height" for images], "faces": [
                  {"bbox": [x0, y0, x1, y1], "score", "landmarks": [[x, y] * 478] | null,
                   "matrix": [[a, b, c], [d, e, f]] | null, "blur": float | null,
                   "file": "NAME.png" | null, "skipped": null | "small" | "no_landmarks"
                   | "blurry", "track": 0}]}]}
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from jaxswap.errors import JaxswapError
from jaxswap.faces import track

SCHEMA = "jaxswap.alignments"
VERSION = 2
FILENAME = "alignments.json"
SKIP_REASONS = ("small", "no_landmarks", "blurry")
_REQUIRED = ("source", "settings", "files", "frames")


def dumps(doc: dict) -> bytes:
  """JSON with one frame per line: compact, yet a person can read and diff it."""
  head = {k: v for k, v in doc.items() if k != "frames"}
  head_text = json.dumps(head, indent=1)
  frames = ",\n".join(json.dumps(f, separators=(",", ":"), sort_keys=True)
                      for f in doc.get("frames", []))
  return (head_text[:-2] + ',\n "frames": [\n' + frames + "\n]}\n").encode()


def link_tracks(doc: dict) -> dict:
  """Links the document's faces into tracks (sets face["track"] and doc["tracks"]).

  Sampled extractions (`--every-n N`) see a face only every N frames: the link gap grows with N.
  """
  every_n = int(doc.get("settings", {}).get("every_n") or 1)
  doc["tracks"] = track.link_frames(doc.get("frames", []), max(track.LINK_GAP, 3 * every_n))
  return doc


def migrate(doc: dict, path: str) -> dict:
  """Brings an older document up to VERSION: version 2 adds face tracks."""
  version = doc.get("version")
  if not isinstance(version, int) or version < 1:
    raise JaxswapError(f"{path} has no valid schema version")
  if version > VERSION:
    raise JaxswapError(f"{path} uses alignments schema {version}, newer than this jaxswap "
                       f"({VERSION}); upgrade jaxswap")
  if (version < 2 or "tracks" not in doc) and "frames" in doc:
    doc = link_tracks(dict(doc, version=VERSION))
  return doc


def load(path: str) -> dict:
  """A checked, current-version alignments document."""
  try:
    with open(path, "rb") as f:
      doc = json.loads(f.read())
  except FileNotFoundError:
    raise JaxswapError(f"{path} does not exist (run jaxswap-extract first)") from None
  except (OSError, ValueError) as e:
    raise JaxswapError(f"cannot read alignments file {path}: {e}") from None
  if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
    raise JaxswapError(f"{path} is not a jaxswap alignments file")
  doc = migrate(doc, path)
  missing = [k for k in _REQUIRED if k not in doc]
  if missing:
    raise JaxswapError(f"{path} lacks {', '.join(missing)}")
  return doc


def face_records(doc: dict) -> Iterator[tuple[dict, dict]]:
  """(frame record, face record) for every detected face, in frame order."""
  for frame in doc["frames"]:
    for face in frame["faces"]:
      yield frame, face


def landmarks(face: dict) -> np.ndarray | None:
  pts = face.get("landmarks")
  return None if pts is None else np.asarray(pts, np.float64)


def matrix(face: dict) -> np.ndarray | None:
  m = face.get("matrix")
  return None if m is None else np.asarray(m, np.float64)


def face_path(folder: str, doc: dict, face: dict) -> str | None:
  """Absolute path of a face's aligned crop, or None when none was written."""
  if not face.get("file"):
    return None
  return os.path.join(folder, doc["files"]["faces"], face["file"])


def mask_path(folder: str, doc: dict, face: dict, kind: str) -> str | None:
  masks = doc["files"].get("masks", {})
  if not face.get("file") or kind not in masks:
    return None
  return os.path.join(folder, masks[kind], face["file"])
