"""Face tracks: linking across frames, --track, --list-tracks, and sampled alignments filled in."""

import cv2
import numpy as np
import pytest

from jaxswap import convert, convert_faces, provenance
from jaxswap.data import synthetic
from jaxswap.faces import alignments, track
from jaxswap.faces import geometry as g
from tests import test_convert as tc

# ----------------------------------------------------------------------------------------------
# Linking and filling in, closed-form cases
# ----------------------------------------------------------------------------------------------


def box(cx, cy, size):
  return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def test_crossing_faces_keep_their_tracks():
  """Two faces passing each other (boxes overlapping in the middle) are never swapped."""
  tracker = track.Tracker()
  for i in range(12):
    a, b = box(20 + 10 * i, 50, 40), box(130 - 10 * i, 56, 40)
    ids = tracker.update(i, [a, b] if i % 2 else [b, a])  # list order flips every frame
    id_a, id_b = ids if i % 2 else ids[::-1]
    assert (id_a, id_b) == (1, 0), i  # b came first in frame 0


def test_short_gaps_are_bridged_long_ones_start_a_new_track():
  tracker = track.Tracker(max_gap=3)
  seen = [tracker.update(f, [box(10 + 2 * f, 10, 20)]) for f in (0, 1, 4, 9)]
  assert seen == [[0], [0], [0], [1]]


def test_tracks_are_numbered_by_screen_time():
  frames = [{"frame": f, "faces": ([{"bbox": box(200, 50, 30)}] if f < 3 else [])
             + [{"bbox": box(50, 50, 30)}]} for f in range(8)]
  summary = track.link_frames(frames)
  assert [(t["track"], t["frames"], t["first"], t["last"]) for t in summary] == \
      [(0, 8, 0, 7), (1, 3, 0, 2)]
  assert frames[0]["faces"][0]["track"] == 1 and frames[0]["faces"][1]["track"] == 0


def test_interpolation_fills_unsampled_frames_only():
  m = lambda x: np.array([[1.0, 0, x], [0, 1.0, 0]])  # noqa: E731
  lm = lambda x: np.full((3, 2), float(x))  # noqa: E731
  seen = {0: (m(0), lm(0)), 3: (m(3), lm(3)), 6: (m(6), lm(6)), 20: (m(20), lm(20))}
  sampled = {0, 3, 6, 9, 12, 15, 18, 20}  # an --every-n 3 extraction; missing at 9..18
  filled, skipped = track.interpolate(seen, sampled, max_gap=4)
  assert sorted(filled) == [0, 1, 2, 3, 4, 5, 6, 20]
  np.testing.assert_allclose(filled[4][0], m(4))
  np.testing.assert_allclose(filled[5][1], lm(5))
  assert skipped == 0  # 6 -> 20: seen missing on sampled frames, not a gap to fill
  filled, skipped = track.interpolate({0: (m(0), None), 10: (m(10), None)}, {0, 10}, max_gap=4)
  assert sorted(filled) == [0, 10] and skipped == 9


def test_smoothing_follows_tracks_not_nearest_faces():
  """Where two faces meet, each is averaged with itself only."""
  def job(x, t):
    m = np.array([[1.0, 0, 32 - x], [0, 1.0, 0]])  # a 64 px crop centred on (x, 32)
    return convert_faces.Job(m, None, track=t)
  window = [[job(40, 0), job(60, 1)], [job(50, 0), job(50.5, 1)], [job(60, 0), job(41, 1)]]
  smoothed = convert_faces.smooth_jobs(window, window[1], 64)
  centres = [32 - j.matrix[0, 2] for j in smoothed]
  assert centres == pytest.approx([50.0, (60 + 50.5 + 41) / 3])


def test_version_1_alignments_gain_tracks(tmp_path):
  doc = tc.alignments_doc("x.mp4", {i: [tc.face_matrix(i)] for i in range(tc.N)})
  doc["version"] = 1
  path = str(tmp_path / "alignments.json")
  provenance.write_bytes(path, alignments.dumps(doc))
  loaded = alignments.load(path)
  assert loaded["version"] == alignments.VERSION
  assert [t["frames"] for t in loaded["tracks"]] == [tc.N]
  assert all(f["faces"][0]["track"] == 0 for f in loaded["frames"])


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------

W, H = 320, 160


def crossing_matrix(i: int, person: int) -> np.ndarray:
  """frame -> 64 px crop: person 0 goes right and shrinks, person 1 goes left and grows."""
  cx, cy, side = ((50 + 22 * i, 70, 80 - 2 * i) if person == 0 else (270 - 22 * i, 90, 62 + 2 * i))
  m = cv2.getRotationMatrix2D((float(cx), float(cy)), 0.0, tc.SIZE / side)
  m[:, 2] += np.array([tc.SIZE / 2, tc.SIZE / 2]) - (cx, cy)
  return m


