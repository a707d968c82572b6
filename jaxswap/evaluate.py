"""Judge a swapped video against its source with an independent face recogniser (dlib).

  python -m jaxswap.evaluate --swapped OUT.mp4 --source B.mp4 --identity A.mp4|A_photos/ \
      [--identity-b B_ref] [--every N] [--max-frames N] [--json F] [--sheet F.png]

Per evaluated frame t (every Nth): identity distance of the swap's face to A's and to B's mean
descriptor, recognised as A (closer to A than to B and nearer than 0.6), head-pose and expression
error against the source frame, sharpness and flicker (t -> t+1) of the face region, swap / source
(see jaxswap.evaluate_metrics). The source itself is scored the same way as the baseline.

Which face: the largest face the detector finds in the source frame; in the swap, the detection
overlapping it, else the source's box (the swap sits where the source face was), so frames the
detector misses in a poor swap are still measured, and counted in "face found" as misses.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np
import tqdm

from jaxswap import evaluate_metrics as metrics
from jaxswap import evaluate_report
from jaxswap import recognise
from jaxswap import video
from jaxswap.errors import JaxswapError
from jaxswap.faces import pose

REFERENCE_FACES = 30
SHEET_CROP = evaluate_report.CROP
MIN_OVERLAP = 0.3  # IoU for a swap detection to be "the same face" as the source's


def _read(path: str, flag: str, wanted: Callable[[int], bool] | None = None
          ) -> tuple[int, Iterator[tuple[int, np.ndarray | None]]]:
  """(frame count, iterator of (index, RGB uint8 or None when not wanted)), via jaxswap.video.

  Unwanted video frames are grabbed, not decoded to RGB. A container that does not announce its
  length is counted with a decoding pass.
  """
  wanted = wanted or (lambda i: True)
  if not os.path.exists(path):
    raise JaxswapError(f"{flag} {path} does not exist")
  try:
    source = video.open_source(path)
  except JaxswapError as e:
    raise JaxswapError(f"{flag}: {e}") from None
  count = source.reported_frames
  if count <= 0:
    count = sum(1 for _ in source.frames(lambda i: False))

  def frames():
    for frame in source.frames(wanted):
      if frame.error and frame.error != "skipped":
        raise JaxswapError(f"{flag}: {frame.error}")
      if frame.index >= count:
        return
      yield frame.index, frame.rgb
  return count, frames()


def frame_count(path: str, flag: str) -> int:
  """Frames actually readable (containers can announce a wrong count); costs a decoding pass."""
  return sum(1 for _ in _read(path, flag, lambda i: False)[1])


def crop(rgb: np.ndarray, box: recognise.Box, size: int, zoom: float = 1.8) -> np.ndarray:
  """A size x size square around a face box (zoom x its side), black beyond the frame."""
  side = zoom * max(box[2] - box[0], box[3] - box[1])
  s = size / side
  cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
  m = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
  return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA)


def reference(path: str, flag: str, num_jitters: int) -> dict:
  """Mean descriptor of up to REFERENCE_FACES faces sampled evenly from a video or folder."""
  count, _ = _read(path, flag)
  picks = set(np.unique(np.linspace(0, count - 1, min(count, REFERENCE_FACES)).round()).tolist())
  faces = []
  for i, rgb in _read(path, flag, picks.__contains__)[1]:
    if rgb is None:
      continue
    face = recognise.analyse(rgb, num_jitters=num_jitters)
    if face is not None:
      rot = pose.head_rotation(face.landmarks, *rgb.shape[:2])
      faces.append((i, face, crop(rgb, face.box, SHEET_CROP), pose.yaw_pitch_roll(rot)))
  if not faces:
    raise JaxswapError(f"no face found in {flag} {path} (looked at {len(picks)} frames); give a "
                       "video or photos in which the person's face is visible and frontal")
  keep, ref = _subject(np.stack([f[1].descriptor for f in faces]))
  faces = [f for f, k in zip(faces, keep) if k]
  return {**ref, "looked_at": len(picks), "crops": [f[2] for f in faces],
          "poses": [f[3] for f in faces]}


def _subject(descriptors: np.ndarray) -> tuple[np.ndarray, dict]:
  """A reference from sampled faces' descriptors: (mask of the subject's faces, {descriptor: their
  mean, faces, others (faces of anyone else, left out), spread})."""
  keep = recognise.one_person(descriptors)
  kept = descriptors[keep]
  mean = kept.mean(0)
  return keep, {"descriptor": mean, "faces": len(kept), "others": int((~keep).sum()),
                "spread": float(np.linalg.norm(kept - mean, axis=1).mean())}


def _face_record(face: recognise.Face, src: recognise.Face, rgb: np.ndarray, nxt: np.ndarray | None,
                 src_rgb: np.ndarray, src_next: np.ndarray | None, region) -> dict:
  """One column (swap or source) of a frame, measured against the source frame."""
  h, w = rgb.shape[:2]
  rot, src_rot = (pose.head_rotation(f.landmarks, h, w) for f in (face, src))
  sharp, src_sharp = metrics.sharpness(rgb, region), metrics.sharpness(src_rgb, region)
  flick = metrics.change(rgb, nxt, region) if nxt is not None else None
  src_flick = metrics.change(src_rgb, src_next, region) if src_next is not None else None
  (eyes, mouth), (src_eyes, src_mouth) = (metrics.openness(f.landmarks) for f in (face, src))
  return {"box": list(face.box), "_descriptor": face.descriptor,
          "yaw_pitch_roll": [round(a, 2) for a in pose.yaw_pitch_roll(rot)],
          "pose_error_deg": metrics.rotation_angle(rot, src_rot),
          "relative_rotation": np.round(rot @ src_rot.T, 6).tolist(),
          "expression_error": metrics.expression_error(face.landmarks, src.landmarks),
          "eyes_open": eyes, "mouth_open": mouth, "eyes_open_error": abs(eyes - src_eyes),
          "mouth_open_error": abs(mouth - src_mouth),
          "sharpness": sharp, "sharpness_ratio": metrics.ratio(sharp, src_sharp),
          "change": flick, "flicker_ratio": metrics.ratio(flick, src_flick)}


def sample(count: int, every: int, max_frames: int | None) -> list[int]:
  """Every Nth frame; at most max_frames of them, spread evenly over the video."""
  picks = list(range(0, count, every))
  if max_frames is not None and len(picks) > max_frames:
    picks = [picks[int(round(j))] for j in np.linspace(0, len(picks) - 1, max_frames)]
  return picks


class _Pending(NamedTuple):
  """An evaluated frame whose measures wait for frame t+1 (flicker)."""
  frame: int
  source: recognise.Face | None
  swap: recognise.Face | None
  swap_found: bool
  swap_rgb: np.ndarray
  source_rgb: np.ndarray


def _start(i: int, swap_rgb: np.ndarray, src_rgb: np.ndarray, num_jitters: int) -> _Pending:
  src = recognise.analyse(src_rgb, num_jitters=num_jitters)
  found = [b for b, _ in recognise.detect(swap_rgb)
           if src is None or recognise.iou(b, src.box) >= MIN_OVERLAP]
  swap = None
  if src is not None:
    swap = recognise.analyse(swap_rgb, found[0] if found else src.box, num_jitters=num_jitters)
    swap = dataclasses.replace(swap, detected=bool(found))
  return _Pending(i, src, swap, bool(found), swap_rgb, src_rgb)


def _finish(p: _Pending, swap_next: np.ndarray | None, src_next: np.ndarray | None) -> dict:
  record = {"frame": p.frame, "swap_face_found": p.swap_found,
            "source_face_found": p.source is not None, "swap": None, "source": None}
  if p.source is not None:
    src, src_rgb = p.source, p.source_rgb
    region = metrics.face_region(src.landmarks, *src_rgb.shape[:2])
    record["swap"] = _face_record(p.swap, src, p.swap_rgb, swap_next, src_rgb, src_next, region)
    record["source"] = _face_record(src, src, src_rgb, src_next, src_rgb, src_next, region)
  return record


def _b_reference(frames: list[dict], source: str) -> dict:
  """B's reference when none is given: the source's own faces among the evaluated frames."""
  found = [f["source"]["_descriptor"] for f in frames if f["source"]]
  if not found:
    raise JaxswapError(f"no face found in the evaluated frames of --source {source}; give "
                       "--identity-b, or a source video in which the face is visible")
  keep = np.unique(np.linspace(0, len(found) - 1, min(len(found), REFERENCE_FACES)).round())
  _, ref = _subject(np.stack([found[int(k)] for k in keep]))
  return {**ref, "looked_at": len(frames)}


def _score_identity(frames: list[dict], ref_a: dict, ref_b: dict) -> None:
  for f in frames:
    for col in ("swap", "source"):
      if f[col]:
        d = f[col].pop("_descriptor")
        da = recognise.distance(d, ref_a["descriptor"])
        db = recognise.distance(d, ref_b["descriptor"])
        f[col].update(distance_a=da, distance_b=db,
                      recognised_as_a=bool(da < db and da < recognise.SAME_PERSON))


def evaluate(swapped: str, source: str, identity: str, identity_b: str | None = None, *,
             every: int = 1, max_frames: int | None = None, num_jitters: int = 1,
             sheet_rows: int = 0, progress: bool = True) -> dict:
  """Per-frame records and the summary (see the module docstring). With `sheet_rows` > 0 the
  result also holds, under "_sheet", crops of that many evenly spaced frames for the contact
  sheet (not JSON: `write_json` leaves it out)."""
  if every < 1 or (max_frames is not None and max_frames < 1):
    raise JaxswapError("--every and --max-frames must be at least 1")
  recognise.load()  # a missing extra fails before any reading
  n_swap, _ = _read(swapped, "--swapped")
  n_src, _ = _read(source, "--source")
  if n_swap != n_src:  # announced counts can be off: count what is there before refusing
    n_swap, n_src = frame_count(swapped, "--swapped"), frame_count(source, "--source")
  if n_swap != n_src:
    raise JaxswapError(f"--swapped {swapped} has {n_swap} frames but --source {source} has "
                       f"{n_src}; evaluate a swap against the exact video it was made from")
  ref_a = reference(identity, "--identity", num_jitters)
  ref_b = reference(identity_b, "--identity-b", num_jitters) if identity_b else None
  picks = sample(n_src, every, max_frames)
  pick_set = set(picks)
  need = pick_set | {t + 1 for t in picks if t + 1 < n_src}
  last = max(need)
  slot = {t: j * sheet_rows // len(picks) for j, t in enumerate(picks)}
  rows: dict[int, dict] = {}
  frames, pending = [], None
  start, cpu_start = time.perf_counter(), time.process_time()
  pairs = itertools.zip_longest(_read(swapped, "--swapped", need.__contains__)[1],
                                _read(source, "--source", need.__contains__)[1])
  with tqdm.tqdm(total=len(picks), desc="evaluate", unit="frame", disable=not progress) as bar:
    for swap_item, src_item in pairs:
      if swap_item is None or src_item is None:
        short, at = (swapped, "--swapped") if swap_item is None else (source, "--source")
        raise JaxswapError(f"{at} {short} ends before frame {(swap_item or src_item)[0]}, "
                           "which the other video has (truncated, or not the same frames)")
      (i, swap_rgb), (_, src_rgb) = swap_item, src_item
      if i > last:
        break
      if swap_rgb is None:
        continue
      if swap_rgb.shape != src_rgb.shape:
        raise JaxswapError(f"--swapped frames are {swap_rgb.shape[1]}x{swap_rgb.shape[0]} but "
                           f"--source frames are {src_rgb.shape[1]}x{src_rgb.shape[0]}")
      if pending is not None:  # frame t+1 of the frame evaluated before
        frames.append(_finish(pending, swap_rgb, src_rgb) if pending.frame == i - 1 else
                      _finish(pending, None, None))
        pending = None
      if i in pick_set:
        pending = _start(i, swap_rgb, src_rgb, num_jitters)
        if sheet_rows and slot[i] not in rows and pending.source is not None:
          rows[slot[i]] = _sheet_row(pending)
        bar.update(1)
  if pending is not None:
    frames.append(_finish(pending, None, None))
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  ref_b = ref_b or _b_reference(frames, source)
  _score_identity(frames, ref_a, ref_b)
  result = {
      "swapped": os.path.abspath(swapped), "source": os.path.abspath(source),
      "identity": os.path.abspath(identity),
      "identity_b": os.path.abspath(identity_b) if identity_b else None,
      "settings": {"every": every, "max_frames": max_frames, "num_jitters": num_jitters,
                   "same_person_threshold": recognise.SAME_PERSON, "frames_in_video": n_src},
      "references": {name: {k: r[k] for k in ("faces", "looked_at", "others", "spread")}
                     for name, r in (("a", ref_a), ("b", ref_b))},
      "seconds_per_frame": seconds / max(len(frames), 1),
      "cpu_seconds_per_frame": cpu / max(len(frames), 1),
      "summary": summarise(frames),
      "frames": frames,
  }
  result["summary"]["source_outside_a_poses"] = pose_coverage(frames, ref_a["poses"])
  result["references"]["b"]["from"] = "--identity-b" if identity_b else "--source"
  if sheet_rows:
    result["_sheet"] = {"rows": [rows[k] for k in sorted(rows)], "a_crops": ref_a["crops"],
                        "a_poses": ref_a["poses"]}
  return result


def _sheet_row(p: _Pending) -> dict:
  """Crops of the source's face region in both frames (the sheet's first two columns)."""
  h, w = p.source_rgb.shape[:2]
  return {"frame": p.frame, "source": crop(p.source_rgb, p.source.box, SHEET_CROP),
          "swap": crop(p.swap_rgb, p.source.box, SHEET_CROP),
          "pose": pose.yaw_pitch_roll(pose.head_rotation(p.source.landmarks, h, w))}


def _pose_bias(relative: list) -> dict:
  """The clip's mean relative rotation (bias) and each frame's pose error once it is removed."""
  rots = [np.asarray(r, np.float64) for r in relative if r is not None]
  rots = [r for r in rots if np.all(np.isfinite(r))]
  if not rots:
    return {"pose_bias_deg": None, "pose_bias_yaw_pitch_roll": None,
            "pose_tracking_error_deg": None}
  mean = metrics.mean_rotation(rots)
  return {"pose_bias_deg": metrics.rotation_angle(mean, np.eye(3)),
          "pose_bias_yaw_pitch_roll": [round(a, 2) for a in pose.yaw_pitch_roll(mean)],
          "pose_tracking_error_deg": _stats([metrics.rotation_angle(r, mean) for r in rots])}


def pose_coverage(frames: list[dict], a_poses: list) -> dict | None:
  """How many of the source's faces are posed outside the yaw/pitch span of A's reference faces.

  A's decoder can only draw the poses A's footage shows; where B turns further, the swap holds
  the nearest pose it knows. The span is of the (up to REFERENCE_FACES) faces sampled from
  --identity, widened by 5 degrees, so it is a rough guide, not a census of A's footage.
  """
  span = pose.pose_range(a_poses)
  poses = [f["source"]["yaw_pitch_roll"] for f in frames
           if f["source"] and "yaw_pitch_roll" in f["source"]]
  if span is None or not poses:
    return None
  return {"fraction": pose.outside_fraction(poses, span), "frames": len(poses), "a_span": span}


def _stats(values: list) -> dict | None:
  vals = [v for v in values if v is not None]
  if not vals:
    return None
  return {"mean": float(np.mean(vals)), "median": float(np.median(vals)), "frames": len(vals)}


def summarise(frames: list[dict]) -> dict:
  """Per column: faces found, fraction recognised as A, and mean/median of each measure.

  Fractions count every evaluated frame with a face in the source. The flicker "mean" is the
  ratio of the mean changes (one still frame cannot blow it up); its median is of frame ratios.
  """
  scored = [f for f in frames if f["source"]]
  out = {"frames_evaluated": len(frames), "frames_with_source_face": len(scored)}
  for col in ("swap", "source"):
    recs = [f[col] for f in scored]
    s = {"face_found": sum(f[f"{col}_face_found"] for f in frames),
         "recognised_as_a": (float(np.mean([r["recognised_as_a"] for r in recs]))
                             if recs else None)}
    for key in ("distance_a", "distance_b", "pose_error_deg", "expression_error",
                "eyes_open_error", "mouth_open_error", "sharpness_ratio", "flicker_ratio"):
      s[key] = _stats([r.get(key) for r in recs])
    s.update(_pose_bias([r.get("relative_rotation") for r in recs]))
    posed = [f for f in scored if "yaw_pitch_roll" in f["source"] and "yaw_pitch_roll" in f[col]]
    s["pose_follow_yaw_pitch_roll"] = metrics.follow_slopes(
        [f["source"]["yaw_pitch_roll"] for f in posed], [f[col]["yaw_pitch_roll"] for f in posed])
    opened = [f for f in scored if "eyes_open" in f["source"] and "eyes_open" in f[col]]
    s["openness_follow_eyes_mouth"] = metrics.follow_slopes(
        [[f["source"]["eyes_open"], f["source"]["mouth_open"]] for f in opened],
        [[f[col]["eyes_open"], f[col]["mouth_open"]] for f in opened],
        min_spread=metrics.OPENNESS_MIN_SPREAD) if opened else [None, None]
    both = [f for f in scored if f["swap"]["change"] is not None and f["source"]["change"]]
    if s["flicker_ratio"] is not None and both:
      s["flicker_ratio"]["mean"] = float(np.mean([f[col]["change"] for f in both]) /
                                         np.mean([f["source"]["change"] for f in both]))
    out[col] = s
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="jaxswap-evaluate", description=__doc__.split("\n")[0],
      epilog="Needs the optional extra: pip install \"jaxswap[eval]\"")
  parser.add_argument("--swapped", required=True, help="the swapped video (or PNG frame folder)")
  parser.add_argument("--source", required=True,
                      help="the video the swap was made from (same frames)")
  parser.add_argument("--identity", required=True,
                      help="video or photo folder of A, the identity the swap should show")
  parser.add_argument("--identity-b", help="video or photo folder of B (default: --source)")
  parser.add_argument("--every", type=int, default=1, help="evaluate every Nth frame")
  parser.add_argument("--max-frames", type=int,
                      help="evaluate at most N frames, spread evenly over the video")
  parser.add_argument("--jitters", type=int, default=1,
                      help="dlib descriptor jitters (more: steadier and slower)")
  parser.add_argument("--json", help="write per-frame records and the summary here")
  parser.add_argument("--sheet", help="write a PNG contact sheet: source | swap | A reference")
  parser.add_argument("--sheet-rows", type=int, default=6, help="frames on the contact sheet")
  args = parser.parse_args(argv)
  try:
    for flag, path in (("--json", args.json), ("--sheet", args.sheet)):
      if path is not None and os.path.isdir(path):
        raise JaxswapError(f"{flag} {path} is a folder; give a file name")
    if args.sheet and args.sheet_rows < 1:
      raise JaxswapError("--sheet-rows must be at least 1")
    result = evaluate(args.swapped, args.source, args.identity, args.identity_b,
                      every=args.every, max_frames=args.max_frames, num_jitters=args.jitters,
                      sheet_rows=args.sheet_rows if args.sheet else 0, progress=True)
    print(evaluate_report.table(result))
    if args.json:
      evaluate_report.write_json(args.json, result)
      print(f"wrote {args.json}")
    if args.sheet:
      evaluate_report.write_sheet(args.sheet, result)
      print(f"wrote {args.sheet}")
  except JaxswapError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
