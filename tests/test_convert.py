"""jaxswap.convert (jaxswap-convert) end to end on synthetic video with a tiny run.

Frames, pixels, audio, errors.

The run is a `tiny` network trained for two steps on the synthetic identities: conversion's
behaviour does not depend on how well the model was trained.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from jaxswap import convert, extract, provenance
from jaxswap import video as video_io
from jaxswap.data import synthetic
from jaxswap.errors import JaxswapError
from jaxswap.faces import alignments, geometry as g
from tests.conftest import ROOT

W, H, N, FPS, SIZE = 161, 121, 10, 10.0, 64  # odd frame size on purpose
NO_FACE = (3, 7)
needs_ffmpeg = pytest.mark.skipif(video_io.ffmpeg_exe() is None,
                                  reason="imageio-ffmpeg's ffmpeg binary is absent")


def fake_mesh(size: int) -> np.ndarray:
  """478 aligned-crop points whose face oval is an ellipse and whose brows sit at 30 %."""
  pts = np.full((g.NUM_LANDMARKS, 2), size / 2.0)
  for k, idx in enumerate(g.FACE_OVAL):
    t = -np.pi / 2 + 2 * np.pi * k / len(g.FACE_OVAL)
    pts[idx] = (size / 2 + 0.33 * size * np.cos(t), 0.53 * size + 0.4 * size * np.sin(t))
  for idx in g.RIGHT_BROW + g.LEFT_BROW:
    pts[idx, 1] = 0.3 * size
  return pts


def face_matrix(i: int, cx: float = 80.0) -> np.ndarray:
  """frame -> 64 px crop of frame i: the face turns and drifts a little."""
  m = cv2.getRotationMatrix2D((cx + i, 60.0), 4.0 * i - 10, SIZE / 84.0)
  m[:, 2] += np.array([SIZE / 2, SIZE / 2]) - (cx + i, 60.0)
  return m


def write_input(path: str, frames: list, audio: bool = False) -> None:
  exe = video_io.ffmpeg_exe()
  h, w = frames[0].shape[:2]
  cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
         "-r", str(FPS), "-i", "-"]
  if audio:
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={len(frames) / FPS}",
            "-c:a", "aac", "-shortest"]
  cmd += ["-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv444p", path]
  subprocess.run(cmd, input=np.stack(frames).tobytes(), check=True)


def read_frames(path: str) -> list:
  cap, out = cv2.VideoCapture(path), []
  while True:
    ok, bgr = cap.read()
    if not ok:
      return out
    out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def alignments_doc(path: str, faces: dict) -> dict:
  """An alignments.json for `faces` {frame: [matrix]} with the fake mesh as landmarks."""
  frames = []
  for i in range(N):
    recs = []
    for m in faces.get(i, []):
      lm = g.transform_points(g.invert_affine(m), fake_mesh(SIZE))
      recs.append({"bbox": [*lm.min(0), *lm.max(0)], "score": 1.0, "landmarks": lm.tolist(),
                   "matrix": m.tolist(), "blur": 100.0, "file": None, "skipped": None})
    frames.append({"frame": i, "faces": recs})
  return {"schema": alignments.SCHEMA, "version": alignments.VERSION, "complete": True,
          "source": {"type": "video", "path": path, "fingerprint": None, "fps": FPS,
                     "width": W, "height": H, "frame_count": N},
          "settings": {"size": SIZE, "coverage": 0.85, "template": extract.TEMPLATE_ID},
          "files": {"faces": "faces", "masks": {}}, "frames": frames}


def make_video(folder, centres=(80.0,), audio=False):
  """A W x H video of identity b pasted at known matrices, and its alignments.json."""
  params = synthetic.trajectory_params(np.random.default_rng(0), N)
  faces = synthetic.render("b", params, size=SIZE)["image"]
  yy, xx = np.mgrid[0:H, 0:W]
  bg = np.stack([40 + xx, 60 + yy, 120 + 0 * xx], -1).astype(np.uint8)
  frames, placed = [], {}
  for i in range(N):
    frame = bg.copy()
    if i not in NO_FACE:
      for cx in centres:
        m = face_matrix(i, cx)
        cv2.warpAffine(faces[i], m, (W, H), dst=frame,
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_TRANSPARENT)
        placed.setdefault(i, []).append(m)
    frames.append(frame)
  video = os.path.join(folder, "b.mp4")
  write_input(video, frames, audio)
  doc_path = os.path.join(folder, "alignments.json")
  provenance.write_bytes(doc_path, alignments.dumps(alignments_doc(video, placed)))
  return video, doc_path, placed


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  if video_io.ffmpeg_exe() is None:
    pytest.skip("imageio-ffmpeg's ffmpeg binary is absent")
  return make_video(str(tmp_path_factory.mktemp("video")))


def hull_mask(m: np.ndarray, margin: int, kind: str = "brows", shape=(H, W)) -> np.ndarray:
  """The `kind` hull (convert's default mask's unless told) of the fake face placed with `m` in
  a frame of `shape`, grown by `margin` frame pixels."""
  lm = g.transform_points(g.invert_affine(m), fake_mesh(SIZE))
  hull = g.fill_convex(g.mask_hull(lm, kind), *shape).astype(np.uint8)
  return cv2.dilate(hull, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0


def changed_outside(out, inp, m, margin, kind="brows") -> np.ndarray:
  """Pixels that changed outside `hull_mask`."""
  return np.any(out != inp, -1) & ~hull_mask(m, margin, kind)


# ----------------------------------------------------------------------------------------------


@needs_ffmpeg
def test_mp4_keeps_frame_count_size_fps_and_is_tagged(video, tiny_run, tmp_path):
  path, doc, _ = video
  out = str(tmp_path / "out.mp4")
  summary = convert.convert(path, tiny_run, out, convert.Options(to="a", batch=4, smooth=1),
                            alignments_path=doc, progress=False)
  assert summary["frames"] == N and summary["faces_swapped"] == N - len(NO_FACE)
  assert summary["compilations"] == 1  # padded last batch: one shape, one compile
  cap = cv2.VideoCapture(out)
  assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (W, H)
  assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
  assert len(read_frames(out)) == N
  record = video_io.provenance_of(out)
  assert record["synthetic"] is True and record["run"] == os.path.abspath(tiny_run)
  assert record["digital_source_type"] == provenance.IPTC_SYNTHETIC and record["to"] == "a"
  assert os.listdir(tmp_path) == ["out.mp4"]


@needs_ffmpeg
@pytest.mark.parametrize("color,blend_mode,sharpen,detail", [("rct", "alpha", 150.0, 100.0),
                                                            ("hist", "seamless", 0.0, 0.0)])
def test_png_frames_are_untouched_outside_the_mask(video, tiny_run, tmp_path, color, blend_mode,
                                                   sharpen, detail):
  path, doc, placed = video
  opts = convert.Options(to="a", batch=8, color=color, blend=blend_mode, erode=0, blur=10,
                         sharpen=sharpen, detail=detail)
  convert.convert(path, tiny_run, None, opts, alignments_path=doc, png_dir=str(tmp_path / "png"),
                  progress=False)
  names = sorted(os.listdir(tmp_path / "png"))
  assert names == [f"frame_{i:06d}.png" for i in range(N)]
  assert video_io.provenance_of(str(tmp_path / "png" / names[0]))["synthetic"] is True
  for i, (name, inp) in enumerate(zip(names, read_frames(path))):
    out = cv2.cvtColor(cv2.imread(str(tmp_path / "png" / name)), cv2.COLOR_BGR2RGB)
    if i in NO_FACE:
      np.testing.assert_array_equal(out, inp)
      continue
    (m,) = placed[i]
    # Blur 10 % of the ~84 px face: a 9 px kernel reaches <= 5 px past the hull; allow 6.
    assert not changed_outside(out, inp, m, 6).any(), i
    lm = g.transform_points(g.invert_affine(m), fake_mesh(SIZE))
    core = cv2.erode(g.fill_convex(g.components_hull(lm), H, W).astype(np.uint8),
                     np.ones((11, 11), np.uint8)) > 0
    assert np.abs(out.astype(int) - inp)[core].mean() > 3  # the face did change


@needs_ffmpeg
def test_passthrough_puts_back_the_resampled_input(video, tiny_run, tmp_path):
  """--passthrough: the face through the run's crop and back, blended like a swap."""
  path, doc, placed = video
  opts = convert.Options(to="a", batch=8, color="none", passthrough=True)
  convert.convert(path, tiny_run, None, opts, alignments_path=doc, png_dir=str(tmp_path / "png"),
                  progress=False)
  record = video_io.provenance_of(str(tmp_path / "png" / "frame_000000.png"))
  assert record["passthrough"] is True and record["model"] == "passthrough"
  (m,) = placed[0]
  inp = read_frames(path)[0]
  out = cv2.cvtColor(cv2.imread(str(tmp_path / "png" / "frame_000000.png")), cv2.COLOR_BGR2RGB)
  lm = g.transform_points(g.invert_affine(m), fake_mesh(SIZE))
  core = cv2.erode(g.fill_convex(g.components_hull(lm), H, W).astype(np.uint8),
                   np.ones((11, 11), np.uint8)) > 0
  diff = np.abs(out.astype(int) - inp)[core]
  assert 0 < diff.mean() < 3  # resampled through a 64 px crop: close to, not equal to, the input
  with pytest.raises(JaxswapError, match="--passthrough"):
    convert.convert(path, tiny_run, str(tmp_path / "x.mp4"),
                    dataclasses.replace(opts, mask="learned"), alignments_path=doc,
                    progress=False)


