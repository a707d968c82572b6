"""Extract aligned faces from a video or a folder of photos.

  jaxswap-extract --input VIDEO_OR_DIR --output DIR [--size 256 --coverage 0.85
      --every-n 1 --min-face 0 --min-blur 0 --faces all|largest --detect-confidence 0.5]

Writes DIR/faces/*.png (aligned RGB crops), DIR/masks/{components,extended}/*.png and
DIR/alignments.json (schema: jaxswap/alignments.py and README). Resumable: every finished frame is
committed at once as its own small file under DIR/.partial/ (after its PNGs), every file is
written to a temporary name and renamed, so a kill loses nothing already written and leaves no
torn file; re-running skips committed frames and produces exactly what one clean run would have.
Decoding (a reader thread), detection (this thread) and PNG writing (writer threads) overlap.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import json
import os
import shutil
import sys
import time

import cv2
import numpy as np
import tqdm

from jaxswap import prefetch, provenance, video
from jaxswap.errors import JaxswapError, write_failure
from jaxswap.faces import alignments, geometry, warp

PARTIAL = ".partial"
TEMPLATE_ID = "jaxswap-mediapipe478-v1"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that changes what a frame's output is; a re-run must use the same values."""
  size: int = 256
  coverage: float = 0.85
  every_n: int = 1
  min_face: float = 0.0
  min_blur: float = 0.0
  faces: str = "all"
  detect_confidence: float = 0.5
  tiles: int = 0  # 0: auto (2 for photo folders, 1 = whole frame only for videos)
  template: str = TEMPLATE_ID

  def check(self) -> None:
    if not 16 <= self.size <= 4096:
      raise JaxswapError(f"--size {self.size} is outside 16..4096")
    if not 0.1 <= self.coverage <= 2.0:
      raise JaxswapError(f"--coverage {self.coverage} is outside 0.1..2.0")
    if self.every_n < 1:
      raise JaxswapError(f"--every-n {self.every_n} must be at least 1")
    if self.faces not in ("all", "largest"):
      raise JaxswapError(f"--faces {self.faces!r} is not 'all' or 'largest'")
    if not 0.0 < self.detect_confidence < 1.0:
      raise JaxswapError(f"--detect-confidence {self.detect_confidence} is outside (0, 1)")
    if not 0 <= self.tiles <= 8:
      raise JaxswapError(f"--tiles {self.tiles} is outside 0..8")


def blur_score(rgb: np.ndarray, mask: np.ndarray) -> float:
  """Variance of the Laplacian over the face at a fixed 128 px, so scores compare across sizes.

  Sharp faces score in the hundreds, soft or motion-blurred ones in the tens or less.
  """
  gray = cv2.cvtColor(cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA),
                      cv2.COLOR_RGB2GRAY)
  inside = cv2.erode(cv2.resize(mask, (128, 128), interpolation=cv2.INTER_NEAREST),
                     np.ones((5, 5), np.uint8)) > 0
  lap = cv2.Laplacian(gray, cv2.CV_32F)
  return float(lap[inside].var()) if inside.any() else 0.0


