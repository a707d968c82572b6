"""The evaluator's outputs: a terminal table, JSON, and a contact sheet a person can check."""

from __future__ import annotations

import json

import cv2
import numpy as np

from jaxswap import provenance as media

CROP = 128
TEXT_WIDTH = 300
HEADER = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX

_ROWS = (  # (label, summary key, format)
    ("identity distance to A", "distance_a", "{:.3f}"),
    ("identity distance to B", "distance_b", "{:.3f}"),
    ("head-pose error (deg)", "pose_error_deg", "{:.2f}"),
    ("  the same, bias removed (deg)", "pose_tracking_error_deg", "{:.2f}"),
    ("expression error (inter-ocular)", "expression_error", "{:.4f}"),
    ("  eyes: openness error (aspect)", "eyes_open_error", "{:.3f}"),
    ("  mouth: openness error (i-o)", "mouth_open_error", "{:.3f}"),
    ("sharpness ratio (swap / source)", "sharpness_ratio", "{:.3f}"),
    ("flicker ratio (swap / source)", "flicker_ratio", "{:.3f}"),
)


def _cell(stats: dict | None, fmt: str) -> str:
  if stats is None:
    return "-"
  return f"{fmt.format(stats['mean'])} / {fmt.format(stats['median'])}"


def table(result: dict) -> str:
  """The summary as aligned text: the swap next to the unswapped source (the baseline)."""
  s = result["summary"]
  n = s["frames_evaluated"]
  settings = result["settings"]
  lines = [f"{'':34}{'swap':>22}{'source (unswapped)':>22}",
           f"{'frames evaluated':34}{n:>22}   (of {settings['frames_in_video']}, every "
           f"{settings['every']}; {s['frames_with_source_face']} with a face in the source)",
           f"{'face found':34}{s['swap']['face_found']:>22}{s['source']['face_found']:>22}"]
  frac = [s[c]["recognised_as_a"] for c in ("swap", "source")]
  cells = ["-" if f is None else f"{100 * f:.1f} %" for f in frac]
  lines.append(f"{'recognised as A':34}{cells[0]:>22}{cells[1]:>22}")
  bias = ["-" if s[c].get("pose_bias_yaw_pitch_roll") is None
          else "{:.1f} / {:.1f} / {:.1f}".format(*s[c]["pose_bias_yaw_pitch_roll"])
          for c in ("swap", "source")]
  for label, key, fmt in _ROWS:
    lines.append(f"{label:34}{_cell(s['swap'].get(key), fmt):>22}"
                 f"{_cell(s['source'].get(key), fmt):>22}")
    if key == "pose_error_deg":
      lines.append(f"{'  its bias: yaw / pitch / roll':34}{bias[0]:>22}{bias[1]:>22}")
    if key == "pose_tracking_error_deg":
      follow = [" / ".join(_fmt(v, "{:.2f}") for v in s[c].get("pose_follow_yaw_pitch_roll")
                           or (None,) * 3) for c in ("swap", "source")]
      lines.append(f"{'  follows the head: yaw/pitch/roll':34}{follow[0]:>22}{follow[1]:>22}")
    if key == "mouth_open_error":
      follow = [" / ".join(_fmt(v, "{:.2f}") for v in s[c].get("openness_follow_eyes_mouth")
                           or (None,) * 2) for c in ("swap", "source")]
      lines.append(f"{'  follows eyes / mouth (slope)':34}{follow[0]:>22}{follow[1]:>22}")
  refs = result["references"]
  cover = s.get("source_outside_a_poses")
  if cover is not None:
    span = cover["a_span"]
    lines.append(f"source faces posed outside A's footage: {100 * cover['fraction']:.0f} % of "
                 f"{cover['frames']} (A's yaw {span['yaw'][0]:.0f}..{span['yaw'][1]:.0f}, pitch "
                 f"{span['pitch'][0]:.0f}..{span['pitch'][1]:.0f} deg, with "
                 f"{span['margin_deg']:.0f} deg to spare)")
  lines += ["(cells: mean / median; recognised as A = closer to A than to B and distance < "
            f"{settings['same_person_threshold']})",
            f"references: A {refs['a']['faces']} faces in {refs['a']['looked_at']} frames"
            f"{_others(refs['a'])} (spread {refs['a']['spread']:.3f}); B from "
            f"{refs['b']['from']}: {refs['b']['faces']} faces{_others(refs['b'])} "
            f"(spread {refs['b']['spread']:.3f})",
            f"{result['seconds_per_frame']:.2f} s per evaluated frame "
            f"({result['cpu_seconds_per_frame']:.2f} s of CPU time)"]
  return "\n".join(lines)