@pytest.fixture
def crossing(tmp_path):
  """Two people crossing; person 1 (drawn in front) enters a frame later, so person 0 is track 0.

  Per frame the alignments list faces largest first, as extraction does: person 0 first in the
  early frames, person 1 first in the late ones, so a face index would jump between them.
  """
  params = synthetic.trajectory_params(np.random.default_rng(1), tc.N)
  faces = synthetic.render("b", params, size=tc.SIZE)["image"]
  yy, xx = np.mgrid[0:H, 0:W]
  bg = np.stack([40 + xx // 2, 60 + yy, 120 + 0 * xx], -1).astype(np.uint8)
  frames, placed = [], {}
  for i in range(tc.N):
    frame = bg.copy()
    for person in ((0,) if i == 0 else (0, 1)):
      m = crossing_matrix(i, person)
      cv2.warpAffine(faces[(i + 3 * person) % tc.N], m, (W, H), dst=frame,
                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                     borderMode=cv2.BORDER_TRANSPARENT)
      placed.setdefault(i, []).append(m)
    frames.append(frame)
  path = str(tmp_path / "crossing.mp4")
  tc.write_input(path, frames)
  by_size = {i: sorted(ms, key=lambda m: -g.matrix_scale(g.invert_affine(m)))
             for i, ms in placed.items()}
  doc = tc.alignments_doc(path, by_size)
  doc["source"].update(width=W, height=H)
  doc_path = str(tmp_path / "alignments.json")
  provenance.write_bytes(doc_path, alignments.dumps(doc))
  assert by_size[0][0] is placed[0][0] and by_size[tc.N - 1][0] is placed[tc.N - 1][1]
  return path, doc_path, placed


@tc.needs_ffmpeg
def test_track_swaps_the_same_person_in_every_frame(crossing, tiny_run, tmp_path, capsys):
  path, doc_path, placed = crossing
  assert convert.main(["--alignments", doc_path, "--list-tracks"]) == 0
  listing = capsys.readouterr().out.splitlines()
  assert listing[1].split()[:4] == ["0", str(tc.N), "0", str(tc.N - 1)]
  assert listing[2].split()[:4] == ["1", str(tc.N - 1), "1", str(tc.N - 1)]
  png = tmp_path / "png"
  convert.convert(path, tiny_run, None, convert.Options(to="a", batch=8, track=0),
                  alignments_path=doc_path, png_dir=str(png), progress=False)
  for i, inp in enumerate(tc.read_frames(path)):
    out = cv2.cvtColor(cv2.imread(str(png / f"frame_{i:06d}.png")), cv2.COLOR_BGR2RGB)
    changed = np.any(out != inp, -1)
    mine = tc.hull_mask(placed[i][0], 8, shape=(H, W))
    assert not (changed & ~mine).any(), i  # nothing of person 1 outside person 0's face
    visible = tc.hull_mask(placed[i][0], 0, shape=(H, W)) & (
        ~tc.hull_mask(placed[i][1], 8, shape=(H, W)) if i else True)
    assert changed[visible].mean() > 0.5, i  # and person 0's face did change


@tc.needs_ffmpeg
def test_sampled_alignments_swap_every_frame_like_full_ones(tiny_run, tmp_path, monkeypatch):
  monkeypatch.setattr(tc, "NO_FACE", ())
  path, full_path, _ = tc.make_video(str(tmp_path))
  full = alignments.load(full_path)
  sampled = dict(full, settings=dict(full["settings"], every_n=3),
                 frames=[f for f in full["frames"] if f["frame"] % 3 == 0])
  sampled_path = str(tmp_path / "every3.json")
  provenance.write_bytes(sampled_path, alignments.dumps(sampled))
  outs = {}
  for name, doc, gap in (("full", full_path, None), ("every3", sampled_path, None),
                         ("gap2", sampled_path, 2)):
    outs[name] = convert.convert(path, tiny_run, None, convert.Options(batch=8, max_gap=gap),
                                 alignments_path=doc, png_dir=str(tmp_path / name),
                                 progress=False)
  assert outs["full"]["faces_swapped"] == outs["every3"]["faces_swapped"] == tc.N
  assert outs["every3"]["faces_interpolated"] == 6 and outs["every3"]["faces_in_long_gaps"] == 0
  # A gap over --max-gap passes through, counted.
  assert outs["gap2"]["faces_swapped"] == 4 and outs["gap2"]["faces_in_long_gaps"] == 6
  inputs = tc.read_frames(path)
  for i in range(tc.N):
    a, b = (cv2.imread(str(tmp_path / k / f"frame_{i:06d}.png")).astype(int)
            for k in ("full", "every3"))
    changed = np.any(a != cv2.cvtColor(inputs[i], cv2.COLOR_RGB2BGR), -1)
    assert changed.sum() > 500, i  # swapped in the full run ...
    assert np.abs(a - b)[changed].mean() < 12, i  # ... and nearly the same from every 3rd frame