def process_frame(detector, frame: video.Frame, settings: Settings, stem: str):
  """(frame record, [(relative path, image)]) for one decoded frame."""
  record = {"frame": frame.index}
  if frame.name:
    record["name"] = frame.name
  if frame.rgb is None:
    record.update(faces=[], error=frame.error)
    return record, []
  if frame.name:
    record["height"], record["width"] = frame.rgb.shape[:2]
  found = detector.find_faces(frame.rgb, settings.tiles)
  if settings.faces == "largest":
    found = found[:1]
  faces, images = [], []
  size = settings.size
  for k, face in enumerate(found):
    entry = {"bbox": np.round(face.bbox, 2).tolist(), "score": round(face.score, 4),
             "landmarks": None, "matrix": None, "blur": None, "file": None, "skipped": None}
    faces.append(entry)
    if face.size < settings.min_face:
      entry["skipped"] = "small"
      continue
    pts = detector.landmarks(frame.rgb, face)
    if pts is None:
      entry["skipped"] = "no_landmarks"
      continue
    matrix = geometry.alignment_matrix(pts, size, settings.coverage)
    entry["landmarks"] = np.round(pts.astype(np.float64), 2).tolist()
    entry["matrix"] = matrix.tolist()
    crop = warp.align_face(frame.rgb, matrix, size)
    aligned = geometry.transform_points(matrix, pts)
    masks = {kind: geometry.face_mask(aligned, size, kind) for kind in geometry.MASK_TYPES}
    entry["blur"] = round(blur_score(crop, masks["components"]), 2)
    if entry["blur"] < settings.min_blur:
      entry["skipped"] = "blurry"
      continue
    entry["file"] = f"{stem}_{frame.index:06d}_{k}.png"
    images.append((os.path.join("faces", entry["file"]), crop))
    for kind, mask in masks.items():
      images.append((os.path.join("masks", kind, entry["file"]), mask))
  record["faces"] = faces
  return record, images


# ----------------------------------------------------------------------------------------------
# Output folder state
# ----------------------------------------------------------------------------------------------


class Output:
  """The output folder: committed frames (final file + .partial/frames/*.json) and the header."""

  def __init__(self, folder: str, header: dict):
    self.folder = folder
    self.header = header
    self.partial = os.path.join(folder, PARTIAL)
    self.final_path = os.path.join(folder, alignments.FILENAME)

  def check_and_load(self) -> dict[int, dict]:
    """Committed frames whose files all exist; refuses a folder made from other input/settings."""
    done: dict[int, dict] = {}
    for path in (self.final_path, os.path.join(self.partial, "header.json")):
      if os.path.exists(path):
        old = alignments.load(path) if path == self.final_path else _read_json(path)
        self._check_same(path, old)
        for rec in old.get("frames", []):
          done[rec["frame"]] = rec
    for path in glob.glob(os.path.join(self.partial, "frames", "*.json")):
      rec = _read_json(path)
      done[rec["frame"]] = rec
    return {i: r for i, r in done.items() if self._files_exist(r)}

  def _check_same(self, path: str, old: dict) -> None:
    src, new_src = old.get("source", {}), self.header["source"]
    if src.get("fingerprint") != new_src["fingerprint"]:
      raise JaxswapError(
          f"{path} holds the alignments of another input ({src.get('path')}), not of "
          f"{new_src['path']}; choose another --output (nothing was changed)")
    changed = [f"--{k.replace('_', '-')} {v} (now {self.header['settings'].get(k)})"
               for k, v in old.get("settings", {}).items() if self.header["settings"].get(k) != v]
    if changed:
      raise JaxswapError(f"{path} was extracted with {', '.join(changed)}; re-run with the old "
                         "values or choose another --output (nothing was changed)")

  def _files_exist(self, rec: dict) -> bool:
    names = [f["file"] for f in rec.get("faces", []) if f.get("file")]
    dirs = [self.header["files"]["faces"], *self.header["files"]["masks"].values()]
    return all(os.path.exists(os.path.join(self.folder, d, n)) for n in names for d in dirs)

  def start(self) -> None:
    for sub in ("faces", "masks/components", "masks/extended", f"{PARTIAL}/frames"):
      try:
        os.makedirs(os.path.join(self.folder, sub), exist_ok=True)
      except OSError as e:
        raise write_failure(os.path.join(self.folder, sub), e, None, "--output") from None
      for tmp in glob.glob(os.path.join(self.folder, sub, ".tmp-*")):
        os.remove(tmp)  # left by a killed run; the file it was becoming is redone
    provenance.write_bytes(os.path.join(self.partial, "header.json"),
                          json.dumps(self.header, sort_keys=True).encode())

  def commit(self, record: dict, images: list[tuple[str, np.ndarray]]) -> None:
    """Writes a frame's PNGs, then its record: a frame is done exactly when its record exists."""
    for rel, image in images:
      provenance.write_bytes(os.path.join(self.folder, rel), provenance.encode_png(image))
    provenance.write_bytes(os.path.join(self.partial, "frames", f"{record['frame']:09d}.json"),
                          json.dumps(record, separators=(",", ":")).encode())

  def finish(self, records: dict[int, dict], frames_seen: int, summary: dict) -> dict:
    doc = dict(self.header)
    doc["source"] = dict(doc["source"], frame_count=frames_seen,
                         reported_frame_count=doc["source"]["frame_count"])
    doc.update(complete=True, summary=summary, frames=[records[i] for i in sorted(records)])
    alignments.link_tracks(doc)
    provenance.write_bytes(self.final_path, alignments.dumps(doc))
    shutil.rmtree(self.partial, ignore_errors=True)
    return doc