def _others(ref: dict) -> str:
  n = ref.get("others", 0)
  return f", {n} face{'s' if n > 1 else ''} of someone else left out" if n else ""


def write_json(path: str, result: dict) -> None:
  """Per-frame records + summary, atomically (the sheet's pixels are left out)."""
  public = {k: v for k, v in result.items() if not k.startswith("_")}
  media.write_bytes(path, (json.dumps(public, indent=1) + "\n").encode())


def _text(image: np.ndarray, lines: list[str], x: int, y: int, scale: float = 0.42) -> None:
  for k, line in enumerate(lines):
    cv2.putText(image, line, (x, y + 17 * k), FONT, scale, (235, 235, 235), 1, cv2.LINE_AA)


def _fmt(value, fmt: str) -> str:
  return "-" if value is None else fmt.format(value)


def _row_text(frame: dict) -> list[str]:
  sw, src = frame["swap"], frame["source"]
  verdict = "yes" if sw["recognised_as_a"] else "no"
  return [f"frame {frame['frame']}  face in swap: {'yes' if frame['swap_face_found'] else 'no'}",
          f"swap   dA {sw['distance_a']:.3f}  dB {sw['distance_b']:.3f}  A? {verdict}",
          f"source dA {src['distance_a']:.3f}  dB {src['distance_b']:.3f}",
          f"pose {sw['pose_error_deg']:.1f} deg  expr {sw['expression_error']:.3f}",
          f"sharp {_fmt(sw['sharpness_ratio'], '{:.2f}')}  "
          f"flicker {_fmt(sw['flicker_ratio'], '{:.2f}')}"]


def contact_sheet(result: dict) -> np.ndarray:
  """Rows of source | swap | the A reference closest in pose, with the row's numbers."""
  sheet = result["_sheet"]
  by_frame = {f["frame"]: f for f in result["frames"]}
  rows = [r for r in sheet["rows"] if by_frame.get(r["frame"], {}).get("swap")]
  a_poses = np.array(sheet["a_poses"])[:, :2]
  out = np.full((HEADER + max(len(rows), 1) * CROP, 3 * CROP + TEXT_WIDTH, 3), 24, np.uint8)
  for c, label in enumerate(("source", "swap", "A (nearest pose)", "swap vs source")):
    _text(out, [label], c * CROP + 4, 15)
  if not rows:
    _text(out, ["no frame with a face to show"], 4, HEADER + 20)
  for k, row in enumerate(rows):
    y = HEADER + k * CROP
    nearest = int(np.argmin(np.abs(a_poses - np.array(row["pose"][:2])).sum(1)))
    for c, img in enumerate((row["source"], row["swap"], sheet["a_crops"][nearest])):
      out[y:y + CROP, c * CROP:(c + 1) * CROP] = img
    _text(out, _row_text(by_frame[row["frame"]]), 3 * CROP + 6, y + 20)
  return out


def write_sheet(path: str, result: dict) -> None:
  """The contact sheet as PNG, atomically, tagged as synthetic media like every jaxswap image."""
  record = media.provenance("evaluation_sheet", swapped=result["swapped"],
                            source=result["source"], identity=result["identity"])
  media.write_png(path, contact_sheet(result), record)