@needs_ffmpeg
def test_face_index_swaps_only_that_face(tiny_run, tmp_path):
  path, doc, placed = make_video(str(tmp_path), centres=(45.0, 115.0))
  convert.convert(path, tiny_run, None, convert.Options(to="b", face_index=(1,), batch=8),
                  alignments_path=doc, png_dir=str(tmp_path / "png"), progress=False)
  inp = read_frames(path)[0]
  out = cv2.cvtColor(cv2.imread(str(tmp_path / "png" / "frame_000000.png")), cv2.COLOR_BGR2RGB)
  left, right = placed[0]
  differs = np.any(out != inp, -1)
  assert not differs[:, :70].any() and differs[:, 90:].sum() > 500


@needs_ffmpeg
def test_audio_track_is_kept(tiny_run, tmp_path):
  path, doc, _ = make_video(str(tmp_path), audio=True)
  assert video_io.audio_codec(path) == "aac"
  out = str(tmp_path / "out.mp4")
  convert.convert(path, tiny_run, out, convert.Options(batch=8, frames=(2, 8)),
                  alignments_path=doc, progress=False)
  assert video_io.audio_codec(out) == "aac" and len(read_frames(out)) == 6
  err = subprocess.run([video_io.ffmpeg_exe(), "-i", out], capture_output=True, text=True).stderr
  duration = err.split("Duration: ")[1].split(",")[0]
  assert duration.startswith("00:00:00.6"), duration  # 6 frames at 10 fps, audio trimmed too