def _read_json(path: str) -> dict:
  try:
    with open(path, "rb") as f:
      return json.loads(f.read())
  except (OSError, ValueError) as e:
    raise JaxswapError(f"cannot read {path}: {e}; delete it to redo that frame") from None


def summarize(records: dict[int, dict]) -> dict:
  faces = [f for r in records.values() for f in r["faces"]]
  skipped = collections.Counter(f["skipped"] for f in faces if f["skipped"])
  return {
      "frames_read": sum(1 for r in records.values() if r.get("error") is None),
      "frames_unreadable": sum(1 for r in records.values() if r.get("error")),
      "frames_with_faces": sum(1 for r in records.values() if r["faces"]),
      "frames_no_face": sum(1 for r in records.values() if not r["faces"] and not r.get("error")),
      "faces_detected": len(faces),
      "faces_written": sum(1 for f in faces if f["file"]),
      **{f"skipped_{k}": skipped.get(k, 0) for k in alignments.SKIP_REASONS},
  }


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def extract(input_path: str, output: str, settings: Settings = Settings(), *,
            progress: bool = True, writers: int = 2, detector=None) -> dict:
  """Extracts (or finishes extracting) `input_path` into `output`; returns the alignments doc."""
  settings.check()
  source = video.open_source(input_path)
  if settings.tiles == 0:
    settings = dataclasses.replace(settings, tiles=2 if source.kind == "images" else 1)
  header = {
      "schema": alignments.SCHEMA, "version": alignments.VERSION, "complete": False,
      "source": dict(source.metadata(), fingerprint=video.fingerprint(input_path)),
      "settings": dataclasses.asdict(settings),
      "files": {"faces": "faces", "masks": {k: f"masks/{k}" for k in geometry.MASK_TYPES}},
  }
  out = Output(output, header)
  done = out.check_and_load()
  t0 = time.perf_counter()
  if os.path.exists(out.final_path) and not os.path.exists(out.partial):
    doc = alignments.load(out.final_path)
    if doc.get("complete") and len(done) == len(doc["frames"]):
      doc["run"] = {"seconds": 0.0, "frames": 0, "new_faces": 0}
      return doc  # finished before: nothing to redo
  out.start()
  stem = safe_stem(input_path)
  wanted = lambda i: i % settings.every_n == 0 and i not in done  # noqa: E731
  owns_detector = detector is None
  if owns_detector:
    from jaxswap.faces import detect  # pylint: disable=g-import-not-at-top
    detector = detect.FaceDetector(min_confidence=settings.detect_confidence)
  bar = tqdm.tqdm(total=source.reported_frames or None, unit="frame", desc="extract",
                  dynamic_ncols=True, disable=not progress)
  pending: collections.deque = collections.deque()
  frames_seen, new_faces, new_frames = 0, 0, 0
  try:
    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
      # A reader thread decodes ahead (OpenCV releases the GIL).
      for frame in prefetch.background(source.frames(wanted), 8, name="jaxswap-reader"):
        frames_seen = frame.index + 1
        if frame.error == "skipped":
          bar.update(1)
          continue
        record, images = process_frame(detector, frame, settings, stem)
        done[frame.index] = record
        new_frames += 1
        new_faces += sum(1 for f in record["faces"] if f["file"])
        pending.append(pool.submit(out.commit, record, images))
        while len(pending) > 32 or (pending and pending[0].done()):
          pending.popleft().result()
        bar.update(1)
        bar.set_postfix(faces=new_faces, refresh=False)
      while pending:
        pending.popleft().result()
  finally:
    bar.close()
    if owns_detector:
      detector.close()
  frames_seen = max(frames_seen, max(done, default=-1) + 1)
  summary = summarize(done)
  if summary["faces_detected"] == summary["skipped_no_landmarks"]:  # detections the mesh denies
    raise JaxswapError(
        f"no face found in {input_path} ({summary['frames_read']} frames read, "
        f"{summary['skipped_no_landmarks']} detections without landmarks); "
        "try a lower --detect-confidence")
  doc = out.finish(done, frames_seen, summary)
  doc["run"] = {"seconds": time.perf_counter() - t0, "frames": new_frames, "new_faces": new_faces}
  return doc