@needs_ffmpeg
def test_detects_faces_on_the_fly(tiny_run, tmp_path):
  skimage_data = pytest.importorskip("skimage.data")
  face = cv2.resize(skimage_data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
  frames = [np.ascontiguousarray(np.roll(face, 4 * i, axis=1)) for i in range(3)]
  path = str(tmp_path / "astronaut.mp4")
  write_input(path, frames)
  summary = convert.convert(path, tiny_run, None, convert.Options(batch=8), progress=False,
                            png_dir=str(tmp_path / "png"))
  assert summary["frames"] == 3 and summary["faces_swapped"] == 3
  out = cv2.cvtColor(cv2.imread(str(tmp_path / "png" / "frame_000001.png")), cv2.COLOR_BGR2RGB)
  inp = read_frames(path)[1]
  differs = np.any(out != inp, -1)
  assert differs[50:100, 100:150].mean() > 0.5  # her face (near x 110-140, y 30-95)
  assert not differs[200:].any() and not differs[:, 200:].any()  # far from it: untouched


# ----------------------------------------------------------------------------------------------
# Errors: exit status 2, a message naming the problem, nothing left behind
# ----------------------------------------------------------------------------------------------


def run_cli(capsys, *args):
  code = convert.main(list(args) + ["--quiet"])
  return code, capsys.readouterr().err


@needs_ffmpeg
def test_errors_exit_2_and_leave_nothing(video, tiny_run, tmp_path, capsys):
  path, doc, _ = video
  out = str(tmp_path / "o" / "out.mp4")
  empty_run = tmp_path / "norun"
  empty_run.mkdir()
  shutil.copy(os.path.join(tiny_run, "config.json"), empty_run / "config.json")
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(b"\0" * 5000)
  cases = [
      (["--input", path, "--workdir", str(empty_run)], "no checkpoint"),
      (["--input", str(junk), "--workdir", tiny_run], "junk.mp4"),
      (["--input", path, "--workdir", tiny_run, "--mask", "learned"], "learned mask"),
      (["--input", path, "--workdir", tiny_run, "--sharpen", "-5"],
       "--sharpen -5: must be in 0..500"),
      (["--input", path, "--workdir", tiny_run, "--detail", "150"], "--detail 150: must be in"),
      (["--input", path, "--workdir", tiny_run, "--morph", "101"],
       "--morph 101: must be in 0..100"),
  ]
  for args, message in cases:
    code, err = run_cli(capsys, *args, "--output", out, "--to", "a", "--alignments", doc)
    assert code == 2 and err.startswith("error: ") and message in err, (args, err)
  code, err = run_cli(capsys, "--input", path, "--workdir", tiny_run, "--to", "a",
                      "--output", "/proc/nope/out.mp4")
  assert code == 2 and "/proc/nope" in err
  assert not os.path.exists(tmp_path / "o") or os.listdir(tmp_path / "o") == []
  proc = subprocess.run([sys.executable, "tools/convert.py", "--input", str(tmp_path / "x.mp4"),
                         "--workdir", tiny_run, "--output", out, "--to", "a"], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 2 and "x.mp4" in proc.stderr


@needs_ffmpeg
def test_alignments_of_another_size_or_coverage_are_refused(video, tiny_run, tmp_path, capsys):
  path, doc_path, _ = video
  doc = alignments.load(doc_path)
  other = dict(doc, source=dict(doc["source"], width=W + 1))
  provenance.write_bytes(str(tmp_path / "wide.json"), alignments.dumps(other))
  code, err = run_cli(capsys, "--input", path, "--workdir", tiny_run, "--to", "a",
                      "--output", str(tmp_path / "o.mp4"), "--alignments",
                      str(tmp_path / "wide.json"))
  assert code == 2 and f"{W + 1}x{H}" in err
  # A run trained on faces cropped at coverage 0.7 (its config.json says so; its dataset is
  # nowhere to be found, as after a move), and alignments at 0.85.
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  config = json.loads((run / "config.json").read_text())
  assert config["face"] is None  # trained on synthetic faces: no crop geometry
  config["data"].update(dir=str(tmp_path / "moved_away"), name="jaxswap_faces")
  config["face"] = {"coverage": 0.7, "template": extract.TEMPLATE_ID, "size": SIZE}
  (run / "config.json").write_text(json.dumps(config))
  code, err = run_cli(capsys, "--input", path, "--workdir", str(run), "--to", "a",
                      "--output", str(tmp_path / "o.mp4"), "--alignments", doc_path)
  assert code == 2 and "coverage 0.85" in err and "coverage 0.7" in err
  assert not os.path.exists(tmp_path / "o.mp4")