def safe_stem(path: str) -> str:
  stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
  return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "input"


def format_summary(doc: dict) -> str:
  s = doc["summary"]
  return (f"{s['frames_read']} frames read, {s['faces_written']} faces written "
          f"({s['faces_detected']} detected), {s['frames_no_face']} frames with no face, "
          f"skipped: {s['skipped_small']} small, {s['skipped_blurry']} blurry, "
          f"{s['skipped_no_landmarks']} without landmarks"
          + (f", {s['frames_unreadable']} unreadable images" if s["frames_unreadable"] else "")
          + f", {len(doc.get('tracks', []))} face tracks")


def add_finding_args(p: argparse.ArgumentParser, faces: str) -> None:
  """How faces are found and cropped: flags of jaxswap-extract and jaxswap-prepare alike."""
  p.add_argument("--coverage", type=float, default=0.85,
                 help="fraction of the crop the face oval (forehead to chin) spans")
  p.add_argument("--every-n", type=int, default=1, help="process every n-th video frame")
  p.add_argument("--faces", choices=("all", "largest"), default=faces,
                 help="every face of a frame, or only its largest (the person a video is about)")
  p.add_argument("--detect-confidence", type=float, default=0.5,
                 help="face detection threshold in (0, 1)")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", required=True, help="video file or folder of images")
  p.add_argument("--output", required=True, help="folder for faces, masks, alignments.json")
  p.add_argument("--size", type=int, default=256, help="side of the aligned crop, pixels")
  add_finding_args(p, faces="all")
  p.add_argument("--min-face", type=float, default=0.0,
                 help="skip faces smaller than this (detection box side, frame pixels)")
  p.add_argument("--min-blur", type=float, default=0.0,
                 help="skip faces whose blur score (Laplacian variance) is below this")
  p.add_argument("--tiles", type=int, default=0,
                 help="also search a TILES x TILES grid for small faces (0: 2 for photos, 1 for "
                      "video)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  settings = Settings(size=args.size, coverage=args.coverage, every_n=args.every_n,
                      min_face=args.min_face, min_blur=args.min_blur, faces=args.faces,
                      detect_confidence=args.detect_confidence, tiles=args.tiles)
  try:
    doc = extract(args.input, args.output, settings, progress=not args.quiet)
  except JaxswapError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: finished frames are kept; re-run to resume", file=sys.stderr)
    return 130
  run = doc["run"]
  print(f"{args.output}: {format_summary(doc)}; this run: {run['frames']} frames in "
        f"{run['seconds']:.1f} s ({run['frames'] / max(run['seconds'], 1e-9):.1f} frames/s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
